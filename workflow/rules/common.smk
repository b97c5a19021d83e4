import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))  # the package is importable without installing it
# torch-free modules only: parsing the workflow must not import the scientific stack
from limit.grid import ConfigError, expand_runs, selection_groups, train_arguments  # noqa: E402
from limit.rundir import setting_path  # noqa: E402

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
EXPERIMENTS = list(config["experiments"])
FIGURE1_EXPERIMENTS = [name for name, exp in config["experiments"].items() if exp.get("figure1")]
# MLFLOW_TRACKING_URI, when set, reaches every job through the environment.
TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or config["mlflow"]["tracking_uri"]
TRACKING = config["mlflow"]["enabled"]

# The files of the workflow, by wildcard.
DATA_READY = f"{RESULTS}/data/{{dataset}}.ready"
LABELS = f"{RESULTS}/labels/{{setting}}.npz"
RUN_DIR = f"{RESULTS}/runs/{{run}}"
SELECTION = f"{RESULTS}/selected/{{group}}.json"
EXPERIMENTS_FILE = f"{RESULTS}/mlflow/experiments.json"
# Figures the README shows, copied from the figures directory.
README_FIGURES = ("figure1_memorisation.png", "figure2_fano.png", "figure3_curves.png")


def labels_file(row):
    return LABELS.format(setting=setting_path(row["dataset"], row["noise"], row["rate"], row["n"], row["seed"]))


def tracking_arguments():
    if not TRACKING:
        return ["--no-tracking"]
    uri = [] if "MLFLOW_TRACKING_URI" in os.environ else ["--tracking-uri", TRACKING_URI]
    return [*uri, "--experiments-file", EXPERIMENTS_FILE]


def train_inputs(wildcards):
    row = RUNS[wildcards.run]
    inputs = {"labels": labels_file(row)}
    if TRACKING:
        # ancient: recreating the store must not retrain everything
        inputs["experiments"] = ancient(EXPERIMENTS_FILE)
    if row["init_from"]:
        inputs["ce_model"] = os.path.join(RUN_DIR.format(run=row["init_from"]), "best.pt")
    return inputs


def run_resource(key, scale_with_attempt=False):
    def get(wildcards, attempt):
        value = RUNS[wildcards.run][key]
        return value * attempt if scale_with_attempt else value

    return get


def group_metrics(wildcards):
    return [os.path.join(RUN_DIR.format(run=r["run_id"]), "metrics.json") for r in GROUPS[wildcards.group]]


def all_outputs():
    outputs = [f"{RESULTS}/runs.csv", f"{RESULTS}/selected.csv", f"{RESULTS}/tables", f"{RESULTS}/figures"]
    if config["readme_figures"]:
        outputs += expand("docs/img/{name}", name=README_FIGURES)
    return outputs
