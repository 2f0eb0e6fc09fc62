"""ForecastingModule: the thin LightningModule around any model in ``ts_neuralode.models.MODELS``.

All science lives in the model (``loss``/``forecast``); this module builds it from plain JSON-able
hyperparameters (``save_hyperparameters()``: a checkpoint reloads from weights + config, nothing
pickled), sets the training epoch on the model (KL annealing), and logs:

- every stage: ``{stage}_loss`` and the model's own terms ``{stage}_<name>`` (e.g. ``train_mse``,
  ``train_kl``);
- training: ``nfe`` (mean function evaluations per sample in the forward pass; 0 for flows) and
  ``batch_time`` (seconds per training batch: forward, backward and optimiser step);
- validation/test, from the forecast at the batch's times (conditioned on ``obs_mask`` only, with
  ``eval_samples`` samples): ``{stage}_mse``/``{stage}_mae`` over all target points,
  ``{stage}_interp_mse``/``_mae`` over held-out targets at or before the series' cutoff (interpolation),
  ``{stage}_extrap_mse``/``_mae`` over targets after the cutoff (extrapolation and forecast tasks),
  ``{stage}_crps`` over all targets, and ``{stage}_nfe``. The interp/extrap pairs are logged only when such
  points exist.
- the same metrics (but CRPS, which equals the MAE for a point forecast) for each naive baseline
  (:mod:`ts_neuralode.models.baselines`; ``baselines``, default locf, mean, linear, plus seasonal when a
  ``season_period`` is set), scored by the same code on the same batches, with the baseline's name appended:
  ``test_mse_locf``, ``test_extrap_mse_mean``, ``val_interp_mae_linear`` …;
- skill against LOCF (when ``locf`` is among the baselines): ``{stage}_skill`` = ``{stage}_mse /
  {stage}_mse_locf``, ``{stage}_interp_skill``, ``{stage}_extrap_skill`` likewise; below 1 means the model
  beats carrying the last value forward. Each other baseline gets its own (``test_skill_mean`` …).

``model`` may also name a baseline (``ts-neuralode test --model.model locf --data.path ...`` scores it
without a checkpoint); its loss is its MSE on the targets, and it cannot be fitted (nothing to train).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ts_neuralode.data.batch import Batch
from ts_neuralode.data.covariates import CovariateSpec
from ts_neuralode.errors import ConfigError, check_choice
from ts_neuralode.models import MODELS, Forecast, build_model, model_options
from ts_neuralode.models.baselines import BASELINES, REFERENCE, baseline_names, build_baseline
from ts_neuralode.models.evolution_config import EvolutionConfig, upgrade_flat_options
from ts_neuralode.models.window import WindowModel, check_window_options
from ts_neuralode.training.metrics import MaskedCRPS, MaskedMAE, MaskedMSE, skill

_STAGES = ("val", "test")
_METRICS = {
    "mse": MaskedMSE,
    "mae": MaskedMAE,
    "interp_mse": MaskedMSE,
    "interp_mae": MaskedMAE,
    "extrap_mse": MaskedMSE,
    "extrap_mae": MaskedMAE,
    "crps": MaskedCRPS,
}
_BASELINE_METRICS = tuple(name for name in _METRICS if name != "crps")  # a point forecast's CRPS is its MAE
#: skill metric name -> the MSE it divides by the LOCF baseline's
SKILLS = {"skill": "mse", "interp_skill": "interp_mse", "extrap_skill": "extrap_mse"}
_MODEL_KEY = "model"  # the model's own metrics (no name suffix)
LR_SCHEDULES = ("step", "cosine")
#: how many times faster than the network a window model's base time constants are stepped (see configure_optimizers)
BASE_LR_FACTOR = 10.0


def clean_hparams(hparams: Mapping[str, Any]) -> dict:
    """Module hyperparameters without LightningCLI's private keys (``_class_path``, ``_instantiator``)."""
    return {k: v for k, v in dict(hparams).items() if not str(k).startswith("_")}


