"""MLflow tracking of training runs. The run directory is the source of truth: MLflow mirrors it.

Training never fails because of tracking: the first error (server down, database locked) is warned
about once and tracking stops for that run; ``sync_run`` (``python -m limit mlflow-sync``) later puts
whatever is missing into MLflow, idempotently, continuing the same MLflow run (or creating it, in its experiment,
with its name and tags derived from config.json, if the job never reached MLflow). ``RUN_DIR/mlflow.json`` records
the run id, store, experiment, name and tags, including the ``selected`` tag of the select stage and the summary it
gives the parent run.

The workflow's training jobs track as they train (``Tracker``) when the config's ``mlflow.live`` is true; either way
the select stage (``tag_selection``) syncs every run of its group, so a run whose job did not track reaches MLflow
then.

Every grid run is nested (``mlflow.parentRunId``) under one parent run per selection group (experiment block,
data setting, method variant), found by its ``limit.group`` tag; ``mlflow-init`` creates the parents before any
job starts (parallel jobs would race), the first child to start gives it the group's grid tags, and the select
stage gives it the selected hyperparameters and the selected runs' test accuracy.

A password in a tracking URI (``http://user:password@host``) is a secret: it is read only from
``MLFLOW_TRACKING_URI``, and every URI or message this module writes or prints shows ``user:***@host``.
"""
import json
import math
import os
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse

from limit.registry import HPARAMS
from limit.runs import rundir
from limit.tracking.uri import TRACKING_URI_HELP, recorded_uri, redact, tracking_uri

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
VIEW_COLUMNS = (["tags.`selected`", "tags.`selected_hparams`"]
                + [f"params.`hparams.{h}`" for h in HPARAMS]
                + ["metrics.`final_test_acc`", "metrics.`test_acc_mean`", "metrics.`test_acc_std`"])
VIEW_STATE = {"selectedColumns": VIEW_COLUMNS, "columnOrder": ["attributes.`Run Name`"],
              "columnWidths": {"attributes.`Run Name`": 430}}
MARKER_METRIC = "val_acc"  # every epoch logs it, in one batch with the rest of the row



def artifact_root(uri):
    """Where a SQLite store keeps artifacts: ``mlartifacts/`` next to the database file."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.parent.resolve() / "mlartifacts").as_uri()


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
            client.set_experiment_tag(found.experiment_id, key, value)
    view_key = f"mlflow.sharedViewState.{SAVED_VIEW}"
    if json.loads(json.loads(found.tags.get(view_key, '{"state": "{}"}'))["state"]) != VIEW_STATE:
        now = int(time.time() * 1000)
        client.set_experiment_tag(found.experiment_id, view_key, json.dumps(
            {"name": SAVED_VIEW, "createdAt": now, "updatedAt": now, "state": json.dumps(VIEW_STATE)}))
    return found.experiment_id


def get_or_create_parent(client, experiment_id, group):
    """Run id of the parent run of a selection group (``experiment/setting/variant``); created if missing."""
    found = client.search_runs([experiment_id], f"tags.`{GROUP_TAG}` = '{group}'", max_results=1)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=group.split("/", 1)[-1], tags={GROUP_TAG: group}).info.run_id


def _sync_parent(client, parent_id, tags, summary):
    """Give a parent run its group's grid tags and, once selected, the selection summary (idempotent)."""
    parent = client.get_run(parent_id)
    wanted = {**{k: tags[k] for k in PARENT_TAGS if k in tags}, **summary.get("tags", {})}
    _log_missing(client, parent_id, parent, tags=wanted, metrics=summary.get("metrics", {}))
    if summary and parent.info.status != "FINISHED":
        client.set_terminated(parent_id, "FINISHED")


def _log_missing(client, run_id, run, params=None, tags=None, metrics=None):
    """Log the params a run lacks (params never change), and the tags and final (step 0) metrics whose value
    differs from the run's."""
    from mlflow.entities import Metric, Param, RunTag
    params = [Param(k, str(v)[:6000]) for k, v in (params or {}).items() if k not in run.data.params]
    tags = [RunTag(k, str(v)) for k, v in (tags or {}).items() if run.data.tags.get(k) != str(v)]
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
               if v is not None and not math.isnan(float(v)) and run.data.metrics.get(k) != float(v)]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    if tags or metrics:
        client.log_batch(run_id, metrics=metrics, tags=tags)


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


