import atexit
import hashlib
import inspect
import math
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))  # the package is importable without installing it
# torch-free modules only: parsing the workflow must not import the scientific stack
from limit.runs.grid import (  # noqa: E402
    SCHEMA,
    ConfigError,
    check_schema,
    check_slurm_submission,
    expand_runs,
    figure_facts,
    labels_difference,
    output_arguments,
    pack_runs,
    recorded_packs,
    selection_groups,
    skipped_outputs,
    store_uri,
    train_arguments,
)
from limit.runs.rundir import (  # noqa: E402
    BEST,
    CONFIGURATION_TABLE,
    HISTORY,
    METRICS,
    RUN_TABLE,
    RUNS_DIR,
    TEST_OUTPUTS,
    setting_text,
)

# Jobs (local, Slurm or conda) import the package from this checkout; bash's strict mode, which a prefix replaces,
# stays on (a train job's log goes through a pipe).
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(str(REPO))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


def command_line_executor():
    """The --executor of the snakemake command line (a profile's included), or None when it cannot be read (the
    Python API, a Snakemake that renamed its CLI function). Snakemake parses the workflow before it chooses the
    executor, so this reads the caller's parsed arguments: best effort, for dry runs; ``submission_checks`` runs
    again in onstart, from the executor Snakemake chose. Jobs inside Slurm run another executor (slurm-jobstep)."""
    for frame in inspect.stack(0):
        if frame.function == "args_to_api" and frame.frame.f_globals.get("__name__") == "snakemake.cli":
            return getattr(frame.frame.f_locals.get("args"), "executor", None)
    return None


def submission_checks(executor):
    """The checks of a Slurm submission (partition, tracking store), before any job: one error line, exit 2."""
    if executor != "slurm":
        return
    try:
        check_slurm_submission(
            config, RUN_ROWS, os.environ.get("MLFLOW_TRACKING_URI", store_uri(config))
        )
    except ConfigError as exc:
        print(f"error: invalid config: {exc}", file=sys.stderr)
        sys.exit(2)


def chosen_executor():
    """The executor Snakemake chose (onstart, before any job): its plugin's name through the executor-plugin
    interface (snakemake-interface-executor-plugins' WorkflowExecutorInterface.executor_plugin)."""
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None:
        print("warning: Snakemake does not name its executor (workflow.executor_plugin); the Slurm submission "
              "checks (partition, tracking store) did not run", file=sys.stderr)
        return None
    return plugin.name


# A bad config stops here, before any job: one line naming the key, exit status 2.
try:
    check_schema(config, SCHEMA)
    validate(config, str(SCHEMA))  # fills the defaults
    RUN_ROWS = expand_runs(config)
except ConfigError as exc:
    print(f"error: invalid config: {exc}", file=sys.stderr)
    sys.exit(2)
submission_checks(command_line_executor())
if config["skip_datasets"]:
    print(f"note: {skipped_outputs(config)}", file=sys.stderr)  # one line, in every run and dry run
RESULTS = config["results"]
DATA_DIR = config["data_dir"]
RUNS = {row["run_id"]: row for row in RUN_ROWS}
GROUPS = selection_groups(RUN_ROWS)
BLOCKS = sorted({r["experiment"] for r in RUN_ROWS})
SETTINGS = {
    setting_text(r["dataset"], r["noise"], r["rate"], r["n"], r["seed"]): r for r in RUN_ROWS
}
DATASETS = sorted({r["dataset"] for r in RUN_ROWS})
IMAGE_DATASETS = config["image_datasets"]
# One label ranking per LIMIT variant, data setting and seed, from the run of its grid that noisy validation selects.
LABEL_ISSUE_RANKINGS = {}
for r in RUN_ROWS:
    if r["label_issues"]:
        setting = setting_text(r["dataset"], r["noise"], r["rate"], r["n"], r["seed"])
        LABEL_ISSUE_RANKINGS.setdefault(f"{r['experiment']}/{setting}/{r['variant']}", []).append(r["run_id"])
EXPERIMENTS = list(config["experiments"])
FIGURE1_EXPERIMENTS = [name for name, exp in config["experiments"].items() if exp.get("figure1")]
TRACKING = config["mlflow"]["enabled"]
# Training jobs log to MLflow as they train (mlflow.live), or leave it to their group's select job.
LIVE_TRACKING = TRACKING and config["mlflow"]["live"]
# MLFLOW_TRACKING_URI, when set, reaches every job through the environment and stays there (it may hold a
# password): it never goes on a command line. Otherwise the config's store is passed.
TRACKING_URI_ARGS = [] if "MLFLOW_TRACKING_URI" in os.environ else ["--tracking-uri", store_uri(config)]

