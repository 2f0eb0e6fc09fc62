"""An ensemble of fitted forecasters whose predictive distribution is the equal-weight **mixture** of theirs.

Each member forecasts the same query times (its own context, scaler and time scale); its predictive distribution
at every (series, time, channel) is drawn as ``num_samples`` stratified samples — its quantiles at
``(j + 0.5) / num_samples`` (exact for a Gaussian output, the empirical ones of its sample paths otherwise). The
pooled samples of all members are the mixture's samples: the bands are their quantiles, the point forecast the
mean of the members' means. Two members that disagree therefore widen the bands (a band of the mixture holds
both), which averaging the members' bands would not.

    ens = EnsembleForecaster([fc_a, fc_b])
    out = ens.predict(history, horizon="2D", freq="1h", level=[50, 90])
    cv = ens.cross_validation(history, horizon="2D", n_windows=4)     # ts_neuralode.api.backtest, same rows
    ens.save("ens_dir"); EnsembleForecaster.load("ens_dir")           # Forecaster.load("ens_dir") as well

The directory holds ``ensemble.json`` and one model directory per member (``member_00`` …).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ts_neuralode.api.backtest import cross_validation
from ts_neuralode.api.forecast_frame import band_col, parse_levels, parse_quantiles, quantile_columns
from ts_neuralode.api.predictor import Predictor
from ts_neuralode.core.atomic import write_json
from ts_neuralode.core.sampling import SAMPLING
from ts_neuralode.errors import ConfigError, ForecastError

ENSEMBLE_FILE = "ensemble.json"
FORMAT = "ts_neuralode.ensemble/1"


class EnsembleForecaster:
    """Equal-weight mixture of ``members`` (fitted :class:`~ts_neuralode.api.forecaster.Forecaster` objects trained on
    the same data: same series, channels and time axis). ``name``: the forecast column (default ``ensemble``)."""

    def __init__(self, members: Sequence, name: str = "ensemble") -> None:
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        self.members = members
        self.name = name
        self.fit_info: dict | None = None
        self.calibration = None
        first = members[0]
        # the history is read (and covariates matched) as the first member reads it: members share the data
        self.transform = first.transform
        self.read_options = first.read_options
        self.covariate_spec = first.covariate_spec
        self.context = None

    # -- the history, as a Forecaster reads it (ts_neuralode.api.backtest calls these) ------------------------------
    def read_history(self, history: Any, **read_options: Any):
        return self.members[0].read_history(history, **read_options)

    def read_covariates(self, history: Any, future: Any, table):
        return self.members[0].read_covariates(history, future, table)

    def target_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.members[0].target_rows(frame)

    def history_frame(self, history: Any, **read_options: Any) -> pd.DataFrame:
        return self.members[0].history_frame(history, **read_options)

    # -- forecasts ----------------------------------------------------------------------------------------------
    def predict(
        self,
        history: Any,
        horizon: Any = None,
        *,
        level: Iterable[float] | float | None = SAMPLING.level,
        quantiles: Iterable[float] | None = None,
        num_samples: int = SAMPLING.num_samples,
        calibrated: bool = False,
        **options: Any,
    ) -> pd.DataFrame:
        """As :meth:`Forecaster.predict <ts_neuralode.api.forecaster.Forecaster.predict>` (same arguments and columns,
        named ``<name>``); the bands and quantiles are those of the members' mixture (module docstring)."""
        if calibrated:
            raise ForecastError(
                "calibrated=True: an ensemble has no band calibration; its bands come from the "
                "mixture of its members' samples (drop calibrated)"
            )
        levels, qs = parse_levels(level), parse_quantiles(quantiles)
        n = int(num_samples)
        if n < 1:
            raise ForecastError(f"num_samples={num_samples} must be >= 1")
        grid = list((np.arange(n) + 0.5) / n)
        with warnings.catch_warnings():  # one column per quantile of the grid: pandas finds the frame fragmented
            warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
            frames = [
                m.predict(history, horizon, level=[], quantiles=grid, num_samples=n, **options) for m in self.members
            ]
        return mixture_frame(frames, [m.name for m in self.members], self.name, levels, qs)

    def cross_validation(self, history: Any, horizon: Any, **options: Any) -> pd.DataFrame:
        """Rolling-origin backtest of the ensemble (:func:`ts_neuralode.api.backtest.cross_validation`; refits are not
        supported: refit an ensemble by running the model choice again)."""

        if options.get("refit"):
            raise ConfigError("refit is not supported for an ensemble; backtest it as fitted (refit=False)")
        return cross_validation(self, history, horizon, **options)

    def plot(self, history: Any, forecast: pd.DataFrame, out_dir: str | os.PathLike, **options: Any) -> list[Path]:
        """One PNG per series, as :meth:`Forecaster.plot` (with the ensemble's columns)."""
        first = copy.copy(self.members[0])
        first.name = self.name
        return first.plot(history, forecast, out_dir, **options)

    # -- storage ------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """``path/ensemble.json`` + ``path/member_00`` … (model directories); returns ``path``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for i, m in enumerate(self.members):
            sub = f"member_{i:02d}"
            m.save(out / sub)
            names.append(sub)
        info = {"format": FORMAT, "name": self.name, "members": names, "member_names": [m.name for m in self.members]}

        write_json(out / ENSEMBLE_FILE, info)
        return out

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", member_cls: type[Predictor] = Predictor
    ) -> EnsembleForecaster:
        """The ensemble saved at ``path``, its members loaded as ``member_cls``."""
        root = Path(path)
        try:
            info = json.loads((root / ENSEMBLE_FILE).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"{root}: cannot read {ENSEMBLE_FILE} ({type(err).__name__}); pass a directory written "
                "by EnsembleForecaster.save or the automatic model choice"
            ) from err
        if info.get("format") != FORMAT or not info.get("members"):
            raise ConfigError(f"{root / ENSEMBLE_FILE}: not an ensemble of format {FORMAT}")
        members = [member_cls.load(root / sub, map_location=map_location) for sub in info["members"]]
        return cls(members, name=info.get("name", "ensemble"))


