"""Irregular time series data: CSV/DataFrame reading, validation, scaling, batching, generators.

Public API:

* :func:`read_series` -> :class:`SeriesTable` (validated, sorted per-series arrays);
* :class:`SeriesTransform` (values/time normalisation, JSON state_dict, ``make_batch`` for forecasting:
  see :mod:`ts_neuralode.data.transform` for the time convention) and :class:`PreparedBatch`;
* :class:`IrregularTimeSeriesDataModule` (LightningDataModule);
* :func:`collate` / :class:`SeriesArrays` / :class:`TaskSpec` (batch building);
* :class:`CovariateSpec` / :class:`CovariateBatch` (known-future, static and past-only covariates:
  :mod:`ts_neuralode.data.covariates`);
* :mod:`ts_neuralode.data.generators` (``generate(name, ...)``, ``cli_main(argv)``).
"""

from ts_neuralode.data.batch import Batch
from ts_neuralode.data.batching import Collator, SeriesArrays, TaskSpec, collate
from ts_neuralode.data.covariates import CovariateBatch, CovariateSpec
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import generate
from ts_neuralode.data.io import SeriesTable, read_series
from ts_neuralode.data.parquet_stream import ParquetFolderDataModule
from ts_neuralode.data.timecodec import TimeCodec
from ts_neuralode.data.transform import PreparedBatch, SeriesTransform

__all__ = [
    "Batch",
    "Collator",
    "CovariateBatch",
    "CovariateSpec",
    "IrregularTimeSeriesDataModule",
    "ParquetFolderDataModule",
    "PreparedBatch",
    "SeriesArrays",
    "SeriesTable",
    "SeriesTransform",
    "TaskSpec",
    "TimeCodec",
    "collate",
    "generate",
    "read_series",
]
