"""What a trained model is saved as, and how it is read back: model directories and Lightning checkpoints.

A model directory holds ``weights.pt`` (the module's ``state_dict``, loaded with ``weights_only=True``) and
``config.json`` (format tag, module hyperparameters, the data transform's ``state_dict()``, the CSV reading
options, the forecast task's context) — no pickles. Format ``ts_neuralode.model/2`` nests the evolution
options (``hparams.evolution = {kind, method, ...}``); ``/1`` spelled them flat and still loads (the module
maps them, :meth:`ForecastingModule.from_hparams`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ts_neuralode.errors import ConfigError, ForecastError

FORMAT = "ts_neuralode.model/2"
#: older formats that still load: /1 spelled the evolution options flat (mapped onto the nested config)
READABLE_FORMATS = (FORMAT, "ts_neuralode.model/1")
WEIGHTS = "weights.pt"
CONFIG = "config.json"
READ_KEYS = ("format", "id_col", "time_col", "value_cols", "mask_cols", "time_unit", "duplicates")


@dataclass
class StoredModel:
    """A saved model as read from disk, before the module is built."""

    hparams: Mapping[str, Any]
    state: Mapping[str, torch.Tensor]
    transform: Any  # the transform's state_dict (or a SeriesTransform)
    read_options: dict
    name: str | None
    context: float | str | None


def clean_hparams(hparams: Mapping[str, Any]) -> dict:
    """Module hyperparameters without LightningCLI's private keys (``_class_path``, ``_instantiator``)."""
    return {k: v for k, v in dict(hparams).items() if not str(k).startswith("_")}


def jsonable(obj: Any) -> Any:
    """Deep copy of ``obj`` with only JSON types (tuples -> lists); raise ConfigError on anything else."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise ConfigError(f"hyperparameter value {obj!r} ({type(obj).__name__}) is not JSON-serialisable; "
                      "model options must be plain numbers, strings, lists or dicts")


def write_model_dir(path: str | os.PathLike, module: torch.nn.Module, hparams: Mapping[str, Any], transform,
                    read_options: Mapping[str, Any], name: str, context: Any) -> Path:
    """Write ``weights.pt`` + ``config.json`` to directory ``path`` (created); returns it.

    The directory is replaced atomically (:func:`ts_neuralode.atomic.atomic_write_dir`): a process killed
    during the save leaves the previous model directory, or the new one complete, never a mix."""
    from ts_neuralode import __version__
    from ts_neuralode.atomic import atomic_write_dir

    path = Path(path)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    config = {
        "format": FORMAT,
        "name": name,
        "module": {"class": "ts_neuralode.lightning.ForecastingModule", "hparams": jsonable(hparams)},
        "transform": jsonable(transform.state_dict()),
        "read_options": jsonable(read_options),
        "context": jsonable(context),
        "ts_neuralode_version": __version__,
    }
    text = json.dumps(config, indent=2) + "\n"

    def fill(tmp: Path) -> None:
        torch.save(state, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(text)

    try:
        return atomic_write_dir(path, fill)
    except NotADirectoryError as err:
        raise ConfigError(f"{path}: exists and is not a directory; pass a directory for the model") from err


def read_stored(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> StoredModel:
    """A model directory or a Lightning ``.ckpt``, loaded with ``weights_only=True``."""
    from ts_neuralode.atomic import interrupted_backup

    p = Path(path)
    backup = interrupted_backup(p)
    if backup is not None:
        raise ForecastError(f"{p}: missing; a save was interrupted and left the previous model at {backup}; "
                            f"rename it to {p.name} or save the model again")
    if not p.exists():
        raise ForecastError(f"{p}: no such model directory or checkpoint; pass the path written by "
                            "'ts-neuralode fit' (a model directory or a .ckpt file)")
    return _read_model_dir(p, map_location) if p.is_dir() else _read_checkpoint(p, map_location)


def _read_model_dir(p: Path, map_location) -> StoredModel:
    cfg_path, w_path = p / CONFIG, p / WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise ForecastError(f"{p}: not a model directory (needs {CONFIG} and {WEIGHTS}); "
                            "pass a directory written by Forecaster.save or 'ts-neuralode fit'")
    try:
        config = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise ForecastError(f"{cfg_path}: not valid JSON ({err})") from err
    if config.get("format") not in READABLE_FORMATS:
        raise ForecastError(f"{cfg_path}: unknown model format {config.get('format')!r} (expected {FORMAT}); "
                            "save it again with this version (Forecaster.save)")
    return StoredModel(config["module"]["hparams"], torch_load(w_path, map_location), config["transform"],
                       config.get("read_options", {}), config.get("name"), config.get("context"))


def _read_checkpoint(p: Path, map_location) -> StoredModel:
    ckpt = torch_load(p, map_location)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ForecastError(f"{p}: not a Lightning checkpoint (no state_dict); pass a .ckpt from a fit")
    dm_hparams = ckpt.get("datamodule_hyper_parameters") or {}
    transform = None
    for key, val in ckpt.items():
        if isinstance(val, Mapping) and "transform" in val and "DataModule" in str(key):
            transform = val["transform"]
    return StoredModel(
        ckpt.get("hyper_parameters") or {}, ckpt["state_dict"], transform,
        {k: v for k, v in dm_hparams.items() if k in READ_KEYS}, None,
        dm_hparams.get("context") if dm_hparams.get("task") == "forecast" else None,
    )


def build_module(stored: StoredModel, where: Path, map_location) -> torch.nn.Module:
    """The :class:`ForecastingModule` of ``stored``, weights loaded (ForecastError when they do not fit)."""
    from ts_neuralode.lightning import ForecastingModule

    module = ForecastingModule.from_hparams(stored.hparams)
    try:
        module.load_state_dict(stored.state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ForecastError(f"{where}: weights do not match the configured model ({first})") from err
    return module.to(map_location)


def torch_load(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt file or a pickle that weights_only refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ForecastError(f"{path}: cannot be loaded as weights only ({first}); pass a file written by "
                            "ts_neuralode (weights.pt or a .ckpt from 'ts-neuralode fit')") from err


def as_transform(tstate: Any):
    """A SeriesTransform from itself, its ``state_dict()``, or a JSON file / model directory holding it."""
    from ts_neuralode.data.transform import SeriesTransform

    if isinstance(tstate, SeriesTransform):
        return tstate
    if isinstance(tstate, (str, os.PathLike)):
        p = Path(tstate)
        if p.is_dir():
            p = p / CONFIG
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            raise ForecastError(f"{p}: cannot read a transform from it ({err})") from err
        tstate = data.get("transform", data)
    try:
        return SeriesTransform.from_state_dict(tstate)
    except (KeyError, TypeError) as err:
        raise ForecastError(f"transform state is incomplete ({err}); pass SeriesTransform.state_dict()") from err
