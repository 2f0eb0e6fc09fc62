"""The API: :class:`~ts_neuralode.api.forecaster.Forecaster` (fit, predict, cross_validation) and what it is built
from: the fit (:mod:`.fitting`, :mod:`.export`), the backtest and band calibration (:mod:`.backtest`,
:mod:`.calibration`), the automatic model choice (:mod:`.model_choice`), the benchmark (:mod:`.benchmark`).
Under the CLI, over training; see the README's architecture section."""
