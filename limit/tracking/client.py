"""MLflow tracking of training runs. The run directory is the source of truth: MLflow mirrors it.

Training never waits for tracking and never fails because of it. A ``Tracker`` puts each epoch's row into a
bounded queue; one background thread per run creates its MLflow run and sends the queued rows, at most one round
of requests per ``live_interval`` seconds (whole rows, up to 1000 metrics a request). A slow or dead server only
delays that thread: rows wait in the queue, a failure is warned about once and retried next round, and ``finish``
ends the thread and syncs the finished run directory (``sync_run``, also ``python -m limit mlflow-sync``), which
puts whatever is missing into MLflow, idempotently. ``RUN_DIR/mlflow.json`` records the run id, store,
experiment, name and tags, including the ``selected`` tag of the select stage and the summary it gives the parent
run.

An MLflow run holds exactly one config: its params are the run directory's ``config.json``. A run directory
trained again under another config (any change to config.json) gets a new MLflow run, with only the new
directory's epochs, metrics and artifacts; the old MLflow run is deleted. A run's start and end times are its
training's: the first attempt's start (``job.json``) and the time ``metrics.json`` was written.

The workflow's training jobs track as they train (``Tracker``) when the config's ``mlflow.live`` is true; either way
the select stage (``tag_selection``) syncs every run of its group, so a run whose job did not track reaches MLflow
then.

Every grid run is nested (``mlflow.parentRunId``) under one parent run per selection group (experiment block,
data setting, method variant), found by its ``limit.group`` tag, created by the group's first run to reach
MLflow (``get_or_create_parent`` settles races), which gives it the group's grid tags; the select stage gives it
the selected hyperparameters and the selected runs' test accuracy and ends it. A parent also ends
when none of its runs is running any more (runs trained by hand are never selected).

A password in a tracking URI (``http://user:password@host``) is a secret: it is read only from
``MLFLOW_TRACKING_URI``, and every URI or message this module writes or prints shows ``user:***@host``.
"""
import json
import math
import os
import queue
import random
import threading
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse

from limit.registry import HPARAMS
from limit.runs import rundir
from limit.tracking.uri import TRACKING_URI_HELP, artifacts_beside, recorded_uri, redact, tracking_uri

ARTIFACTS = (rundir.HISTORY, rundir.METRICS, rundir.TEST_OUTPUTS, rundir.CONFIG)
CHECKPOINT_ARTIFACTS = (rundir.BEST, rundir.TRAIN_SCORES)  # unless mlflow.log_checkpoints is false
RUN_KEY_TAG = "limit.run_key"  # see _ensure_run
GROUP_TAG = "limit.group"  # the selection group of a parent run
PARENT_TAG = "mlflow.parentRunId"
PARENT_TAGS = ("experiment", "dataset", "noise", "rate", "n", "variant", "method", "arch", "clean_validation")
# job.json key -> tag: where and with what the latest attempt ran
JOB_TAGS = {"git_commit": "mlflow.source.git.commit", "torch_version": "torch_version",
            "limit_version": "limit_version", "host": "host", "device": "device", "device_name": "device_name",
            "slurm_job_id": "slurm_job_id", "driver": "nvidia_driver", "cuda": "cuda_version",
            "device_change": "device_change", "lock_sha256": "lock_sha256", "environment_change": "environment_change"}
# MLflow 3's UI shows an experiment of this kind as model training (runs table), not as a GenAI app (traces).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# A saved view of the runs table (``#/experiments/<id>/runs?viewStateShareKey=limit``): the selection, the
# hyperparameters and the test accuracy as columns, run names in full.
SAVED_VIEW = "limit"
FINAL = "final_"  # the prefix of a run's metrics.json values among its MLflow metrics (beside each epoch's)
VIEW_COLUMNS = ([f"tags.`{rundir.SELECTED}`", "tags.`selected_hparams`"]
                + [f"params.`hparams.{h}`" for h in HPARAMS]
                + [f"metrics.`{m}`" for m in (FINAL + rundir.TEST_ACC, rundir.TEST_ACC_MEAN, rundir.TEST_ACC_STD)])
VIEW_STATE = {"selectedColumns": VIEW_COLUMNS, "columnOrder": ["attributes.`Run Name`"],
              "columnWidths": {"attributes.`Run Name`": 430}}
