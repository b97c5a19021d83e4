import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))  # the package is importable without installing it
from limit.report import README_FIGURES  # noqa: E402
from limit.grid import (  # noqa: E402
    ConfigError,
    expand_runs,
    run_tags,
    selection_groups,
    setting_path,
    train_arguments,
)

# Jobs (local, Slurm or conda) import the package from this checkout.
shell.prefix(f"export PYTHONPATH={REPO}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")

RESULTS = config["results"]
try:
    RUN_ROWS = expand_runs(config)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}")
RUNS = {row["run_id"]: row for row in RUN_ROWS}
GROUPS = selection_groups(RUN_ROWS)
SETTINGS = {
    setting_path(r["dataset"], r["noise"], r["rate"], r["n"], r["seed"]): r for r in RUN_ROWS
}
DATASETS = sorted({r["dataset"] for r in RUN_ROWS})
IMAGE_DATASETS = config["image_datasets"]
LABEL_ISSUE_RUNS = [r["run_id"] for r in RUN_ROWS if r["label_issues"]]
EXPERIMENTS = list(config["experiments"])
# MLFLOW_TRACKING_URI, when set, reaches every job through the environment.
TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or config["mlflow"]["tracking_uri"]
TRACKING = config["mlflow"]["enabled"]


def tracking_arguments(run):
    row = RUNS[run]
    # run name and tags also go into the run's config.json: the run table (read_run) is built from them
    tags = " ".join(f"--tag {k}={v}" for k, v in run_tags(row).items())
    run_name = run.split("/", 1)[1]  # the experiment is the MLflow experiment
    if not TRACKING:
        return f"--no-tracking --run-name {run_name} {tags}"
    uri = "" if "MLFLOW_TRACKING_URI" in os.environ else f"--tracking-uri {TRACKING_URI}"
    return (f"{uri} --experiments-file {RESULTS}/mlflow/experiments.json "
            f"--experiment-name {row['experiment']} --run-name {run_name} {tags}")


def train_inputs(wildcards):
    row = RUNS[wildcards.run]
    inputs = {"labels": row["labels"]}
    if TRACKING:
        # ancient: recreating the store must not retrain everything
        inputs["experiments"] = ancient(f"{RESULTS}/mlflow/experiments.json")
    if row["init_from"]:
        inputs["ce_model"] = f"{row['init_from']}/best.pt"
    return inputs


def train_command(wildcards):
    row = RUNS[wildcards.run]
    args = " ".join(train_arguments(row, config["data_dir"]))
    return f"{args} --out {row['run_dir']} {tracking_arguments(wildcards.run)}"


def run_resource(key, scale_with_attempt=False):
    def get(wildcards, attempt):
        value = RUNS[wildcards.run][key]
        return value * attempt if scale_with_attempt else value

    return get


def data_ready(dataset):
    """The file that says a dataset is ready: a built-in one's check, or the decoded cache of your images."""
    if dataset in IMAGE_DATASETS:
        return f"{RESULTS}/data/{dataset}/dataset.json"
    return f"{RESULTS}/data/{dataset}.ready"


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
    return expand(f"{RESULTS}/label_issues/{{run}}/{name}", run=LABEL_ISSUE_RUNS)


def group_run_dirs(wildcards):
    return [RUNS[r["run_id"]]["run_dir"] for r in GROUPS[wildcards.group]]


def all_outputs():
    outputs = [f"{RESULTS}/runs.csv", f"{RESULTS}/selected.csv", f"{RESULTS}/tables", f"{RESULTS}/figures"]
    outputs += label_issue_files("label_issues.csv")
    if config["readme_figures"]:
        outputs += expand("docs/img/{name}", name=README_FIGURES)
    return outputs
