"""ts_neuralode: forecasting irregularly sampled time series with Neural ODEs and Neural Flows."""

__version__ = "0.1.0"