MARKER_METRIC = rundir.VAL_ACC  # every epoch logs it, in one batch with the rest of the row
LIVE_INTERVAL = 30  # seconds between a live run's rounds of requests (mlflow.live_interval)
QUEUE_ROWS = 10_000  # epoch rows a run keeps for MLflow; older ones wait in history.csv for finish's sync
ROWS_PER_REQUEST = 80  # whole epoch rows (up to 12 metrics each) per log_batch: MLflow takes 1000 metrics



def _now_ms():
    return int(time.time() * 1000)


def artifact_root(uri):
    """Where a SQLite store keeps artifacts: ``mlartifacts/`` next to the database file."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    return artifacts_beside(Path(uri[len("sqlite:///"):])).resolve().as_uri()


def get_or_create_experiment(client, name, uri):
    """Experiment id for ``name``; creates it (with a known artifact location) if missing. Either way it is
    marked as a model-training experiment and has the saved view of the runs table."""
    from mlflow.exceptions import MlflowException
    found = client.get_experiment_by_name(name)
    if found is None:
        root = artifact_root(uri)
        try:
            client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None, tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by another process
            pass
        found = client.get_experiment_by_name(name)
    for key, value in EXPERIMENT_KIND.items():
        if found.tags.get(key) != value:
            _set_experiment_tag(client, found.experiment_id, key, value)
    view_key = f"mlflow.sharedViewState.{SAVED_VIEW}"
    if json.loads(json.loads(found.tags.get(view_key, '{"state": "{}"}'))["state"]) != VIEW_STATE:
        now = _now_ms()
        _set_experiment_tag(client, found.experiment_id, view_key, json.dumps(
            {"name": SAVED_VIEW, "createdAt": now, "updatedAt": now, "state": json.dumps(VIEW_STATE)}))
    return found.experiment_id


def _set_experiment_tag(client, experiment_id, key, value):
    """Runs that start together may each set an experiment's tag; the second insert of the same key can fail (a
    UNIQUE constraint of the store): the tag is there, set by the other."""
    from mlflow.exceptions import MlflowException
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        if key not in client.get_experiment(experiment_id).tags:
            raise


def get_or_create_parent(client, experiment_id, group):
    """Run id of the parent run of a selection group (``experiment/setting/variant``); created if missing. Runs
    that start together may each create one: the one with the smallest run id is kept, the others are deleted
    by whoever sees them (a later sync re-parents a run that took one of those)."""
    def parents():
        return sorted(r.info.run_id for r in client.search_runs([experiment_id], f"tags.`{GROUP_TAG}` = '{group}'",
                                                                max_results=100))
    found = parents()
    if not found:
        client.create_run(experiment_id, run_name=group.split("/", 1)[-1], tags={GROUP_TAG: group})
        found = parents()
    for extra in found[1:]:
        client.delete_run(extra)
    return found[0]


def _sync_parent(client, parent_id, tags, summary, training):
    """Give a parent run its group's grid tags and, once selected, the selection summary, which ends it
    (idempotent). ``training``: a run of the group starts training, so the parent runs again."""
    parent = client.get_run(parent_id)
    wanted = {**{k: tags[k] for k in PARENT_TAGS if k in tags}, **summary.get("tags", {})}
    selected_now = any(parent.data.tags.get(k) != str(v) for k, v in summary.get("tags", {}).items())
    _log_missing(client, parent_id, parent, tags=wanted, metrics=summary.get("metrics", {}))
    if summary and (selected_now or parent.info.status != "FINISHED"):
        client.set_terminated(parent_id, "FINISHED")
    elif training and not summary and parent.info.status != "RUNNING":
        client.update_run(parent_id, status="RUNNING")


def _end_parent_if_idle(client, run, parent_id):
    """End the parent run of a run that just finished, unless another of its runs is still running."""
    if not parent_id:
        return
    running = client.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                 "attributes.status = 'RUNNING'", max_results=1)
    if not running and client.get_run(parent_id).info.status == "RUNNING":
        client.set_terminated(parent_id, "FINISHED")


def _log_missing(client, run_id, run, params=None, tags=None, metrics=None):
    """Log the params a run lacks (params never change), and the tags and final (step 0) metrics whose value
    differs from the run's: one request unless there are more than 100 params."""
    from mlflow.entities import Metric, Param, RunTag
    params = [Param(k, str(v)[:6000]) for k, v in (params or {}).items() if k not in run.data.params]
    tags = [RunTag(k, str(v)) for k, v in (tags or {}).items() if run.data.tags.get(k) != str(v)]
    now = _now_ms()
    metrics = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
               if v is not None and not math.isnan(float(v)) and run.data.metrics.get(k) != float(v)]
    for start in range(0, max(len(params), 1), 100):
        first = start == 0
        if params[start:start + 100] or (first and (tags or metrics)):
            client.log_batch(run_id, params=params[start:start + 100], metrics=metrics if first else [],
                             tags=tags if first else [])