STOPPED = (
    "limit-pipeline stopped before the end: run the same command again to go on (finished runs are kept, "
    "interrupted ones resume from their last checkpoint; a failed job's log above says why it failed)"
)

# The files of the workflow, by wildcard.
DATA_READY = f"{RESULTS}/data/{{dataset}}.ready"
IMAGE_DATASET = f"{RESULTS}/data/{{name}}"  # the decoded cache of your own images: the --dataset of its jobs
LABELS = f"{RESULTS}/labels/{{setting}}.npz"
RUN_DIR = f"{RESULTS}/{RUNS_DIR}/{{run}}"
LABEL_ISSUES = f"{RESULTS}/label_issues/{{ranking}}"
# an experiment block's selections: one JSON file per group, <block>/<setting>/<variant>.json (one select job a block:
# its start, MLflow's import, costs more than a group's selection)
SELECTIONS = f"{RESULTS}/selected/{{block}}"
PACK_FILE = f"{RESULTS}/packs/{{pack}}.json"  # lists a pack's run directories once all have finished
MLFLOW_INIT_LOG = f"{RESULTS}/logs/mlflow_init.log"
RUNS_CSV = f"{RESULTS}/{RUN_TABLE}"
SELECTED_CSV = f"{RESULTS}/{CONFIGURATION_TABLE}"
# Figures the README shows, copied from the figures directory.
README_FIGURES = ("figure1_memorisation.png", "figure2_fano.png", "figure3_curves.png")

# A run stays in the pack that trained it, so a changed config packs only its new runs.
PACKS = pack_runs(RUN_ROWS, recorded_packs(os.path.dirname(PACK_FILE), os.path.dirname(RUN_DIR)))
PACK_OF = {m["run_id"]: pack for pack, members in PACKS.items() for m in members}


def labels_file(row):
    return LABELS.format(setting=setting_text(row["dataset"], row["noise"], row["rate"], row["n"], row["seed"]))


# A labels file at the workflow's path that another command made differently (by hand, with another val_size) is
# refused before any job: Snakemake takes an existing file as up to date, and sets its DAG (--forcerun included)
# only after parsing the workflow, so the workflow cannot have it rebuilt; the user removes it.
for row in SETTINGS.values():
    difference = labels_difference(labels_file(row), row)
    if difference:
        print(f"error: {labels_file(row)} was made by another command ({difference}); remove it, and the workflow "
              f"makes its own", file=sys.stderr)
        sys.exit(2)


def run_dir(run):
    return RUN_DIR.format(run=run)


def run_done(run):
    """The file that says a run has finished: its metrics.json (written last), or its pack's file."""
    return PACK_FILE.format(pack=PACK_OF[run]) if run in PACK_OF else os.path.join(run_dir(run), METRICS)


def pending_groups():
    """The selection groups with a run still to train: the MLflow parent runs this invocation needs."""
    return sorted({g for g, rows in GROUPS.items() if any(not os.path.exists(run_done(r["run_id"])) for r in rows)})


def dataset_argument(row):
    """The --dataset of a run's jobs: a built-in dataset's name, or the cache of your own images."""
    return IMAGE_DATASET.format(name=row["dataset"]) if row["image_dataset"] else row["dataset"]


def data_ready(dataset):
    """The file that says a dataset is ready: a built-in one's check, or the decoded cache of your images."""
    if dataset in IMAGE_DATASETS:
        return os.path.join(IMAGE_DATASET.format(name=dataset), "dataset.json")
    return DATA_READY.format(dataset=dataset)


def data_dir(wildcards, output):
    """Where the data is read, not what it is: derived from the output (as ``tracking_arguments``), so moving the
    data reruns nothing (undocumented Snakemake behaviour: pyproject.toml pins the versions tested); a labels file records its data's content (limit.datasets.standard.data_sha256) and a run checks it."""
    return DATA_DIR


def tracking_arguments(row):
    """Where a run tracks and what it keeps (MLflow's copy of best.pt, its state once finished): not what it
    computes, so the rules derive them from the output and a change reruns nothing. --overwrite: a job that
    Snakemake runs replaces a run directory of another config (Snakemake decided that the config changed)."""
    live = [*TRACKING_URI_ARGS, "--live-interval", str(config["mlflow"]["live_interval"])]
    return [*(live if LIVE_TRACKING else ["--no-tracking"]), *output_arguments(row), "--overwrite"]


def train_inputs(wildcards):
    return run_inputs(wildcards.run)


def run_inputs(run):
    row = RUNS[run]
    inputs = {"labels": labels_file(row)}
    if row["init_from"]:
        inputs["ce_run"] = run_done(row["init_from"])
    return inputs


