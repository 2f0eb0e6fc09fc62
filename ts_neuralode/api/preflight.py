"""Checks that run before the work starts: output locations and the MLflow tracking store.

A fit that trains for an hour and then cannot write its checkpoint, or a forecast computed and then lost because
``--out`` is not writable, wastes the user's time; an MLflow server that is down makes MLflow retry for minutes
before it fails with a traceback. Every subcommand calls these first, so such mistakes end in one line within
seconds (:class:`~ts_neuralode.errors.ConfigError`, exit status 2).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ts_neuralode.errors import ConfigError, ForecastError
from ts_neuralode.integrations.mlflow.tracking import resolve_tracking_uri
from ts_neuralode.training.model_store import torch_load

#: seconds the tracking server has to answer the probe
PROBE_TIMEOUT_S = 3.0
#: MLflow's HTTP retry settings when the user set none: MLflow's own defaults (7 retries, backoff factor 2) wait
#: about four minutes on a server that went away; with these a failure is reported within seconds (a mid-fit one
#: as a warning, the fit goes on: ts_neuralode.integrations.mlflow.tracking.TrackingLogger)
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _probe_dir(d: Path, label: str, fix: str) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d, prefix=".ts_neuralode_probe."):
            pass
    except OSError as err:
        raise ConfigError(f"{label}: cannot write there ({_reason(err)}); {fix}") from err


def writable_dir(path: str | os.PathLike, option: str) -> Path:
    """Create directory ``path`` (and its parents) and write a probe file into it; ConfigError naming ``option``
    when that fails. Returns the path."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p}: exists and is not a directory; pass a directory")
    _probe_dir(p, f"{option} {p}", "pass a writable directory")
    return p


def writable_file(path: str | os.PathLike, option: str) -> Path:
    """Check that file ``path`` can be written: its directory is created and probed, an existing directory or
    read-only file at ``path`` is refused; nothing is written at ``path`` itself."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p}: is a directory; pass a file path (e.g. {p / 'out.csv'})")
    _probe_dir(p.parent, f"{option} {p}", "pass a path in a writable directory")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{option} {p}: exists and is read-only; pass another path or make it writable")
    return p


def limit_mlflow_retries() -> None:
    """Lower MLflow's HTTP retries where the user set none (:data:`MLFLOW_HTTP_DEFAULTS`)."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def unreachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why an http(s) tracking server does not answer ``GET <uri>/health`` within ``timeout`` seconds, or None
    when it answers (any HTTP status or TLS handshake counts: something is listening)."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered (a proxy or an older server without /health)
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, ssl.SSLError):
            return None  # whether its certificate is acceptable is MLflow's call (MLFLOW_TRACKING_INSECURE_TLS)
        return " ".join(str(reason).split()) or type(reason).__name__


def _sqlite_problem(db: Path) -> str | None:
    """Why sqlite file ``db`` cannot be opened for writing (created when missing, as MLflow would), or None."""
    import sqlite3

    try:
        conn = sqlite3.connect(db, timeout=PROBE_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master")  # not a database: 'file is not a database'
            conn.execute("BEGIN IMMEDIATE")  # read-only file or directory, or locked by another process
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as err:
        return " ".join(str(err).split()) or type(err).__name__
    return None


def tracking_store(
    uri: str, option: str = "--tracking_uri", off: str = "--tracking false", must_exist: bool = False
) -> str:
    """Probe tracking URI ``uri`` (already resolved) once: an http(s) server must answer within
    :data:`PROBE_TIMEOUT_S`; a sqlite file's directory must be writable. ConfigError names the URI and the fixes
    (``off``: this subcommand's way to turn tracking off; ``must_exist``: the store is only read, so a missing
    sqlite file is an error, not created). Also :func:`limit_mlflow_retries`. Returns ``uri``."""
    limit_mlflow_retries()
    fixes = f"pass another {option} (e.g. {option} sqlite:///mlflow.db), or {off}"
    if uri.startswith(("http://", "https://")):
        reason = unreachable(uri)
        if reason is not None:
            raise ConfigError(
                f"MLflow tracking server {uri} is not reachable ({reason}); start it "
                f"(mlflow server --host HOST --port PORT), {fixes}"
            )
    elif uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        db = Path(uri[len("sqlite:///") :])
        if db.is_dir():
            raise ConfigError(
                f"tracking URI {uri}: {db} is a directory; name a database file, e.g. "
                f"{option} sqlite:///{db / 'mlflow.db'}"
            )
        if must_exist and not db.exists():
            raise ConfigError(
                f"tracking URI {uri}: {db} does not exist, so it holds no runs; pass the "
                f"{option} the fit used (its checkpoint directory's mlflow_run.json names it), or {off}"
            )
        try:
            db.parent.mkdir(parents=True, exist_ok=True)  # as the fit's other outputs (demo_output/mlflow.db)
        except OSError as err:
            raise ConfigError(
                f"tracking URI {uri}: cannot create directory {db.parent} ({_reason(err)}); {fixes}"
            ) from err
        reason = _sqlite_problem(db)
        if reason is not None:
            raise ConfigError(f"tracking URI {uri}: cannot use {db} as an MLflow store ({reason}); {fixes}")
    return uri


def replaceable_dir(path: str | os.PathLike, option: str) -> Path:
    """A directory that will be written whole and swapped in (the model directory,
    :func:`ts_neuralode.core.atomic.atomic_write_dir`): its parent is created and probed; a file at ``path`` is
    refused."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p}: exists and is not a directory; pass a directory")
    _probe_dir(p.parent, f"{option} {p}", "pass a path in a writable directory")
    return p


def checkpoint_file(path: str | os.PathLike) -> None:
    """``--ckpt_path FILE``: a Lightning checkpoint that loads with ``weights_only=True`` (one line saying what is
    wrong with it otherwise; Lightning would fail later with a traceback quoting torch's unsafe-loading advice)."""
    from collections.abc import Mapping

    try:
        ckpt = torch_load(Path(path), "cpu")
    except ForecastError as err:
        raise ConfigError(f"--ckpt_path {err}") from err
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ConfigError(
            f"--ckpt_path {path}: not a Lightning checkpoint (no state_dict); pass a .ckpt written by "
            "'ts-neuralode fit' (a model directory's weights.pt is for 'ts-neuralode forecast')"
        )


def lightning_run(subcommand: str | None, cfg, ckpt_dir: Path) -> None:
    """``fit | validate | test | predict``: the tracking store (when a run is recorded) and, for ``fit``, the
    default root, checkpoint and model directories."""

    if cfg.get("tracking") and cfg.trainer.get("logger") in (None, True):
        tracking_store(resolve_tracking_uri(cfg.get("tracking_uri")))
        where = cfg.get("artifact_location")
        if where and ("://" not in where or where.startswith("file://")):  # a local artifact store
            writable_dir(where.removeprefix("file://"), "--artifact_location")
    if subcommand != "fit":
        return
    if cfg.trainer.get("default_root_dir"):
        writable_dir(cfg.trainer.default_root_dir, "--trainer.default_root_dir")
    writable_dir(ckpt_dir, "--checkpoint_dir")
    replaceable_dir(cfg.get("model_dir") or ckpt_dir / "model", "--model_dir")


__all__ = [
    "writable_dir",
    "writable_file",
    "replaceable_dir",
    "checkpoint_file",
    "tracking_store",
    "unreachable",
    "limit_mlflow_retries",
    "lightning_run",
    "PROBE_TIMEOUT_S",
]