def _group(tags):
    """The selection group of a grid run from its tags, or None (a run started by hand)."""
    try:
        return rundir.group_key(tags["experiment"], tags["dataset"], tags["noise"], float(tags["rate"]), tags["n"],
                         tags["variant"])
    except (KeyError, ValueError):
        return None


def _job_tags(run_dir):
    path = Path(run_dir) / rundir.JOB
    job = rundir.read_json(path) if path.exists() else {}
    return {tag: str(job[key]) for key, tag in JOB_TAGS.items() if job.get(key) is not None}


def _run_metadata(client, run_dir, uri, experiment, tags, training=False):
    """(experiment id, tags) of a run: its grid tags, the job's tags and its parent run (created if missing)."""
    experiment_id = experiment.get("id") or get_or_create_experiment(client, experiment["name"], uri)
    tags = {**tags, **_job_tags(run_dir)}
    group = _group(tags)
    if group:
        from mlflow.exceptions import MlflowException
        for attempt in range(3):
            parent_id = get_or_create_parent(client, experiment_id, group)
            try:
                _sync_parent(client, parent_id, tags, rundir.read_mlflow(run_dir).get("parent", {}), training)
                break
            except MlflowException:  # deleted meanwhile by a run that saw an older duplicate: find it again
                if attempt == 2 or client.get_run(parent_id).info.lifecycle_stage == "active":
                    raise
        tags[PARENT_TAG] = parent_id
    return {"id": experiment_id, "name": experiment.get("name")}, tags


def _started_ms(run_dir):
    """When the run directory's training started (its first attempt, job.json), in ms; None if unknown."""
    from datetime import datetime, timezone
    path = Path(run_dir) / rundir.JOB
    job = rundir.read_json(path) if path.exists() else {}
    started = (job.get("attempts") or [job])[0].get("started")
    if not started:
        return None
    return int(datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp() * 1000)


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Set before MLflow is imported, unless the user set them. HTTP: fail fast enough that a dead server costs a
# round seconds, not minutes. Telemetry: MLflow's client telemetry, once its config download fails (no internet
# on compute nodes), unsets _MLFLOW_TELEMETRY_SESSION_ID from a thread of its own while requests iterates
# os.environ on every call: that call then raises KeyError('_MLFLOW_TELEMETRY_SESSION_ID').
MLFLOW_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _mlflow_environment(uri):
    for name, value in MLFLOW_SETTINGS.items():
        os.environ.setdefault(name, value)
    if redact(uri) != uri:  # MLflow prints "View run ... at: URI" links, password included
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _client(uri):
    _mlflow_environment(uri)
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _metrics_of(row, step, timestamp=None):
    """A row's metrics at ``step``. ``timestamp`` (ms) fixed when the row was made: a request that is sent again
    (the server stored it but its answer was lost) then repeats the same metrics, which the store keeps once."""
    from mlflow.entities import Metric
    now = _now_ms() if timestamp is None else timestamp
    values = {k: float(v) for k, v in row.items() if k != rundir.EPOCH and v is not None and v != ""}
    # NaN (e.g. "nan" in history.csv) means "not measured": skipped, whether live or synced later
    return [Metric(k, v, now, step) for k, v in values.items() if not math.isnan(v)]


def _param_values(config):
    """The MLflow params of a run: its config.json, flattened, as MLflow keeps them."""
    return {k: str(v)[:6000] for k, v in flatten(config).items()}