def _run_metadata(client, run_dir, uri, experiment, tags):
    """(experiment id, tags) of a run: its grid tags, the job's tags and its parent run (created if missing)."""
    experiment_id = experiment.get("id") or get_or_create_experiment(client, experiment["name"], uri)
    tags = {**tags, **_job_tags(run_dir)}
    group = _group(tags)
    if group:
        parent_id = get_or_create_parent(client, experiment_id, group)
        _sync_parent(client, parent_id, tags, rundir.read_mlflow(run_dir).get("parent", {}))
        tags[PARENT_TAG] = parent_id
    return {"id": experiment_id, "name": experiment.get("name")}, tags


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Fail fast enough that a dead server costs a job seconds, not minutes; set in ``_client``, before MLflow
# reads them, unless the user set them.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def _client(uri):
    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient
    if redact(uri) != uri:  # MLflow prints "View run ... at: URI" links, password included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return MlflowClient(tracking_uri=uri)


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
    info = rundir.read_mlflow(run_dir)
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
        rundir.write_mlflow(run_dir, {**info, "run_id": None, "tracking_uri": redact(uri), "run_key": key, "tags": tags})
        run_id = client.create_run(experiment_id, run_name=run_name, tags={**tags, RUN_KEY_TAG: key}).info.run_id
    rundir.write_mlflow(run_dir, {"run_id": run_id, "tracking_uri": redact(uri), "experiment_id": experiment_id,
                              "run_name": run_name, "tags": tags, "run_key": key})
    return run_id


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
    client = _client(uri)
    experiment, tags = _run_metadata(client, run_dir, uri, experiment, tags)
    run_id = _ensure_run(client, run_dir, uri, experiment, run_name, tags)
    run = client.get_run(run_id)
    _log_missing(client, run_id, run, params=flatten(config), tags=tags)
    logged = {m.step for m in client.get_metric_history(run_id, MARKER_METRIC)}
    history_path = run_dir / rundir.HISTORY  # every epoch up to the last checkpoint, also of an unfinished run
    rows = []
    if history_path.exists():
        with open(history_path) as f:
            rows = list(csv.DictReader(f))
    missing = [r for r in rows if int(r["epoch"]) not in logged]
    metrics = [m for r in missing for m in _metrics_of(r, int(r["epoch"]))]
    for start in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[start:start + 900])
    final = run_dir / rundir.METRICS
    if final.exists():
        done = rundir.read_json(final)
        have = set(run.data.metrics)
        client.log_batch(run_id, metrics=[m for m in _metrics_of({f"final_{k}": v for k, v in done.items()}, 0)
                                          if m.key not in have])
        present = {a.path for a in client.list_artifacts(run_id)}
        names = ARTIFACTS + (CHECKPOINT_ARTIFACTS if config.get("log_checkpoints", True) else ())
        for name in names:
            if (run_dir / name).exists() and name not in present:
                client.log_artifact(run_id, str(run_dir / name))
        if run.info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED")
    return len(missing)


class Tracker:
    """Mirrors one training run into MLflow while it trains; never raises.

    The MLflow experiment is the run's experiment block; its name and tags come from its config (``start``).
    """

    def __init__(self, run_dir, uri=None, experiment_id=None):
        self.run_dir = Path(run_dir)
        self.uri = tracking_uri(uri)
        self.experiment_id = experiment_id
        self.experiment = self.run_name = self.tags = None
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
        self.experiment = {"id": self.experiment_id, "name": config["run"]["experiment"]}
        self.run_name = rundir.run_name(rundir.identity(config))
        self.tags = rundir.run_tags(config)

        def begin():
            self.client = _client(self.uri)
            experiment, tags = _run_metadata(self.client, self.run_dir, self.uri, self.experiment, self.tags)
            self.run_id = _ensure_run(self.client, self.run_dir, self.uri, experiment, self.run_name, tags)
            # params now, so that a long job shows them while it trains
            _log_missing(self.client, self.run_id, self.client.get_run(self.run_id), params=flatten(config),
                         tags=tags)
            self.client.update_run(self.run_id, status="RUNNING")
        self._guard(begin)

    def log_epoch(self, row):
        self._guard(lambda: self.client.log_batch(self.run_id, metrics=_metrics_of(row, row["epoch"])))

    def finish(self, run_dir):
        # Params, artifacts and any epoch missed while the store was unreachable, in one idempotent pass.
        self._guard(sync_run, run_dir, self.uri, self.experiment, self.run_name, self.tags, retry=True)


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
               "metrics": {k: float(chosen[k]) for k in ("test_acc_mean", "test_acc_std", "best_val_acc_mean",
                                                          "seeds")}}
    try:
        for run_dir in run_dirs:
            info = rundir.read_mlflow(run_dir)
            info.setdefault("tags", {})["selected"] = str(run_dir in selected).lower()
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
    parser.add_argument("--groups", nargs="+", required=True,
                        help="selection groups (experiment/setting/variant): one parent run each, in its experiment")


def run_mlflow_init(args):
    """Create the store, the experiments and the groups' parent runs before any job starts (MLflow races
    otherwise)."""
    uri = tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    experiments = sorted({group.split("/", 1)[0] for group in args.groups})
    ids = {name: get_or_create_experiment(client, name, uri) for name in experiments}
    for group in args.groups:
        get_or_create_parent(client, ids[group.split("/", 1)[0]], group)
    print(f"{json.dumps(ids)}; {len(args.groups)} parent runs")