def run_command(run, where=True):
    """The whole ``python -m limit train`` command line of a packed run, as one shell-quoted string (the train
    rule gives the same arguments, its files from its input and output)."""
    row = RUNS[run]
    init_from = ["--init-from", run_dir(row["init_from"])] if row["init_from"] else []
    data_dir, tracking = (["--data-dir", DATA_DIR], tracking_arguments(row)) if where else ([], [])
    return shlex.join([*train_arguments(row), "--dataset", dataset_argument(row), *data_dir,
                       "--labels", labels_file(row), *init_from, "--out", run_dir(run), *tracking])


def pack_digest(pack):
    """A short digest of a pack's member commands (but where their data is and where they track)."""
    text = "\n".join(run_command(m["run_id"], where=False) for m in PACKS[pack])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pack_inputs(wildcards):
    """The inputs of every member of a pack (labels files, CE models)."""
    return sorted({path for m in PACKS[wildcards.pack] for path in run_inputs(m["run_id"]).values()}, key=str)


def members(wildcards):
    """The runs of a train job: its one run, or a pack's members."""
    return PACKS[wildcards.pack] if "pack" in wildcards.keys() else [RUNS[wildcards.run]]


def _train_job_ranks():
    """Where ready jobs outnumber the cores (the default pipeline's 2), Snakemake starts those of highest priority
    first. Train jobs: the longest first (their runs' epoch caps times training examples), so that short ones
    fill the end instead of a long one running alone there; those whose runs start from a CE run's network after
    all others (short, and waiting for CE runs that other jobs hold). {pack or run: rank}, 1 the last."""
    jobs = {**PACKS, **{run: [row] for run, row in RUNS.items() if run not in PACK_OF}}

    def order(name):
        runs = jobs[name]
        work = sum(r["epochs"] * (math.inf if r["n"] == "all" else int(r["n"])) for r in runs)
        return not runs[0]["init_from"], work

    return {name: rank for rank, name in enumerate(sorted(jobs, key=order), start=1)}


TRAIN_JOB_RANKS = _train_job_ranks()
PRIORITY_LABELS = len(TRAIN_JOB_RANKS) + 1  # every train job waits for its labels


def training_priority(wildcards):
    return TRAIN_JOB_RANKS[wildcards.pack if "pack" in wildcards.keys() else wildcards.run]


def job_resource(key, scale_with_attempt=False):
    """A train job's resource: the sum over its runs of their threads or memory (times the attempt on a retry),
    one run's where a pack trains them one after another in its process; a dataset's GPUs or Slurm setting
    (None when unset: Snakemake then drops it)."""

    def get(wildcards, attempt):
        runs = members(wildcards)
        summed = key in ("threads", "mem_mb") and not runs[0]["pack_in_process"]
        value = sum(r[key] for r in runs) if summed else runs[0][key]
        if key == "threads" and summed and "pack" in wildcards.keys():
            value += 1  # the pack's own process, which starts its members and relays their output
        return value * attempt if scale_with_attempt else value

    return get


def train_runtime(wildcards, attempt):
    """Minutes: the runtime (each run's, in turn, where a pack trains them in its process), times the attempt on
    a retry, at most max_runtime as often (a retry resumes every run)."""
    runs = members(wildcards)
    turns = len(runs) if runs[0]["pack_in_process"] else 1
    return turns * min(runs[0]["runtime"] * attempt, runs[0]["max_runtime"])


def image_sources(wildcards):
    spec = IMAGE_DATASETS[wildcards.name]
    return [spec[k] for k in ("source", "test") if k in spec]


def import_arguments(wildcards):
    """The ``python -m limit import-images`` arguments of an image dataset (all but --out)."""
    spec = IMAGE_DATASETS[wildcards.name]
    args = [spec["source"]]
    for key in ("test", "size", "channels"):
        if key in spec:
            args += [f"--{key}", str(spec[key])]
    for key in ("classes", "mean", "std"):
        if key in spec:
            args += [f"--{key}", *map(str, spec[key])]
    return args


def label_issue_files(name):
    return expand(f"{LABEL_ISSUES}/{name}", ranking=LABEL_ISSUE_RANKINGS)


def block_runs(block):
    return [r for r in RUN_ROWS if r["experiment"] == block]


def block_runs_done(wildcards):
    return sorted({run_done(r["run_id"]) for r in block_runs(wildcards.block)})


def all_outputs():
    outputs = [RUNS_CSV, SELECTED_CSV, f"{RESULTS}/tables", f"{RESULTS}/figures"]
    outputs += label_issue_files("label_issues.csv")
    if config["readme_figures"]:
        outputs += expand("docs/img/{name}", name=README_FIGURES)
    return outputs