def _ensure_run(client, run_dir, uri, experiment, run_name, tags, params, epochs):
    """The MLflow run of a run directory: the one recorded there if it still exists, holds this config (its
    params are none but ``params``) and no epoch past the ``epochs`` the directory holds (a job killed after
    logging epochs past its last checkpoint), else a new one. A recorded run that fails either is deleted: no
    MLflow run mixes two configs or two versions of an epoch. Returns the run.

    Before creating a run, a random key is written into mlflow.json and given to the run as the tag
    ``limit.run_key``: if the server created the run but its answer was lost (it died, the request timed out),
    the next call finds that run instead of creating a duplicate.
    """
    from mlflow.exceptions import MlflowException
    info = rundir.read_mlflow(run_dir)
    same_store = info.get("tracking_uri") == redact(uri)
    if info.get("run_id") and same_store:
        try:
            run = client.get_run(info["run_id"])
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # unreachable: never create a second run because of that
            run = None  # a reset store: create the run afresh
        if run is not None and run.info.lifecycle_stage == "active":
            if all(params.get(k) == v for k, v in run.data.params.items()) and not (
                    run.data.metrics and any(m.step >= epochs for m in client.get_metric_history(
                        run.info.run_id, MARKER_METRIC))):
                return run
            client.delete_run(run.info.run_id)  # the run directory was trained again, or resumed from before
        info = {**info, "run_id": None, "run_key": None}
    experiment_id = experiment.get("id") or get_or_create_experiment(client, experiment["name"], uri)
    tags = {**info.get("tags", {}), **tags}  # keeps a ``selected`` tag recorded while MLflow was unreachable
    key = info.get("run_key") if same_store and not info.get("run_id") else None
    found = key and client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        run = found[0]
    else:
        key = key or uuid.uuid4().hex
        rundir.write_mlflow(run_dir, {**info, "run_id": None, "tracking_uri": redact(uri), "run_key": key,
                                      "tags": tags})
        run = client.create_run(experiment_id, start_time=_started_ms(run_dir), run_name=run_name,
                                tags={**tags, RUN_KEY_TAG: key})
    rundir.write_mlflow(run_dir, {"run_id": run.info.run_id, "tracking_uri": redact(uri),
                                  "experiment_id": experiment_id, "run_name": run_name, "tags": tags, "run_key": key,
                                  **({"parent": info["parent"]} if "parent" in info else {})})
    return run


def _open_run(client, run_dir, uri, experiment, run_name, tags, config, epochs, training=False):
    """The MLflow run of a run directory (``_ensure_run``) with its parent, tags and params; returns the run (as
    it was before these) and its parent's run id (None for a run outside the grid)."""
    experiment, tags = _run_metadata(client, run_dir, uri, experiment, tags, training)
    params = _param_values(config)
    run = _ensure_run(client, run_dir, uri, experiment, run_name, tags, params, epochs)
    _log_missing(client, run.info.run_id, run, params=params, tags=tags)
    return run, tags.get(PARENT_TAG)


def sync_run(run_dir, uri=None, experiment=None, run_name=None, tags=None):
    """Put a run directory into MLflow: its parent, tags, params, every epoch of history, final metrics, artifacts.

    Only what is missing is logged, so a second call adds nothing. Returns the number of epochs added.
    """
    import csv
    run_dir = Path(run_dir)
    info = rundir.read_mlflow(run_dir)
    config = rundir.read_json(run_dir / rundir.CONFIG)
    uri = tracking_uri(uri or recorded_uri(info.get("tracking_uri")))
    # A job that never reached MLflow has no mlflow.json: its name and tags come from config.json.
    # Later tags (``selected``, set by the select stage) live in mlflow.json.
    tags = {k: str(v) for k, v in {**rundir.run_tags(config), **info.get("tags", {}), **(tags or {})}.items()}
    if not experiment:  # an experiment id only means something in the store that gave it
        same_store = info.get("tracking_uri") == redact(uri)
        experiment = {"id": info.get("experiment_id") if same_store else None,
                      "name": rundir.identity(config)["experiment"]}
    run_name = run_name or info.get("run_name") or rundir.run_name(rundir.identity(config))
    history_path = run_dir / rundir.HISTORY  # every epoch up to the last checkpoint, also of an unfinished run
    rows = []
    if history_path.exists():
        with open(history_path) as f:
            rows = list(csv.DictReader(f))
    client = _client(uri)
    run, parent_id = _open_run(client, run_dir, uri, experiment, run_name, tags, config, len(rows))
    run_id = run.info.run_id
    logged = {m.step for m in client.get_metric_history(run_id, MARKER_METRIC)} if run.data.metrics else set()
    missing = [r for r in rows if int(r[rundir.EPOCH]) not in logged]
    for start in range(0, len(missing), ROWS_PER_REQUEST):
        client.log_batch(run_id, metrics=[m for r in missing[start:start + ROWS_PER_REQUEST]
                                          for m in _metrics_of(r, int(r[rundir.EPOCH]))])
    final = run_dir / rundir.METRICS
    if final.exists():
        done = rundir.read_json(final)
        have = set(run.data.metrics)
        client.log_batch(run_id, metrics=[m for m in _metrics_of({FINAL + k: v for k, v in done.items()}, 0)
                                          if m.key not in have])
        present = {a.path for a in client.list_artifacts(run_id)}
        names = ARTIFACTS + (CHECKPOINT_ARTIFACTS if config.get("log_checkpoints", True) else ())
        for name in names:
            if (run_dir / name).exists() and name not in present:
                client.log_artifact(run_id, str(run_dir / name))
        if run.info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED", end_time=int(final.stat().st_mtime * 1000))
            _end_parent_if_idle(client, run, parent_id)
    return len(missing)


