"""Which columns are covariates and how they are read: :class:`CovariateSpec` (known-future, past-only and static
columns, their interpolation and calendar features; fitted scaling; the forecast channels of a model's output).
The arrays it reads and the batches it feeds live in :mod:`ts_neuralode.data.covariates`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
from torch import Tensor

from ts_neuralode.errors import ConfigError, DataError, check_choice


class CovariateSamples(Protocol):
    """What the spec fits its scaling on (:class:`ts_neuralode.data.covariates.CovariateArrays` has it): per column
    and series the sampled values and their raw times (None: not recorded), and each series' static values."""

    raw_samples: list
    raw_sample_times: list | None
    static: np.ndarray


INTERPOLATIONS = ("constant", "linear")


#: calendar feature -> (period in ns, phase offset in ns: the epoch 1970-01-01 was a Thursday)
CALENDAR = {
    "time_of_day": (86_400 * 10**9, 0),
    "day_of_week": (7 * 86_400 * 10**9, 3 * 86_400 * 10**9),
    "day_of_year": (int(365.2425 * 86_400 * 10**9), 0),
}


@dataclass
class CovariateSpec:
    """Which covariates a model takes and how they are scaled (JSON: :meth:`state_dict`; a saved model keeps it in
    its hyperparameters, so a forecast knows which columns it needs).

    Attributes:
        future_cols: known-future covariate columns; interp: ``"constant"`` or ``"linear"`` per column.
        center / scale: per column standardisation (training series).
        calendar: calendar feature names (:data:`CALENDAR`); freq: their frequencies in cycles per *model* time
            unit (set by :meth:`fit` from the time codec and the transform's time scale).
        past_cols: past-only covariates: the last channels of the series table (inputs, never forecast or scored).
        static_cols: one value per series; static_kind: "numeric" or "categorical" per column (categorical when the
            column is not numeric); static_center / static_scale: numeric standardisation (0/1 for categorical);
            static_vocab: the training categories of each categorical column (one-hot; an unseen one is all 0).
    """

    future_cols: list[str]
    interp: list[str]
    center: list[float]
    scale: list[float]
    calendar: list[str]
    freq: list[float]
    past_cols: list[str] = field(default_factory=list)
    static_cols: list[str] = field(default_factory=list)
    static_kind: list[str] = field(default_factory=list)
    static_center: list[float] = field(default_factory=list)
    static_scale: list[float] = field(default_factory=list)
    static_vocab: list[list[str]] = field(default_factory=list)

    @property
    def control_dim(self) -> int:
        """Channels of ``u(t)``: one per column, two (sin, cos) per calendar feature."""
        return len(self.future_cols) + 2 * len(self.calendar)

    @property
    def static_dim(self) -> int:
        """Width of the encoded static covariates: one per numeric column, one-hot width per categorical one."""
        return sum(1 if k == "numeric" else len(v) for k, v in zip(self.static_kind, self.static_vocab, strict=True))

    @property
    def names(self) -> list[str]:
        return list(self.future_cols) + [f"{c}_{f}" for c in self.calendar for f in ("sin", "cos")]

    def state_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    def output_transform(self, transform):
        """The part of a fitted :class:`~ts_neuralode.data.transform.SeriesTransform` that maps forecasts back: its
        channels but the past-only covariates (the last ``len(past_cols)``), which are never forecast."""
        n = len(self.past_cols)
        if not n:
            return transform
        return replace(
            transform,
            channel_names=transform.channel_names[:-n],
            center=transform.center[:-n],
            scale=transform.scale[:-n],
            log=transform.log[:-n],
        )

    def forecast_channels(self, values: Tensor | np.ndarray):
        """``values`` [..., D] without the past-only covariate channels."""
        return values[..., : values.shape[-1] - len(self.past_cols)]

    def outputs(self, transform, values, bands: Mapping[str, Any] | None = None):
        """``(transform, values, bands)`` of the forecast channels only: the one place the past-only covariate
        channels (inputs, never forecast or scored) are cut from model outputs (:meth:`output_transform`,
        :meth:`forecast_channels`); unchanged without past-only covariates."""
        if not self.past_cols:
            return transform, values, bands
        cut = self.forecast_channels
        return self.output_transform(transform), cut(values), {k: cut(v) for k, v in (bands or {}).items()}

    def target_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of a long frame (``unique_id, ds, channel, y``) of the forecast channels: without the past-only
        covariates (what a forecast is plotted against and scored on)."""
        return frame[~frame["channel"].isin(self.past_cols)] if self.past_cols else frame

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any] | None) -> CovariateSpec | None:
        if not d:
            return None
        return cls(**{f.name: list(d.get(f.name) or []) for f in fields(cls)})

    @classmethod
    def configure(
        cls,
        future_cols: Sequence[str] | str | None,
        interp: str | Sequence[str] | Mapping[str, str] | None,
        calendar: Sequence[str] | str | None,
        past_cols: Sequence[str] | str | None = None,
        static_cols: Sequence[str] | str | None = None,
    ) -> CovariateSpec | None:
        """Validate the options (before any data is read); None when there are no covariates."""
        listed = lambda v: [v] if isinstance(v, str) else list(v or [])  # noqa: E731
        cols, cal, past, static = listed(future_cols), listed(calendar), listed(past_cols), listed(static_cols)
        every = cols + past + static
        dup = next((c for c in every if every.count(c) > 1), None)
        if dup is not None:
            raise ConfigError(
                f"column {dup!r} is named twice among future_cols, past_cols and static_cols; list it once"
            )
        for c in cal:
            check_choice(c, "calendar", tuple(CALENDAR))
        extra = dict(past_cols=past, static_cols=static)
        if not cols:
            if interp not in (None, "constant", "linear", [], {}):
                raise ConfigError(f"future_interp={interp!r} is set but future_cols is empty; pass --data.future_cols")
            if not cal and not past and not static:
                return None
            return cls([], [], [], [], cal, [0.0] * len(cal), **extra)
        if interp is None or isinstance(interp, str):
            kinds = [interp or "constant"] * len(cols)
        elif isinstance(interp, Mapping):
            unknown = sorted(set(interp) - set(cols))
            if unknown:
                raise ConfigError(f"future_interp names columns {unknown} that are not in future_cols {cols}")
            kinds = [interp.get(c, "constant") for c in cols]
        else:
            kinds = list(interp)
            if len(kinds) != len(cols):
                raise ConfigError(
                    f"future_interp has {len(kinds)} entries but future_cols has {len(cols)}; give one "
                    "per column, one for all ('linear'), or a {column: kind} dict"
                )
        for k in kinds:
            check_choice(k, "future_interp", INTERPOLATIONS)
        return cls(cols, kinds, [0.0] * len(cols), [1.0] * len(cols), cal, [0.0] * len(cal), **extra)

    def fit(
        self, arrays: CovariateSamples, train: np.ndarray, codec, time_scale: float, until: np.ndarray | None = None
    ) -> CovariateSpec:
        """Scales from the samples of the training series ``train`` — with ``until`` (``[S]`` raw times, e.g. the
        forecast task's ``train_end`` / validation cutoff) only those at or before it, as the series scaler is
        fitted; calendar frequencies in model units."""
        center, scale = [], []

        def samples(c: int, s: int) -> np.ndarray:
            v = arrays.raw_samples[c][s]
            if until is None or arrays.raw_sample_times is None or not np.isfinite(until[s]):
                return v
            before = v[arrays.raw_sample_times[c][s] <= until[s]]
            return before if before.size else v[:1]  # a series whose schedule starts later: its first value

        for c in range(len(self.future_cols)):
            v = np.concatenate([samples(c, s) for s in train]) if len(train) else np.zeros(0)
            mu = float(v.mean()) if v.size else 0.0
            sd = float(v.std()) if v.size else 1.0
            center.append(mu)
            scale.append(sd if np.isfinite(sd) and sd > 0 else 1.0)
        if self.calendar and not codec.is_datetime:
            raise ConfigError(
                f"calendar={self.calendar} needs a datetime time column, but the times are numbers; "
                "drop --data.calendar or pass datetimes"
            )
        freq = [float(time_scale) * codec.unit_ns / CALENDAR[c][0] for c in self.calendar] if self.calendar else []
        return replace(self, center=center, scale=scale, freq=freq, **self._fit_static(arrays, train))

    def _fit_static(self, arrays: CovariateSamples, train: np.ndarray) -> dict[str, list]:
        """The static columns' part of :meth:`fit`: each column's kind, and its standardisation (numeric) or its
        categories (categorical), from the values of the training series ``train``."""
        kind: list[str] = []
        center: list[float] = []
        scale: list[float] = []
        vocab: list[list[str]] = []
        for k in range(len(self.static_cols)):
            col = arrays.static[np.asarray(train, dtype=np.int64), k]
            num = pd.to_numeric(pd.Series(col), errors="coerce")
            if num.notna().all():
                kind.append("numeric")
                sd = float(num.std(ddof=0)) if len(num) else 1.0
                center.append(float(num.mean()) if len(num) else 0.0)
                scale.append(sd if np.isfinite(sd) and sd > 0 else 1.0)
                vocab.append([])
            else:
                kind.append("categorical")
                center.append(0.0)
                scale.append(1.0)
                vocab.append(sorted({str(v) for v in col}))
        return dict(static_kind=kind, static_center=center, static_scale=scale, static_vocab=vocab)

    def encode_static(self, raw: np.ndarray) -> np.ndarray:
        """``[b, n_static]`` raw per-series values -> ``[b, static_dim]`` float (standardised numbers, one-hot
        categories; a category not seen in training is all zeros)."""
        parts = [np.zeros((len(raw), 0))]
        for k, kind in enumerate(self.static_kind):
            if kind == "numeric":
                v = pd.to_numeric(pd.Series(raw[:, k]), errors="coerce").to_numpy(dtype=np.float64)
                if np.isnan(v).any():
                    bad = raw[int(np.flatnonzero(np.isnan(v))[0]), k]
                    raise DataError(
                        f"static covariate '{self.static_cols[k]}' was numeric in training but holds "
                        f"{bad!r}; pass a number"
                    )
                parts.append(((v - self.static_center[k]) / self.static_scale[k])[:, None])
            else:
                pos = {c: j for j, c in enumerate(self.static_vocab[k])}
                hot = np.zeros((len(raw), len(pos)))
                for i, v in enumerate(raw[:, k]):
                    if str(v) in pos:
                        hot[i, pos[str(v)]] = 1.0
                parts.append(hot)
        return np.concatenate(parts, axis=1)


def column_uses(table, spec: CovariateSpec | None) -> str:
    """One line: what each column of ``table`` (a :class:`~ts_neuralode.data.series_table.SeriesTable`) is used as
    (targets, masks, covariates by ``spec``, ignored)."""
    cols = table.extra.get("columns", {})
    parts = [f"{table.n_series} series", f"targets {', '.join(cols.get('targets', table.channel_names))}"]
    masks = cols.get("masks") or {}
    parts.append("masks " + (", ".join(f"{m} ({v})" for v, m in masks.items()) if masks else "none"))
    cov = []
    if spec is not None:
        cov += [f"{c} (known future)" for c in spec.future_cols] + [f"{c} (past)" for c in spec.past_cols]
        cov += [f"{c} (static)" for c in spec.static_cols] + [f"{c} (calendar)" for c in spec.calendar]
    parts.append("covariates " + (", ".join(cov) if cov else "none"))
    ignored = [c for c in cols.get("ignored", []) if spec is None or c not in spec.static_cols + spec.future_cols]
    parts.append("ignored " + (", ".join(ignored) if ignored else "none"))
    return f"data {table.source}: " + "; ".join(parts)
