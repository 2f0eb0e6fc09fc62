"""One chunk of series through a forecaster's model: the batch from the history table, the model's forecast at the
query times, its bands and the Nixtla-style frame in the data's units (:meth:`Predictor.predict
<ts_neuralode.api.predictor.Predictor.predict>` forecasts chunk by chunk; the fit-time figures use it too)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ts_neuralode.api.forecast_frame import nixtla_frame, quantile_bands
from ts_neuralode.data.batching import subset_table
from ts_neuralode.data.covariates import CovariateArrays
from ts_neuralode.errors import ForecastError
from ts_neuralode.training.callbacks import solver_failure


@torch.no_grad()
def forecast_chunk(
    fc,
    table,
    chunk: list[int],
    raw_q: list[np.ndarray],
    num_samples: int,
    levels: list[float],
    qs: list[float],
    exact_q: list[np.ndarray] | None = None,
    covariates: CovariateArrays | None = None,
    max_steps: int | None = None,
) -> pd.DataFrame:
    """Forecaster ``fc``'s forecast of series ``chunk`` of ``table`` at raw times ``raw_q``; the output ``ds`` is
    ``exact_q`` (see :func:`ts_neuralode.data.query_times.query_times`) when given. ``covariates``: the known-future
    covariates of ``table``'s series (a model that reads them needs them). ``max_steps``: the step budget of every
    ODE solve (:func:`ts_neuralode.models.step_budget.forecast_budget`; None: each evolution's own)."""

    sub = subset_table(table, chunk)
    prepared = fc.transform.make_batch(sub)
    lengths = [len(q) for q in raw_q]
    tq = max(lengths)
    padded = np.stack([np.concatenate([q, np.full(tq - len(q), q[-1])]) for q in raw_q])
    device = next(iter(fc.module.parameters()), torch.zeros(())).device
    qt = prepared.query_times(padded, raw=True).to(device)
    if covariates is not None:
        prepared.batch.covariates = covariates.subset(chunk).batch(
            fc.covariate_spec,
            np.arange(len(chunk)),
            prepared.origins,
            float(fc.transform.time_scale),
            fc.transform.codec,
        )
    batch = prepared.batch.to(device)
    try:
        out = fc.model.forecast(batch, qt, num_samples=num_samples, max_steps=max_steps)
    except (RuntimeError, ValueError) as err:
        if not solver_failure(err):
            raise
        first = " ".join(str(err).strip().splitlines()[0].split())
        raise ForecastError(
            f"the ODE solver could not forecast series {list(prepared.series_ids)[:5]} ({first}); "
            "query times may be too far beyond the history for this model, or its solver "
            "tolerances too tight"
        ) from err
    mean = out.mean.float()
    if not torch.isfinite(mean).all():
        raise ForecastError(
            "the model produced non-finite forecasts (NaN/inf) for series "
            f"{[prepared.series_ids[i] for i in range(len(chunk))][:5]}; query times may be "
            "too far beyond the training range for this model"
        )
    bands = quantile_bands(out, levels, qs)
    if fc.covariate_spec is not None:  # past-only covariate channels are inputs, never forecast
        prepared.transform, mean, bands = fc.covariate_spec.outputs(prepared.transform, mean, bands)
    frame = prepared.to_frame(qt, mean, bands, query=padded, raw=True)
    keep = np.concatenate([np.arange(n) < lengths[b] for b, n in enumerate([tq] * len(chunk))])
    frame = frame[keep]
    if exact_q is not None:  # the times exactly as asked for (rows are series-major, like exact_q)
        codec = fc.transform.codec
        ds = codec.from_ns(np.concatenate(exact_q)) if codec.is_datetime else np.concatenate(exact_q)
        frame = frame.assign(**{fc.transform.time_col: ds})
    return nixtla_frame(frame, fc.output_transform, fc.name, list(bands))


__all__ = ["forecast_chunk"]
