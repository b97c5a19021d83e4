"""MLflow tracking of training runs. The run directory is the source of truth: MLflow mirrors it.

Training never fails because of tracking: the first error (server down, database locked) is warned
about once and tracking stops for that run; ``sync_run`` (``python -m limit mlflow-sync``) later puts
whatever is missing into MLflow, idempotently, continuing the same MLflow run (or creating it, in its experiment,
with its name and tags from config.json, if the job never reached MLflow). ``RUN_DIR/mlflow.json`` records the run
id, store, experiment, name and tags, including the ``selected`` tag of the select stage.

A password in a tracking URI (``http://user:password@host``) is a secret: it is read only from
``MLFLOW_TRACKING_URI``, and every URI or message this module writes or prints shows ``user:***@host``.
"""
import json
import math
import os
import re
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
RUN_FILE = "mlflow.json"
ARTIFACTS = ("history.csv", "metrics.json", "test_outputs.npz", "config.json")
RUN_KEY_TAG = "limit.run_key"  # see _ensure_run
MARKER_METRIC = "val_acc"  # every epoch logs it, in one batch with the rest of the row

# Fail fast enough that a dead server costs a job seconds, not minutes (users may override).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


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


def artifact_root(uri):
    """Where a SQLite store keeps artifacts: ``mlartifacts/`` next to the database file."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.parent.resolve() / "mlartifacts").as_uri()


def get_or_create_experiment(client, name, uri):
    """Experiment id for ``name``; creates it (with a known artifact location) if missing."""
    from mlflow.exceptions import MlflowException
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = artifact_root(uri)
    try:
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _client(uri):
    from mlflow.tracking import MlflowClient
    if redact(uri) != uri:  # MLflow prints "View run ... at: URI" links, password included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return MlflowClient(tracking_uri=uri)


def _read_run_file(run_dir):
    path = Path(run_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write_run_file(run_dir, info):
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    from limit.train import replace_durably
    replace_durably(tmp, path)


def _metrics_of(row, step):
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    values = {k: float(v) for k, v in row.items() if k != "epoch" and v is not None and v != ""}
    # NaN (e.g. "nan" in history.csv) means "not measured": skipped, whether live or synced later
    return [Metric(k, v, now, step) for k, v in values.items() if not math.isnan(v)]


def _ensure_run(client, run_dir, uri, experiment, run_name, tags):
    """The MLflow run of a run directory: the one recorded there if it still exists, else a new one.

    Before creating a run, a random key is written into mlflow.json and given to the run as the tag
    ``limit.run_key``: if the server created the run but its answer was lost (it died, the request timed out),
    the next call finds that run instead of creating a duplicate.
    """
    from mlflow.exceptions import MlflowException
    info = _read_run_file(run_dir)
    same_store = info.get("tracking_uri") == redact(uri)
    if info.get("run_id") and same_store:
        try:
            client.get_run(info["run_id"])
            return info["run_id"]
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # unreachable: never create a second run because of that
            # a reset store: create the run afresh
    experiment_id = experiment.get("id") or get_or_create_experiment(client, experiment["name"], uri)
    tags = {**info.get("tags", {}), **tags}  # keeps a ``selected`` tag recorded while MLflow was unreachable
    key = info.get("run_key") if same_store and not info.get("run_id") else None
    found = key and client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        key = key or uuid.uuid4().hex
        _write_run_file(run_dir, {**info, "run_id": None, "tracking_uri": redact(uri), "run_key": key, "tags": tags})
        run_id = client.create_run(experiment_id, run_name=run_name, tags={**tags, RUN_KEY_TAG: key}).info.run_id
    _write_run_file(run_dir, {"run_id": run_id, "tracking_uri": redact(uri), "experiment_id": experiment_id,
                              "run_name": run_name, "tags": tags, "run_key": key})
    return run_id


def sync_run(run_dir, uri=None, experiment=None, run_name=None, tags=None):
    """Put a run directory into MLflow: params, every epoch of history, final metrics, artifacts.

    Only what is missing is logged, so a second call adds nothing. Returns the number of epochs added.
    """
    import csv
    from mlflow.entities import Param, RunTag
    run_dir = Path(run_dir)
    info = _read_run_file(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    # A job that never reached MLflow has no mlflow.json: its name and tags are in config.json.
    recorded = config.get("tracking") or {}
    uri = tracking_uri(uri or recorded_uri(info.get("tracking_uri")))
    # Later tags (``selected``, set by the select stage) live in mlflow.json.
    tags = {**(recorded.get("tags") or {}), **info.get("tags", {}), **(tags or {})}
    tags = {k: str(v) for k, v in tags.items()}
    if not experiment:  # an experiment id only means something in the store that gave it
        same_store = info.get("tracking_uri") == redact(uri)
        experiment = {"id": info.get("experiment_id") if same_store else None,
                      "name": tags.get("experiment") or "limit"}
    run_name = run_name or info.get("run_name") or recorded.get("run_id") or run_dir.name
    client = _client(uri)
    run_id = _ensure_run(client, run_dir, uri, experiment, run_name, tags)
    run = client.get_run(run_id)
    stale = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
    if stale:
        client.log_batch(run_id, tags=stale)
    params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items() if k not in run.data.params]
    logged = {m.step for m in client.get_metric_history(run_id, MARKER_METRIC)}
    history_path = run_dir / "history.csv"
    rows = []
    if history_path.exists():
        with open(history_path) as f:
            rows = list(csv.DictReader(f))
    else:  # an unfinished run: its epochs so far live in state.pt
        from limit.train import load_checkpoint
        if (run_dir / "state.pt").exists():
            rows = load_checkpoint(run_dir / "state.pt")["history"]
    missing = [r for r in rows if int(r["epoch"]) not in logged]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    metrics = [m for r in missing for m in _metrics_of(r, int(r["epoch"]))]
    for start in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[start:start + 900])
    final = run_dir / "metrics.json"
    if final.exists():
        done = json.loads(final.read_text())
        have = set(run.data.metrics)
        client.log_batch(run_id, metrics=[m for m in _metrics_of({f"final_{k}": v for k, v in done.items()}, 0)
                                          if m.key not in have])
        present = {a.path for a in client.list_artifacts(run_id)}
        for name in ARTIFACTS:
            if (run_dir / name).exists() and name not in present:
                client.log_artifact(run_id, str(run_dir / name))
        if run.info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED")
    return len(missing)


class Tracker:
    """Mirrors one training run into MLflow while it trains; never raises."""

    def __init__(self, run_dir, uri=None, experiment_id=None, experiment_name="limit", run_name=None, tags=None):
        self.run_dir = Path(run_dir)
        self.uri = tracking_uri(uri)
        self.experiment = {"id": experiment_id, "name": experiment_name}
        self.run_name = run_name or self.run_dir.name
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.client = self.run_id = None
        self.failed = False

    def _guard(self, action, *args, retry=False):
        if self.failed and not retry:
            return
        try:
            action(*args)
        except Exception as exc:  # any tracking failure: warn once, keep training
            if self.failed:
                return
            self.failed = True
            warnings.warn(redact(f"MLflow tracking to {self.uri} failed ({type(exc).__name__}: {exc}); training "
                                 f"goes on and {self.run_dir} stays complete. Later: python -m limit mlflow-sync "
                                 f"{self.run_dir}"), RuntimeWarning, stacklevel=2)

    def start(self, config, history):
        def begin():
            self.client = _client(self.uri)
            self.run_id = _ensure_run(self.client, self.run_dir, self.uri, self.experiment, self.run_name, self.tags)
            self.client.update_run(self.run_id, status="RUNNING")
        self._guard(begin)

    def log_epoch(self, row):
        self._guard(lambda: self.client.log_batch(self.run_id, metrics=_metrics_of(row, row["epoch"])))

    def finish(self, run_dir, metrics):
        # Params, artifacts and any epoch missed while the store was unreachable, in one idempotent pass.
        self._guard(sync_run, run_dir, self.uri, self.experiment, self.run_name, self.tags, retry=True)


def tag_selected(run_dirs, selected, uri=None):
    """Tag each run of a selection group ``selected=true|false`` in MLflow; warn (never fail) if unreachable.

    The tag is first written into each run's mlflow.json, so that ``sync_run`` sets it later if MLflow
    cannot be reached now.
    """
    try:
        for run_dir in run_dirs:
            info = _read_run_file(run_dir)
            info.setdefault("tags", {})["selected"] = str(run_dir in selected).lower()
            _write_run_file(run_dir, info)
    except OSError as exc:
        warnings.warn(f"could not record the selected runs in their run directories ({exc})", RuntimeWarning)
    try:
        for run_dir in run_dirs:
            info = _read_run_file(run_dir)
            if info.get("run_id"):
                client = _client(tracking_uri(uri or recorded_uri(info.get("tracking_uri"))))
                client.set_tag(info["run_id"], "selected", str(run_dir in selected).lower())
    except Exception as exc:
        warnings.warn(redact(f"could not tag the selected runs in MLflow ({type(exc).__name__}: {exc})"),
                      RuntimeWarning)
