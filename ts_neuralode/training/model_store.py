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
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ts_neuralode import __version__
from ts_neuralode.core.atomic import atomic_write_dir, interrupted_backup, load_json
from ts_neuralode.data.io import READ_KEYS
from ts_neuralode.data.transform import SeriesTransform
from ts_neuralode.errors import ConfigError, ForecastError
from ts_neuralode.training.module import ForecastingModule

FORMAT = "ts_neuralode.model/2"
#: older formats that still load: /1 spelled the evolution options flat (mapped onto the nested config)
READABLE_FORMATS = (FORMAT, "ts_neuralode.model/1")
WEIGHTS = "weights.pt"
CONFIG = "config.json"


@dataclass
class StoredModel:
    """A saved model as read from disk, before the module is built."""

    hparams: Mapping[str, Any]
    state: Mapping[str, torch.Tensor]
    transform: Any  # the transform's state_dict (or a SeriesTransform)
    read_options: dict
    name: str | None
    context: float | str | None


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
    raise ConfigError(
        f"hyperparameter value {obj!r} ({type(obj).__name__}) is not JSON-serialisable; "
        "model options must be plain numbers, strings, lists or dicts"
    )


def write_model_dir(
    path: str | os.PathLike,
    module: torch.nn.Module,
    hparams: Mapping[str, Any],
    transform,
    read_options: Mapping[str, Any],
    name: str,
    context: Any,
) -> Path:
    """Write ``weights.pt`` + ``config.json`` to directory ``path`` (created); returns it.

    The directory is replaced atomically (:func:`ts_neuralode.core.atomic.atomic_write_dir`): a process killed
    during the save leaves the previous model directory, or the new one complete, never a mix."""

    path = Path(path)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    config = {
        "format": FORMAT,
        "name": name,
        "module": {"class": "ts_neuralode.training.ForecastingModule", "hparams": jsonable(hparams)},
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

    p = Path(path)
    backup = interrupted_backup(p)
    if backup is not None:
        raise ForecastError(
            f"{p}: missing; a save was interrupted and left the previous model at {backup}; "
            f"rename it to {p.name} or save the model again"
        )
    if not p.exists():
        raise ForecastError(
            f"{p}: no such model directory or checkpoint; pass the path written by "
            "'ts-neuralode fit' (a model directory or a .ckpt file)"
        )
    return _read_model_dir(p, map_location) if p.is_dir() else _read_checkpoint(p, map_location)


def _read_model_dir(p: Path, map_location) -> StoredModel:
    cfg_path, w_path = p / CONFIG, p / WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise ForecastError(
            f"{p}: not a model directory (needs {CONFIG} and {WEIGHTS}); "
            "pass a directory written by Forecaster.save or 'ts-neuralode fit'"
        )
    config = _read_config(cfg_path)
    return StoredModel(
        config["module"]["hparams"],
        torch_load(w_path, map_location),
        config["transform"],
        config.get("read_options") or {},
        config.get("name"),
        config.get("context"),
    )


def _read_config(cfg_path: Path) -> dict:
    """``config.json`` of a model directory, its format and layout checked (one line for each problem)."""
    try:
        config = json.loads(cfg_path.read_text())
    except OSError as err:
        raise ForecastError(f"{cfg_path}: cannot read it ({err.strerror or type(err).__name__})") from err
    except ValueError as err:  # also UnicodeDecodeError: a binary file
        raise ForecastError(
            f"{cfg_path}: not valid JSON ({_first_line(err)}); the model directory is damaged: "
            "save the model again (Forecaster.save or 'ts-neuralode fit')"
        ) from err
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt not in READABLE_FORMATS:
        version = config.get("ts_neuralode_version") if isinstance(config, dict) else None
        by = f" written by ts_neuralode {version}" if version else ""
        ours = isinstance(fmt, str) and fmt.startswith("ts_neuralode.model/")
        number = fmt.rpartition("/")[2] if ours else ""
        newer = number.isdigit() and int(number) > int(FORMAT.rpartition("/")[2])
        fix = (
            "it is newer than this ts_neuralode: upgrade ts_neuralode to load it"
            if newer
            else "load it with the ts_neuralode version that wrote it and save it again with this version "
            "(Forecaster.save)"
            if ours
            else "pass a model directory written by Forecaster.save or 'ts-neuralode fit'"
        )
        raise ForecastError(
            f"{cfg_path}: model format {fmt!r}{by} is not one this version reads ({', '.join(READABLE_FORMATS)}); {fix}"
        )
    module = config.get("module")
    missing = [
        k
        for k, ok in (
            ("module.hparams", isinstance(module, dict) and isinstance(module.get("hparams"), dict)),
            ("transform", isinstance(config.get("transform"), dict)),
        )
        if not ok
    ]
    if missing:
        raise ForecastError(
            f"{cfg_path}: {' and '.join(missing)} missing or not an object in a {fmt} config; the "
            "model directory is damaged: save the model again"
        )
    return config


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
        ckpt.get("hyper_parameters") or {},
        ckpt["state_dict"],
        transform,
        {k: v for k, v in dm_hparams.items() if k in READ_KEYS},
        None,
        dm_hparams.get("context") if dm_hparams.get("task") == "forecast" else None,
    )