class Tracker:
    """Mirrors one training run into MLflow while it trains; never raises, and never makes the loop wait:
    ``log_epoch`` only queues the row, a background thread sends (module docstring).

    The MLflow experiment is the run's experiment block; its name and tags come from its config (``start``).
    """

    def __init__(self, run_dir, uri=None, experiment_id=None, interval=LIVE_INTERVAL):
        self.run_dir = Path(run_dir)
        self.uri = tracking_uri(uri)
        self.interval = interval
        self.experiment_id = experiment_id
        self.experiment = self.run_name = self.tags = self.config = None
        self.client = self.run = self.thread = None
        self.rows = queue.Queue(maxsize=QUEUE_ROWS)
        self.unsent = []  # (row, its time) taken from the queue that MLflow does not have yet
        self.stopping = threading.Event()
        self.warned = False
        _mlflow_environment(self.uri)  # here, not in the thread: os.environ is not thread-safe

    def _warn(self, exc):
        if not self.warned:
            self.warned = True
            warnings.warn(redact(f"MLflow tracking to {self.uri} failed ({type(exc).__name__}: {exc}); training "
                                 f"goes on and {self.run_dir} stays complete. Later: python -m limit mlflow-sync "
                                 f"{self.run_dir}"), RuntimeWarning, stacklevel=2)

    def start(self, config, history):
        self.config = config
        self.experiment = {"id": self.experiment_id, "name": config["run"]["experiment"]}
        self.run_name = rundir.run_name(rundir.identity(config))
        self.tags = rundir.run_tags(config)
        # (row, its time) of a resumed run's epochs so far: sent unless MLflow has them
        now = _now_ms()
        self.unsent = [(dict(row), now) for row in history]
        self.resumed_at = len(history)
        self.thread = threading.Thread(target=self._send, name="mlflow-tracker", daemon=True)
        self.thread.start()

    def log_epoch(self, row):
        try:
            self.rows.put_nowait((dict(row), _now_ms()))
        except queue.Full:  # the server is far behind: history.csv keeps the row for finish's sync
            pass

    def _send(self):
        """One round per interval; the first after a random part of it, so that runs started together (a pack,
        a job array) do not all ask the server at once."""
        wait = random.uniform(0, self.interval)
        while not self.stopping.wait(wait):
            began = time.monotonic()
            try:
                self._round()
            except Exception as exc:  # any tracking failure: warn once, retry next round, keep training
                self._warn(exc)
            wait = max(0.0, self.interval - (time.monotonic() - began))

    def _round(self):
        """Open the MLflow run if not yet done, then send every queued row, oldest first."""
        while True:
            try:
                self.unsent.append(self.rows.get_nowait())
            except queue.Empty:
                break
        del self.unsent[:-QUEUE_ROWS]  # bounded: what is dropped waits in history.csv for finish's sync
        if self.run is None:
            self.client = self.client or _client(self.uri)
            run, _ = _open_run(self.client, self.run_dir, self.uri, self.experiment, self.run_name, self.tags,
                               self.config, self.resumed_at, training=True)
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            if self.unsent and run.data.metrics:  # a resumed run that continues its MLflow run
                logged = {m.step for m in self.client.get_metric_history(run.info.run_id, MARKER_METRIC)}
                self.unsent = [(row, ms) for row, ms in self.unsent if row[rundir.EPOCH] not in logged]
            self.run = run
        while self.unsent:
            rows = self.unsent[:ROWS_PER_REQUEST]
            self.client.log_batch(self.run.info.run_id, metrics=[m for row, ms in rows
                                                                 for m in _metrics_of(row, row[rundir.EPOCH], ms)])
            del self.unsent[:len(rows)]

    def finish(self, run_dir):
        """Stop the sender, then sync the finished run directory: params, final metrics, artifacts and every
        epoch MLflow lacks, in one idempotent pass. Returns whether MLflow has the whole run now; where not, the
        run directory is complete and ``mlflow-sync`` (or the select stage) puts it there later."""
        if self.thread is not None:
            self.stopping.set()
            self.thread.join()
        try:
            sync_run(run_dir, self.uri, self.experiment, self.run_name, self.tags)
        except Exception as exc:
            self._warn(exc)
            return False
        return True


