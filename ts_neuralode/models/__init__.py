"""Forecasting models (plain nn.Modules) on one evolution interface (ODE or neural flow).

``MODELS`` maps a model name to its class; every class takes ``input_dim`` and ``evolution`` (an
:class:`~ts_neuralode.models.evolution_config.EvolutionConfig`, or just its kind: "ode", "resnet_flow",
"gru_flow", "coupling_flow").
"""

from ts_neuralode.core.signatures import keyword_options
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.base import Forecast, ForecastModel
from ts_neuralode.models.evolution import ODEEvolution  # noqa: F401  (registers the evolutions EvolutionConfig.build makes)
from ts_neuralode.models.evolution_config import upgrade_flat_options
from ts_neuralode.models.gru_ode import GRUODE
from ts_neuralode.models.latent_ode import LatentODE
from ts_neuralode.models.ode_rnn import ODERNN

MODELS = {"latent_ode": LatentODE, "ode_rnn": ODERNN, "gru_ode": GRUODE}

__all__ = ["Forecast", "ForecastModel", "LatentODE", "ODERNN", "GRUODE", "MODELS"]


def build_model(name: str, **kwargs) -> ForecastModel:
    """``MODELS[name](**kwargs)`` with one-line errors for an unknown name or option. The evolution options may
    also come flat, as in older versions (``evolution="ode", method="rk4"``: see ``upgrade_flat_options``)."""
    kwargs = upgrade_flat_options(kwargs)
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    accepted = model_options(name)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"model {name!r} has no option(s) {unknown}; its options are {sorted(accepted)}")
    return MODELS[name](**kwargs)


def model_options(name: str) -> set[str]:
    """The constructor options of ``MODELS[name]``: its ``__init__``'s own and, where that passes ``**options`` on,
    its bases' (the options every neural model shares are declared once, by
    :class:`~ts_neuralode.models.base.NeuralModel`)."""
    return set(keyword_options(MODELS[name]))


__all__ += ["build_model", "model_options"]