def is_ensemble_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def mixture_frame(
    frames: Sequence[pd.DataFrame], names: Sequence[str], name: str, levels: Sequence[float], quantiles: Sequence[float]
) -> pd.DataFrame:
    """Members' forecast frames (each with the quantile columns of a stratified grid) -> the mixture's frame:
    ``keys…, name, name-lo-L, name-hi-L, name-q-P`` on the rows every member forecast."""
    first = frames[0]
    keys = [c for c in first.columns if not _is_model_col(c, names[0])]
    merged = None
    samples = []
    means = []
    for i, (frame, member) in enumerate(zip(frames, names, strict=True)):
        cols, _ = quantile_columns(frame, member)
        part = frame[keys + [member] + cols].rename(
            columns={member: f"__mean{i}", **{c: f"__s{i}_{j}" for j, c in enumerate(cols)}}
        )
        merged = part if merged is None else merged.merge(part, on=keys, how="inner", validate="one_to_one")
        samples.append([f"__s{i}_{j}" for j in range(len(cols))])
        means.append(f"__mean{i}")
    if merged is None or merged.empty:
        raise ForecastError("the ensemble's members forecast no common rows; they must be fitted on the same data")
    pooled = np.concatenate([merged[s].to_numpy(dtype=np.float64) for s in samples], axis=1)  # [rows, K * S]
    out = merged[keys].copy()
    out[name] = merged[means].to_numpy(dtype=np.float64).mean(axis=1)
    for lv in levels:
        a = (1.0 - lv / 100.0) / 2.0
        out[band_col(name, "lo", lv)] = np.quantile(pooled, a, axis=1)
        out[band_col(name, "hi", lv)] = np.quantile(pooled, 1.0 - a, axis=1)
    for q in quantiles:
        out[band_col(name, "q", 100.0 * q)] = np.quantile(pooled, q, axis=1)
    return out.reset_index(drop=True)


def _is_model_col(col: str, name: str) -> bool:
    return col == name or col.startswith(f"{name}-")


__all__ = ["ENSEMBLE_FILE", "EnsembleForecaster", "is_ensemble_dir", "mixture_frame"]