def tag_selection(run_dirs, selected, chosen, uri=None):
    """The select stage's MLflow step: tag each run of a selection group ``selected=true|false``, give the group's
    parent run the selection's summary (the selected hyperparameters as tags; the configuration's test and
    validation accuracy over seeds as metrics), and put into MLflow whatever of the group's runs is missing
    there: all of it where the jobs did not log as they trained (``mlflow.live: false``). ``chosen``: the
    selected configuration's row of ``limit.report.selection.select_configurations``.

    The tags and the summary are first written into each run's mlflow.json, so that a later ``mlflow-sync`` sets
    them if MLflow cannot be reached now; then it warns, never fails.
    """
    hparams = {f"selected.{k}": rundir.fmt(chosen[k]) for k in HPARAMS if k in chosen and not _missing(chosen[k])}
    summary = {"tags": {"selected_hparams": chosen["hparams"], **hparams},
               "metrics": {k: float(chosen[k]) for k in (rundir.TEST_ACC_MEAN, rundir.TEST_ACC_STD,
                                                          rundir.BEST_VAL_ACC_MEAN, rundir.SEEDS)}}
    try:
        for run_dir in run_dirs:
            info = rundir.read_mlflow(run_dir)
            info.setdefault("tags", {})[rundir.SELECTED] = str(run_dir in selected).lower()
            info["parent"] = summary
            rundir.write_mlflow(run_dir, info)
    except OSError as exc:
        warnings.warn(f"could not record the selected runs in their run directories ({exc})", RuntimeWarning)
    try:
        for run_dir in run_dirs:
            sync_run(run_dir, uri)
    except Exception as exc:
        warnings.warn(redact(f"could not put the selected runs into MLflow ({type(exc).__name__}: {exc}); later: "
                             f"python -m limit mlflow-sync RUN_DIR..."), RuntimeWarning)


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def add_mlflow_sync_arguments(parser):
    parser.add_argument("run_dirs", nargs="+", help="run directories (results/runs/...)")
    parser.add_argument("--tracking-uri", help=TRACKING_URI_HELP)


def run_mlflow_sync(args):
    total = 0
    for run_dir in args.run_dirs:
        added = sync_run(run_dir, args.tracking_uri)
        total += added
        print(f"{run_dir}: {added} epochs added")
    print(f"synced {len(args.run_dirs)} runs, {total} epochs added")


def add_mlflow_init_arguments(parser):
    parser.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    parser.add_argument("--groups", nargs="+", default=[],
                        help="selection groups (experiment/setting/variant): their experiments and parent runs now "
                             "(else the first run of each creates them)")


def run_mlflow_init(args):
    """Create the store (parallel jobs would race in a new SQLite file's schema migration) and the experiments
    and parent runs of ``--groups``."""
    uri = tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    client.search_experiments(max_results=1)  # creates an SQLite store; a server: it answers
    experiments = sorted({group.split("/", 1)[0] for group in args.groups})
    ids = {name: get_or_create_experiment(client, name, uri) for name in experiments}
    for group in args.groups:
        get_or_create_parent(client, ids[group.split("/", 1)[0]], group)
    print(f"{json.dumps(ids)}; {len(args.groups)} parent runs")
