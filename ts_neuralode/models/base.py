"""Model base class, the Forecast container and the time-grid helpers every model shares.

Every model is a plain ``nn.Module`` subclass of :class:`ForecastModel` that owns one (or two)
:class:`~ts_neuralode.models.evolution.Evolution` modules built from a kind string. Switching ODE ↔ flow
changes exactly that option; every other parameter-bearing component is built the same way, so an ODE
and a flow variant have identical ``state_dict`` keys outside their ``evolution.`` sub-modules.

Grids. A batch's times are ``[T]`` (union grid) or ``[B, T]`` (per-series padded grid, ``time_mask``
False on padding). Query times are ``[Tq]`` or ``[B, Tq]``. :func:`merge_grid` merges both into one
strictly increasing grid per sample (shared ``[N]`` when both inputs are shared) and says where the
batch's points and the queries sit in it, so a model runs one pass over the merged grid and reads the
queries off it — interpolation (queries among the observations) and extrapolation (queries beyond the
last one) go through the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from ts_neuralode.data.batch import Batch
from ts_neuralode.errors import ConfigError, ForecastError
from ts_neuralode.models.evolution_config import EvolutionConfig
from ts_neuralode.models.step_budget import check_max_steps

if TYPE_CHECKING:
    from ts_neuralode.data.batch import CovariateBatch
    from ts_neuralode.models.evolution import StepCarry


@dataclass
class Forecast:
    """A probabilistic forecast at query times.

    Attributes:
        mean: ``[B, Tq, D]`` point forecast (mean over samples, or the Gaussian mean).
        samples: ``[S, B, Tq, D]`` sample paths (``S = 1`` for a deterministic point forecast).
        std: ``[B, Tq, D]`` predictive standard deviation of a Gaussian output, or None when the
            predictive distribution is only known through ``samples``.
        times: ``[Tq]`` or ``[B, Tq]`` the query times (normalised units).
    """

    mean: Tensor
    samples: Tensor
    std: Tensor | None = None
    times: Tensor | None = None

    def quantile(self, q: float) -> Tensor:
        """``[B, Tq, D]`` the q-quantile: exact for a Gaussian predictive (``std`` known), else empirical over
        the samples (the mean for a single deterministic path)."""
        if not 0.0 < q < 1.0:
            raise ForecastError(f"quantile level {q} is outside (0, 1); pass e.g. 0.05 or 0.95")
        if self.std is not None:
            z = math.sqrt(2.0) * torch.erfinv(torch.tensor(2.0 * q - 1.0, dtype=torch.float64)).item()
            return self.mean + z * self.std
        if self.samples.shape[0] > 1:
            return torch.quantile(self.samples, q, dim=0)
        return self.mean

    def detach(self) -> Forecast:
        d = lambda x: None if x is None else x.detach()  # noqa: E731
        return Forecast(self.mean.detach(), self.samples.detach(), d(self.std), d(self.times))


@dataclass(frozen=True)
class CallInputs:
    """What one ``loss`` / ``forecast`` call hands its evolutions besides the grid: made by
    :meth:`ForecastModel._grid` for that call and carried by its :class:`Grid`, never stored on the model, so two
    calls on one model at once (threads, a Spark UDF, DDP, a forecast inside a hook) each keep their own.

    control: the batch's known-future covariates ``u(t)`` (a :class:`~ts_neuralode.data.batch.CovariateBatch`)
        when the model reads them (``control_dim > 0``), else None.
    static: ``[B, static_dim]`` the batch's encoded static covariates when the model reads them, else None.
    max_steps: the step budget of every ODE solve of the call (None: each evolution's own ``config.max_steps``).
    """

    control: CovariateBatch | None = None
    static: Tensor | None = None
    max_steps: int | None = None


#: the inputs of a call that has none (no covariates, each evolution's own step budget)
NO_INPUTS = CallInputs()


class Grid(NamedTuple):
    """A merged, strictly increasing time grid (per valid part of each row), with the call's other inputs.

    times: ``[N]`` shared or ``[B, N]`` per sample (padding repeats the row's last time).
    valid: ``[B, N]`` bool, False on padding.
    values: ``[B, N, D]`` the batch's values placed on the grid (0 elsewhere).
    obs_mask: ``[B, N, D]`` the conditioning mask on the grid.
    target_mask: ``[B, N, D]`` the scoring mask on the grid.
    query_idx: ``[B, Tq]`` long, position of each query time in the grid (None: the grid is the batch's).
    inputs: the call's covariates and step budget (:class:`CallInputs`; set by :meth:`ForecastModel._grid`).
    """

    times: Tensor
    valid: Tensor
    values: Tensor
    obs_mask: Tensor
    target_mask: Tensor
    query_idx: Tensor | None
    inputs: CallInputs = NO_INPUTS

    @property
    def per_sample_times(self) -> Tensor:
        if self.times.dim() == 1:
            return self.times.unsqueeze(0).expand(self.valid.shape[0], -1)
        return self.times


def _batch_valid(batch: Batch) -> Tensor:
    """``[B, T]`` bool: positions a model steps through (all union times; real points per series)."""
    if batch.shared_grid:
        return torch.ones(batch.values.shape[:2], dtype=torch.bool, device=batch.values.device)
    return batch.time_mask.bool()


def batch_grid(batch: Batch) -> Grid:
    """The batch's own grid (the loss path: no extra query times)."""
    return Grid(batch.times, _batch_valid(batch), batch.values, batch.obs_mask, batch.target_mask, None)


def check_query_times(batch: Batch, query_times: Tensor) -> Tensor:
    """``query_times`` ([Tq] or [B, Tq], finite) on the batch's device and dtype; ForecastError otherwise."""
    B = batch.values.shape[0]
    q = query_times.to(device=batch.values.device, dtype=batch.values.dtype)
    if q.dim() not in (1, 2) or (q.dim() == 2 and q.shape[0] != B):
        raise ForecastError(
            f"query_times has shape {tuple(q.shape)}; pass [Tq] or [B, Tq] with B = {B} (the batch size)"
        )
    if not torch.isfinite(q).all():
        raise ForecastError("query_times contain NaN or inf; pass finite times in the model's normalised units")
    return q


def merge_grid(batch: Batch, query_times: Tensor) -> Grid:
    """Merge the batch's times with ``query_times`` ([Tq] or [B, Tq]) into one grid per sample."""
    B, T, D = batch.values.shape
    q = check_query_times(batch, query_times)
    if batch.shared_grid and q.dim() == 1:
        grid, inverse = torch.unique(torch.cat([batch.times, q]), sorted=True, return_inverse=True)
        n = grid.shape[0]
        pos = inverse[:T].unsqueeze(0).expand(B, -1)
        qidx = inverse[T:].unsqueeze(0).expand(B, -1)
        valid = torch.ones(B, n, dtype=torch.bool, device=grid.device)
    else:
        bt = batch.times_per_sample()
        bvalid = _batch_valid(batch)
        qt = q.unsqueeze(0).expand(B, -1) if q.dim() == 1 else q
        allt = torch.cat([bt, qt], dim=1)
        allv = torch.cat([bvalid, torch.ones_like(qt, dtype=torch.bool)], dim=1)
        key = torch.where(allv, allt, torch.full_like(allt, float("inf")))
        skey, order = torch.sort(key, dim=1, stable=True)
        new = torch.ones_like(skey, dtype=torch.bool)
        new[:, 1:] = skey[:, 1:] != skey[:, :-1]
        new &= torch.isfinite(skey)
        rank = torch.cumsum(new.long(), dim=1) - 1  # grid position of each sorted entry
        counts = new.sum(1)
        n = int(counts.max())
        fin = torch.isfinite(skey)
        first = fin & new
        # Scatter each distinct time to its rank; everything else goes to a dummy slot n.
        grid_ext = torch.zeros(B, n + 1, dtype=allt.dtype, device=allt.device)
        grid_ext.scatter_(1, torch.where(first, rank, torch.full_like(rank, n)), torch.where(first, skey, 0.0))
        grid = grid_ext[:, :n]
        ar = torch.arange(n, device=grid.device).unsqueeze(0)
        valid = ar < counts.unsqueeze(1)
        last = grid.gather(1, (counts - 1).clamp_min(0).unsqueeze(1))
        grid = torch.where(valid, grid, last)
        entry_rank = torch.empty_like(rank)
        entry_rank.scatter_(1, order, rank)  # position in the grid of every original entry
        pos = entry_rank[:, :T].clamp(0, n - 1)
        qidx = entry_rank[:, T:]
    vals = torch.zeros(B, n + 1, D, dtype=batch.values.dtype, device=batch.values.device)
    om = torch.zeros_like(vals)
    tm = torch.zeros_like(vals)
    # Positions of invalid batch entries (padding) go to the dummy slot n.
    bpos = torch.where(_batch_valid(batch), pos, torch.full_like(pos, n)).unsqueeze(-1).expand(-1, -1, D)
    vals.scatter_(1, bpos, batch.values)
    om.scatter_(1, bpos, batch.obs_mask)
    tm.scatter_(1, bpos, batch.target_mask)
    return Grid(grid, valid, vals[:, :n], om[:, :n], tm[:, :n], qidx)


def gather_queries(x: Tensor, query_idx: Tensor | None) -> Tensor:
    """Pick query positions out of ``x`` [..., B, N, C] (no-op when ``query_idx`` is None)."""
    if query_idx is None:
        return x
    idx = query_idx.unsqueeze(-1).expand(*query_idx.shape, x.shape[-1])
    idx = idx.expand(*x.shape[:-3], *idx.shape) if x.dim() > 3 else idx
    return x.gather(-2, idx)


def check_batch(batch: Batch, input_dim: int, where: str) -> None:
    """Raise a one-line DataError-style ForecastError when the batch does not fit the model."""
    if batch.values.dim() != 3 or batch.values.shape[-1] != input_dim:
        raise ForecastError(
            f"{where}: batch values have shape {tuple(batch.values.shape)} but the model was built for "
            f"input_dim={input_dim}; rebuild the model with input_dim={batch.values.shape[-1]}"
        )


def check_control(batch: Batch, control_dim: int, where: str) -> CovariateBatch | None:
    """The batch's known-future covariates when the model reads ``control_dim > 0`` channels of them (None
    otherwise); a one-line ForecastError when they are missing or of another width."""
    if not control_dim:
        return None
    cov = batch.covariates
    if cov is None:
        raise ForecastError(
            f"{where}: the model was trained with known-future covariates ({control_dim} channels) "
            "but the batch has none; pass them (--data.future_cols / --data.calendar, or "
            "Forecaster.predict(..., future=DataFrame))"
        )
    if cov.dim != control_dim:
        raise ForecastError(
            f"{where}: the batch has {cov.dim} covariate channels but the model was built for "
            f"{control_dim}; pass the covariates it was trained with"
        )
    return cov


def check_static(batch: Batch, static_dim: int, where: str) -> Tensor | None:
    """``[B, static_dim]`` encoded static covariates of the batch when the model reads them (None otherwise)."""
    if not static_dim:
        return None
    static = getattr(batch.covariates, "static", None)
    if static is None or static.shape[-1] != static_dim:
        got = 0 if static is None else static.shape[-1]
        raise ForecastError(
            f"{where}: the model was trained with static covariates ({static_dim} encoded features) "
            f"but the batch has {got}; pass the static columns it was trained with"
        )
    return static


def gaussian_nll(x: Tensor, mean: Tensor, std: Tensor, mask: Tensor) -> Tensor:
    """Masked Gaussian negative log-likelihood summed over the masked entries (same shapes)."""
    var = std * std
    nll = 0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)
    return (nll * mask).sum()


def step_mask(times: Tensor, valid: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """Times ``[2]`` or ``[B, 2]`` and ``t_mask`` ``[B, 2]`` for the step from grid index i-1 to i.

    A step is masked out (the state is carried unchanged) on padding and where the two times coincide.
    """
    t = times[..., i - 1 : i + 1]
    tp = times.unsqueeze(0).expand(valid.shape[0], -1) if times.dim() == 1 else times
    move = valid[:, i] & (tp[:, i] != tp[:, i - 1])
    return t, torch.stack([torch.ones_like(move), move], dim=1)


class ForecastModel(nn.Module):
    """Base class: ``loss(batch)`` for training, ``forecast(batch, query_times, max_steps=None)`` for prediction.

    Subclasses set ``self.input_dim`` and own their evolution module(s); ``last_nfe`` is the number of
    function evaluations (mean over samples) that the evolutions spent in the last ``loss``/``forecast``.
    What a call needs besides the weights (its covariates, its step budget) travels as arguments: ``_grid``
    returns it with the call's :class:`Grid` (``grid.inputs``) and ``_evolve`` hands it to the evolution; nothing
    of a call is written on the model.
    """

    #: whether ``loss`` also scores the conditioning points (the recurrent models' one-step-ahead predictions,
    #: the latent ODE's reconstruction) or the targets only; a window model with a base sets it False: the
    #: context is read in level units, the targets are corrections, and only the correction is to be learned
    score_context: bool = True

    input_dim: int
    #: channels of the known-future covariates ``u(t)`` the evolutions read (0: none; set by subclasses)
    control_dim: int = 0
    #: width of the encoded static covariates that condition the initial state (0: none)
    static_dim: int = 0
    #: the first ``target_dim`` channels are targets, the rest past-only covariates (None: all are targets)
    target_dim: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.last_nfe = 0.0

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forecast(
        self, batch: Batch, query_times: Tensor, num_samples: int = 1, *, max_steps: int | None = None
    ) -> Forecast:  # pragma: no cover - abstract
        """The forecast at ``query_times`` ([Tq] or [B, Tq]); ``max_steps``: the step budget of every ODE solve of
        this call (:mod:`ts_neuralode.models.step_budget`; None: each evolution's own ``config.max_steps``)."""
        raise NotImplementedError

    def predict(self, batch: Batch, num_samples: int = 1, *, max_steps: int | None = None) -> Forecast:
        """Forecast at the batch's own times (``[B, T, D]``; the Lightning metrics score these)."""
        return self.forecast(batch, batch.times, num_samples=num_samples, max_steps=max_steps)

    def loss_and_predict(self, batch: Batch, num_samples: int = 1) -> tuple[Tensor, dict[str, Tensor], Forecast]:
        """``loss(batch)`` and ``predict(batch, num_samples)`` (the validation step needs both); a model whose loss
        and forecast run the same pass overrides this to run it once (same values)."""
        loss, logs = self.loss(batch)
        return loss, logs, self.predict(batch, num_samples=num_samples)

    def set_epoch(self, epoch: int) -> None:
        """Hook for schedules that depend on the training epoch (KL annealing); default: nothing."""

    def zero_mean_output(self) -> None:
        """Set the read-out of the predictive mean to 0 (weights and bias of its last linear map), so that the model
        forecasts 0 until trained: a :class:`~ts_neuralode.models.window.WindowModel` correction then starts at its
        base. Default: nothing (a model without such a read-out)."""

    # -- helpers ---------------------------------------------------------------------------------
    def _evolve(
        self,
        evolution: nn.Module,
        h0: Tensor,
        t: Tensor,
        t_mask: Tensor | None,
        inputs: CallInputs,
        carry: StepCarry | None = None,
    ) -> Tensor:
        """``evolution(h0, t, t_mask)`` with the call's control and step budget (``inputs``: ``grid.inputs``) and a
        recurrent pass's ``carry`` (:class:`~ts_neuralode.models.evolution.StepCarry`); counts its evaluations."""
        out = evolution(h0, t, t_mask, control=inputs.control, max_steps=inputs.max_steps, carry=carry)
        self.last_nfe += float(getattr(evolution, "last_nfe", 0) or 0)
        return out

    def _covariate_inputs(self, static_dim: int, target_dim: int | None, control_dim: int) -> None:
        """Record the covariate sizes (:mod:`ts_neuralode.data.covariates`) a subclass was built for."""
        self.static_dim, self.control_dim = int(static_dim), int(control_dim)
        self.target_dim = None if target_dim is None or target_dim == self.input_dim else int(target_dim)
        if self.target_dim is not None and not 0 < self.target_dim < self.input_dim:
            raise ConfigError(f"target_dim={target_dim} must lie in [1, input_dim={self.input_dim}]")

    def _targets_only(self, mask: Tensor) -> Tensor:
        """``mask`` [..., D] with the past-only covariate channels (after ``target_dim``) zeroed: never scored."""
        if self.target_dim is None:
            return mask
        keep = torch.arange(mask.shape[-1], device=mask.device) < self.target_dim
        return mask * keep.to(mask.dtype)

    def _grid(self, batch: Batch, query_times: Tensor | None, max_steps: int | None = None) -> Grid:
        """The call's grid (the batch's own for ``query_times`` None, else merged with them) carrying the call's
        :class:`CallInputs`: the batch's covariates (checked against the model) and the step budget ``max_steps``."""
        where = type(self).__name__
        check_batch(batch, self.input_dim, where)
        inputs = CallInputs(
            check_control(batch, self.control_dim, where),
            check_static(batch, self.static_dim, where),
            check_max_steps(max_steps),
        )
        own = query_times is None or query_times is batch.times
        return (batch_grid(batch) if own else merge_grid(batch, query_times))._replace(inputs=inputs)


class NeuralModel(ForecastModel):
    """Base of the neural models: the options every one of them takes, declared here once (a model's own
    ``__init__`` declares its own options and passes ``**options`` on; :func:`ts_neuralode.models.model_options` lists
    both). It checks them, records the sizes and resolves ``evolution_config``; the subclass builds the networks.

    Args:
        input_dim: channels D.
        evolution: an :class:`~ts_neuralode.models.evolution_config.EvolutionConfig` (or just its kind, "ode" or a
            flow).
        latent_dim: state size H.
        hidden_dim: width of the model's networks (and of the evolution's nets unless its config sets
            ``hidden_dim``).
        control_dim: channels of the known-future covariates driving the evolution (0: none).
        static_dim: width of the encoded static covariates (0: none); they condition the initial state.
        target_dim: the first channels are targets, the rest past-only covariates (read, never scored; None: all
            channels are targets).
    """

    #: the evolution's vector field unless its config names one
    vector_field = "mlp"

    def __init__(
        self,
        input_dim: int = 1,
        evolution: EvolutionConfig | str | None = None,
        latent_dim: int = 16,
        hidden_dim: int = 64,
        control_dim: int = 0,
        static_dim: int = 0,
        target_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_positive(input_dim=input_dim, latent_dim=latent_dim, hidden_dim=hidden_dim)
        self.input_dim, self.latent_dim, self.hidden_dim = input_dim, latent_dim, hidden_dim
        self._covariate_inputs(static_dim, target_dim, control_dim)
        self.evolution_config = EvolutionConfig.coerce(evolution).resolve(
            hidden_dim=hidden_dim, vector_field=self.vector_field
        )


def check_positive(**kwargs: float) -> None:
    for name, value in kwargs.items():
        if value is None or value <= 0:
            raise ConfigError(f"{name}={value} must be a positive number; pass e.g. {name}=1")