def build_module(stored: StoredModel, where: Path, map_location) -> torch.nn.Module:
    """The :class:`ForecastingModule` of ``stored``, weights loaded (ForecastError when they do not fit)."""

    try:
        module = ForecastingModule.from_hparams(stored.hparams)
    except TypeError as err:  # an option this version does not have (a model saved by another version)
        raise ForecastError(
            f"{where}: its model options do not fit this version of ts_neuralode ({err}); load it "
            "with the version that saved it, or train it again"
        ) from err
    try:
        module.load_state_dict(stored.state)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        first = " ".join(lines[:2])[:300]
        raise ForecastError(f"{where}: weights do not match the configured model ({first})") from err
    return module.to(map_location)


_FROM_US = "pass a file written by ts_neuralode (a model directory's weights.pt or a .ckpt from 'ts-neuralode fit')"


def torch_load(path: Path, map_location) -> Any:
    """``torch.load(path, weights_only=True)``; ForecastError with one line saying what is wrong with the file:
    unreadable, empty, not a torch file, truncated, or holding Python objects beyond tensors (never loaded:
    unpickling them could run arbitrary code)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ForecastError(f"{path}: cannot read it ({err.strerror or type(err).__name__})") from err
    if not head:
        raise ForecastError(f"{path}: is empty (0 bytes; a copy or download that did not finish?); {_FROM_US}")
    # torch.save writes a zip archive (b"PK\x03\x04"); files of torch < 1.6 begin with a pickle (b"\x80")
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise ForecastError(
            f"{path}: not a torch file (it starts with bytes {head!r}, a file saved by torch "
            f"starts with {b'PK'!r}); {_FROM_US}"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"an object of type {found.group(1)}" if found else "Python objects beyond tensors"
        raise ForecastError(
            f"{path}: holds {what}, which is not loaded (only tensors and plain containers are: "
            f"unpickling other objects could run arbitrary code); {_FROM_US}"
        ) from None
    except Exception as err:  # RuntimeError/OSError/EOFError of a damaged archive
        if head == b"PK\x03\x04" and not zipfile.is_zipfile(path) or isinstance(err, EOFError):
            raise ForecastError(
                f"{path}: truncated or damaged ({path.stat().st_size} bytes, the end of the "
                f"archive is missing; a copy or download that did not finish?); {_FROM_US}"
            ) from err
        first = _first_line(err)
        raise ForecastError(f"{path}: cannot be read as a torch file ({first}); {_FROM_US}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(err).__name__


def as_transform(tstate: Any):
    """A SeriesTransform from itself, its ``state_dict()``, or a JSON file / model directory holding it."""

    if isinstance(tstate, SeriesTransform):
        return tstate
    if isinstance(tstate, (str, os.PathLike)):
        _, data = load_json(
            tstate,
            CONFIG,
            lambda p, err: ForecastError(
                f"transform {p} (--transform / transform=): cannot read it ({err}); pass the model "
                "directory the fit wrote, or its config.json"
            ),
        )
        tstate = data.get("transform", data)
    try:
        return SeriesTransform.from_state_dict(tstate)
    except (KeyError, TypeError) as err:
        raise ForecastError(f"transform state is incomplete ({err}); pass SeriesTransform.state_dict()") from err