class ForecastingModule(pl.LightningModule):
    """Lightning wrapper of one forecasting model.

    Args:
        model: "latent_ode", "ode_rnn" or "gru_ode".
        input_dim: number of channels D (the DataModule's ``num_channels``).
        evolution: the :class:`~ts_neuralode.models.evolution_config.EvolutionConfig` (``--model.evolution.*``):
            its ``kind`` ("ode", "resnet_flow", "gru_flow" or "coupling_flow") is the only switch between an
            ODE and a flow variant; solver options (``method``, ``rtol``, ``atol``, ``step_size``, ``adjoint``,
            ``adjoint_mode``, ``max_steps``, ``vector_field``) and flow options (``flow_layers``,
            ``time_embedding``, …) live there too. A kind name or a dict of its options is accepted as well.
        latent_dim, hidden_dim: state size; width of the networks.
        model_kwargs: further model-specific options (e.g. ``{"obs_std": 0.01, "encoder_method": "euler"}``
            for the latent ODE, ``{"loss": "mse"}`` for ODE-RNN); plain JSON-able values.
        lr, weight_decay: Adam.  lr_schedule: "step" (``lr_decay_every``/``lr_decay_gamma``: ×gamma every N
            epochs; N = 0: constant) or "cosine" (cosine annealing from ``lr`` to 0 over the trainer's
            ``max_epochs``: smooth to the end of a fixed budget, see results/latent_ode_ablation.md).
        kl_warmup_epochs, iwae_samples: latent ODE KL annealing and IWAE samples (other models ignore them).
        eval_samples: samples per forecast for validation/test/predict (probabilistic metrics).
        baselines: naive baselines scored next to the model in validation/test (names from
            :data:`ts_neuralode.models.baselines.BASELINES`); None: locf, mean, linear (+ seasonal with a
            season); ``[]``: none.
        season_period: period of the seasonal baseline in model time units (the CLI links it from the data
            module's ``season_period``, its ``season`` duration converted); None: no seasonal baseline.
        covariates: the known-future covariate spec (:class:`~ts_neuralode.data.covariates.CovariateSpec` state; the
            CLI links it from the data module's ``covariates``): the model's evolution reads its ``control_dim``
            channels ``u(t)`` from every batch. Saved with the hyperparameters, so a model directory remembers it.
        normalize: ``none`` or ``window``: the model works in each window's units (its context's mean and standard
            deviation per series and channel, RevIN-style); forecasts and bands are mapped back
            (:mod:`ts_neuralode.models.window`).
        base: ``none``, ``mean``, ``last``, ``trend``, ``damped``, ``seasonal``, ``seasonal_trend``, ``harmonic`` or
            ``auto`` (harmonic with a season, else last): past the cutoff the model forecasts a correction on top of
            this forecast from the context (the seasonal ones need a season); only the correction is trained.
    Gradient clipping is a Trainer option (``gradient_clip_val``).
    """

    def __init__(
        self,
        model: str = "latent_ode",
        input_dim: int = 1,
        evolution: EvolutionConfig = EvolutionConfig(),
        latent_dim: int = 16,
        hidden_dim: int = 64,
        model_kwargs: dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_decay_every: int = 0,
        lr_decay_gamma: float = 0.5,
        lr_schedule: str = "step",
        kl_warmup_epochs: int = 10,
        iwae_samples: int = 3,
        eval_samples: int = 8,
        baselines: list[str] | None = None,
        season_period: float | None = None,
        covariates: dict | None = None,
        normalize: str = "none",
        base: str = "none",
    ) -> None:
        super().__init__()
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict of options, got {type(model_kwargs).__name__}")
        if eval_samples < 1:
            raise ConfigError(f"eval_samples={eval_samples} must be >= 1")
        check_choice(lr_schedule, "lr_schedule", LR_SCHEDULES)
        evolution = EvolutionConfig.coerce(evolution)
        # hyperparameters stay plain JSON (a checkpoint reloads with weights_only=True; MLflow logs them flat)
        self.save_hyperparameters(ignore=["evolution"])
        self.hparams["evolution"] = evolution.to_dict()
        self._hparams_initial["evolution"] = evolution.to_dict()
        kwargs = dict(input_dim=input_dim, evolution=evolution, latent_dim=latent_dim, hidden_dim=hidden_dim)
        accepted = model_options(model) if model in _known_models() else set()
        for name, value in (("kl_warmup_epochs", kl_warmup_epochs), ("iwae_samples", iwae_samples)):
            if name in accepted:
                kwargs[name] = value
        kwargs.update(model_kwargs or {})
        spec = CovariateSpec.from_state_dict(covariates)
        if spec is not None and model not in BASELINES:
            kwargs.update(
                control_dim=spec.control_dim, static_dim=spec.static_dim, target_dim=input_dim - len(spec.past_cols)
            )
        check_window_options(normalize, base, season_period)
        if model in BASELINES:
            self.model = build_baseline(model, season_period)
        else:
            self.model = build_model(model, **kwargs)
            if normalize != "none" or base != "none":  # plain models keep their state_dict keys
                self.model = WindowModel(self.model, normalize, base, season_period)
        names = baseline_names(baselines, season_period)
        # No parameters and no buffers: checkpoints and model directories keep the same state_dict keys.
        self.baseline_models = nn.ModuleDict({name: build_baseline(name, season_period) for name in names})
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        _MODEL_KEY: nn.ModuleDict({name: cls() for name, cls in _METRICS.items()}),
                        **{b: nn.ModuleDict({name: _METRICS[name]() for name in _BASELINE_METRICS}) for b in names},
                    }
                )
                for stage in _STAGES
            }
        )
        self._batch_start = 0.0

    @classmethod
    def from_hparams(cls, hparams: dict) -> ForecastingModule:
        """The module of saved hyperparameters, in this version's spelling or the older flat one (``evolution:
        ode``, ``method: rk4`` … next to the model options; see :func:`upgrade_flat_options`)."""
        return cls(**upgrade_flat_options(clean_hparams(hparams)))

    # -- training ------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self.model.set_epoch(self.current_epoch)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, logs = self.model.loss(batch)
        bs = batch.batch_size
        # Epoch-level logs are means over every rank's batches under DDP (sync_dist: one reduce per key per epoch).
        self.log(
            "train_loss", loss.detach(), batch_size=bs, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True
        )
        for name, value in logs.items():
            self.log(f"train_{name}", value, batch_size=bs, on_step=False, on_epoch=True, sync_dist=True)
        self.log("nfe", float(self.model.last_nfe), batch_size=bs, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        self.log(
            "batch_time",
            time.perf_counter() - self._batch_start,
            batch_size=batch.batch_size,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )

    # -- evaluation ----------------------------------------------------------------------------------
    def _eval_step(self, batch: Batch, stage: str) -> torch.Tensor:
        bs = batch.batch_size
        # one call: a model whose loss and forecast share a pass (the recurrent models) runs it once, not twice
        loss, _, forecast = self.model.loss_and_predict(batch, num_samples=self.hparams.eval_samples)
        self.log(f"{stage}_loss", loss, batch_size=bs, prog_bar=True, sync_dist=True)
        self.log(f"{stage}_nfe", float(self.model.last_nfe), batch_size=bs, sync_dist=True)
        target = batch.target_mask
        after = (batch.times_per_sample() > batch.cutoff.unsqueeze(1)).unsqueeze(-1).to(target.dtype)
        masks = {
            "mse": target,
            "mae": target,
            "crps": target,
            "interp_mse": batch.held_out_mask * (1 - after),
            "interp_mae": batch.held_out_mask * (1 - after),
            "extrap_mse": target * after,
            "extrap_mae": target * after,
        }
        # The model and every baseline: the same masks, the same metric classes, the same update.
        for key, metrics in self.metrics[stage].items():
            fc = forecast if key == _MODEL_KEY else self.baseline_models[key].predict(batch)
            for name, metric in metrics.items():
                metric.update(fc if name == "crps" else fc.mean, batch.values, masks[name])
        return loss

    def _eval_epoch_end(self, stage: str) -> None:
        values: dict[str, float] = {}
        for key, metrics in self.metrics[stage].items():
            suffix = "" if key == _MODEL_KEY else f"_{key}"
            for name, metric in metrics.items():
                value = metric.compute()  # synced across ranks before the count check: same on every rank
                values[name + suffix] = float(value)
                if torch.isfinite(value):  # the same on every rank: sync_dist's mean keeps it (and DDP stays quiet)
                    self.log(
                        f"{stage}_{name}{suffix}", value, prog_bar=name == "mse" and key == _MODEL_KEY, sync_dist=True
                    )
                metric.reset()
        if REFERENCE not in self.metrics[stage]:
            return
        for key in self.metrics[stage]:
            if key == REFERENCE:
                continue
            suffix = "" if key == _MODEL_KEY else f"_{key}"
            for name, mse in SKILLS.items():
                value = skill(values[mse + suffix], values[f"{mse}_{REFERENCE}"])
                if math.isfinite(value):
                    self.log(f"{stage}_{name}{suffix}", value, sync_dist=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Forecast:
        """The forecast at the batch's own times (``eval_samples`` samples)."""
        return self.model.predict(batch, num_samples=self.hparams.eval_samples).detach()

    def forecast(
        self, batch: Batch, query_times: torch.Tensor, num_samples: int | None = None, *, max_steps: int | None = None
    ) -> Forecast:
        """Forecast at arbitrary query times ``[Tq]`` or ``[B, Tq]`` (normalised units); ``max_steps``: the step
        budget of every ODE solve (None: each evolution's own)."""
        return self.model.forecast(
            batch, query_times, num_samples=num_samples or self.hparams.eval_samples, max_steps=max_steps
        )

    def configure_optimizers(self):
        if not any(p.requires_grad for p in self.parameters()):
            raise ConfigError(
                f"model {self.hparams.model!r} is a baseline with nothing to train; score it with "
                f"'ts-neuralode test --model.model {self.hparams.model} ...' (no checkpoint needed)"
            )
        lr = self.hparams.lr
        # a window model's base time constants (one number per channel each) step BASE_LR_FACTOR times faster: at the
        # network's rate El Nino's reversion time moved from 4 to 3.0 seasons in 8 epochs, at 10x to 2.1
        # (results/peers_irregular.md)
        base = list(self.model.base_parameters()) if isinstance(self.model, WindowModel) else []
        ids = {id(p) for p in base}
        groups = [{"params": [p for p in self.parameters() if id(p) not in ids]}]
        if base:
            groups.append({"params": base, "lr": lr * BASE_LR_FACTOR, "weight_decay": 0.0})
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "cosine":
            epochs = int(self.trainer.max_epochs or 0) if self._trainer is not None else 0
            if epochs < 1:
                raise ConfigError(
                    "lr_schedule='cosine' anneals over trainer.max_epochs; set --trainer.max_epochs "
                    "(or use lr_schedule='step')"
                )
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        elif self.hparams.lr_decay_every and self.hparams.lr_decay_every > 0:
            sched = torch.optim.lr_scheduler.StepLR(
                opt, step_size=self.hparams.lr_decay_every, gamma=self.hparams.lr_decay_gamma
            )
        else:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _known_models() -> set[str]:
    return set(MODELS)
