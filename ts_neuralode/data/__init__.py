"""Irregular time series data: CSV/DataFrame reading, validation, scaling, batching, generators."""

from ts_neuralode.data.batch import Batch

__all__ = ["Batch"]
