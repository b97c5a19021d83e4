"""Tracking URIs, and the one secret they may hold: a password (``http://user:password@host``) is read only from
``MLFLOW_TRACKING_URI``, and every URI or message the package writes or prints shows ``user:***@host``."""
import os
import re
from pathlib import Path

from limit.runs.rundir import MLFLOW_ARTIFACTS, MLFLOW_STORE


def sqlite_store(results):
    """The local store of a results directory: RESULTS/mlflow.db, its artifacts in RESULTS/mlartifacts."""
    return f"sqlite:///{Path(results, MLFLOW_STORE)}"


def artifacts_beside(db):
    """Where a SQLite store at ``db`` (a path) keeps its artifacts: mlartifacts/ next to the database file."""
    return Path(db).parent / MLFLOW_ARTIFACTS


DEFAULT_TRACKING_URI = sqlite_store("results")  # a command given no config: the default config's results
TRACKING_URI_HELP = f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})"


def tracking_uri(uri=None):
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


_PASSWORD = re.compile(r"(//[^/@:\s]*):[^/@\s]*@")


def redact(text):
    """``text`` with the password of every URI in it replaced: ``http://user:***@host``."""
    return _PASSWORD.sub(r"\1:***@", str(text))


def check_no_password(uri, where):
    """A URI given on a command line or in a config must not hold a password (it would be stored and shown)."""
    if uri and redact(uri) != uri:
        raise ValueError(f"{where}: the tracking URI holds a password; set it only in the environment "
                         f"(export MLFLOW_TRACKING_URI='{redact(uri)}' with the real password)")


def recorded_uri(recorded):
    """The store a run directory recorded (password redacted): the environment's URI when it is that store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and redact(env) == recorded:
        return env
    if recorded and ":***@" in recorded:
        raise ValueError(f"the run was tracked at {recorded}: set MLFLOW_TRACKING_URI to it, with its password")
    return recorded
