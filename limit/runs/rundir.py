"""A run directory: its file names and columns, the one atomic writer, checkpoints, and its row of the run table.

``RUN_DIR/config.json`` holds the resolved config of the latest invocation, including ``run``: the run's place
in the grid (experiment block, variant, the hyperparameters the grid set, and the data setting read from the
labels file). Everything else that names a run (its id, its MLflow name and tags, its run-table row) is
derived from those fields here. Torch-free (numpy is imported only to write its files): the workflow reads it.
Checkpoints (``state.pt``, ``best.pt``) are written and read by ``limit.runtime``.

The one module that names things shared across layers: the files of a run and of a results directory, the columns
of ``history.csv`` and the keys of ``metrics.json`` (which the run table, MLflow, selection, tables, figures and
cost read). It lives here because every layer may import it: it is torch-free and imports only the registry, so
the workflow, the config, the core, report, tracking, tools and ``scripts/gpu-check`` all can.
"""
import json
import os
from pathlib import Path

from limit.registry import HPARAMS, dataset_name, named_dataset

# A results directory (the config's ``results:``)
RUNS_DIR = "runs"  # RUNS_DIR/<run id> is a run's directory
MLFLOW_STORE = "mlflow.db"  # the local MLflow store (SQLite), unless a tracking URI names another
MLFLOW_ARTIFACTS = "mlartifacts"  # its artifacts, beside it
RUN_TABLE = "runs.csv"  # every run of the config, one row each (limit aggregate)
CONFIGURATION_TABLE = "selected.csv"  # every configuration, over its seeds

# A run directory
CONFIG = "config.json"
JOB = "job.json"
STATE = "state.pt"  # the full training state after the last checkpointed epoch
STATE_PREV = "state.prev.pt"  # the one before: the fallback if a crash ever tears state.pt
HISTORY = "history.csv"
TEST_OUTPUTS = "test_outputs.npz"
BEST = "best.pt"
TRAIN_SCORES = "train_scores.npz"  # LIMIT runs only
EPOCH_SCORES = "epoch_scores.npz"  # per-example loss and margin averaged over the epochs up to the selected one
METRICS = "metrics.json"  # written last: a run directory with it is complete
MLFLOW = "mlflow.json"  # the run's MLflow run, store, name and tags (limit.tracking.client)
RUN_FILES = (CONFIG, JOB, STATE, STATE_PREV, HISTORY, TEST_OUTPUTS, BEST, TRAIN_SCORES, EPOCH_SCORES, METRICS, MLFLOW)

# history.csv's columns: one row per epoch, also MLflow's metrics of each step
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"  # the method's loss, mean over batches (LIMIT's and Soft reg.'s: the cross-entropy)
TRAIN_ACC = "train_acc"  # on the noisy labels
TRAIN_ACC_TRUE = "train_acc_true"  # on the true labels
TRAIN_ACC_CORRUPTED = "train_acc_corrupted"  # memorised: corrupted examples predicted as their noisy label
VAL_ACC = "val_acc"
TEST_ACC = "test_acc"  # the test curve (NaN where not measured); in metrics.json, of the best-validation epoch
Q_LOSS = "q_loss"  # LIMIT: q's loss at predicting the cross-entropy gradient
MU_SQ_NORM = "mu_sq_norm"  # LIMIT: ||mu||^2, the predicted gradient's squared norm (beta's term)
SOFT_LABEL_TERM = "soft_label_term"  # Soft reg. (Eq. 11): ||z||^2 ||y - s(r)||^2, lamb's term
SOFT_GRAD_TERM = "soft_grad_term"  # Soft reg. (Eq. 11): ||z||^2 ||s(a) - s(r)||^2, beta's term
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_SECOND = "images_per_second"
LOSS_TERMS = (Q_LOSS, MU_SQ_NORM, SOFT_LABEL_TERM, SOFT_GRAD_TERM)  # a method's own terms; empty for the others
HISTORY_COLUMNS = (EPOCH, TRAIN_LOSS, TRAIN_ACC, TRAIN_ACC_TRUE, TRAIN_ACC_CORRUPTED, VAL_ACC, TEST_ACC, Q_LOSS,
                   MU_SQ_NORM, SOFT_LABEL_TERM, SOFT_GRAD_TERM, EPOCH_SECONDS, IMAGES_PER_SECOND)
# metrics.json's keys besides TEST_ACC: a run's row of the run table
BEST_EPOCH = "best_epoch"
BEST_VAL_ACC = "best_val_acc"
TEST_EXAMPLES = "test_examples"
EPOCHS_RUN = "epochs_run"
WALL_SECONDS = "wall_seconds"  # the sum of EPOCH_SECONDS: the one column that differs between equal runs
TEST_UNREADABLE = "test_unreadable"  # streamed datasets (Clothing1M): test images that cannot be decoded
UNREADABLE_IMAGES = "unreadable_images"  # ... and in all three splits
# Columns the run table adds (limit aggregate): in a selected configuration; a run of Figure 1's blocks
SELECTED = "selected"
FIGURE1 = "figure1"
# A configuration's columns (selected.csv; MLflow's parent runs): over its seeds, mean and std (ddof 1)
TEST_ACC_MEAN, TEST_ACC_STD = "test_acc_mean", "test_acc_std"
BEST_VAL_ACC_MEAN, BEST_VAL_ACC_STD = "best_val_acc_mean", "best_val_acc_std"
SEEDS = "seeds"  # how many


def write_atomic(path, write):
    """Write ``path`` through ``write(binary_file)``: readers see the old file or the whole new one, also
    after a crash or a power cut (the file and then its directory entry are synced to disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory):
    """Put a directory's entries (a rename into it) on disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path, text):
    write_atomic(path, lambda f: f.write(text.encode()))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, default=str))


def save_npz(path, **arrays):
    import numpy as np
    write_atomic(path, lambda f: np.savez(f, **arrays))


def read_json(path):
    return json.loads(Path(path).read_text())


def read_mlflow(run_dir):
    path = Path(run_dir) / MLFLOW
    return read_json(path) if path.exists() else {}


def write_mlflow(run_dir, info):
    write_json(Path(run_dir) / MLFLOW, info)


def fmt(value):
    """Path-safe, short number formatting: 0.5, 1e-05, 10."""
    return f"{value:g}"


def hparams_label(hparams):
    """The label of the hyperparameters a grid set (``beta10_lr0.001``, or ``default``): a run id's last part, and
    the run table's ``hparams`` column. (``hparams`` alone is a dict of values; ``grid_hparams``, the names a grid
    set.)"""
    return "_".join(f"{k}{fmt(v)}" for k, v in sorted(hparams.items())) or "default"


def setting_text(dataset, noise, rate, n, seed=None, style="path", show=("dataset", "noise", "rate", "n")):
    """A data setting (and seed) as text, in the one style each use needs; real noise (Clothing1M) has no rate.

    - ``path``: fashion_mnist/uniform-0.5/n1000/seed42 (run ids, labels files; path-safe);
    - ``name``: fashion_mnist_uniform-0.5_n1000 (file names);
    - ``title``: Fashion-MNIST, 50% uniform noise, n = 1000 (figure and table titles);
    - ``column``: the parts in ``show``, as the paper's table columns: Fashion-MNIST uniform p=0.5 n=1e3.
    """
    real = noise == "real"
    if style in ("path", "name"):
        parts = [dataset, noise if real else f"{noise}-{fmt(rate)}", f"n{n}"]
        parts += [] if seed is None else [f"seed{seed}"]
        return ("/" if style == "path" else "_").join(parts)
    label = named_dataset(dataset).label
    if style == "title":
        noise_text = "real label noise" if real else f"{rate:.0%} {noise} noise"
        size = "all training samples" if str(n) == "all" else f"n = {n}"
        return ", ".join([label, noise_text, size] + ([] if seed is None else [f"seed {seed}"]))
    if style != "column":
        raise ValueError(f"unknown setting style {style!r}")
    sizes = {"1000": "1e3", "10000": "1e4", "all": "All"}  # the paper's column headers
    parts = [label if "dataset" in show else None, noise if "noise" in show and not real else None,
             None if real or "rate" not in show else f"p={rate:g}" + ("" if "." in f"{rate:g}" else ".0"),
             f"n={sizes.get(str(n), str(n))}" if "n" in show else None]
    parts = [p for p in parts if p]
    return " ".join(parts) if "dataset" in show else ", ".join(parts)


def group_key(experiment, dataset, noise, rate, n, variant):
    """The unit of selection (and an MLflow parent run): experiment/dataset/noise-rate/nN/variant."""
    return f"{experiment}/{setting_text(dataset, noise, rate, n)}/{variant}"


def run_name(row):
    """A run's name within its experiment (its MLflow run name): setting/seed/variant/hyperparameters."""
    setting = setting_text(row["dataset"], row["noise"], row["rate"], row["n"], row["seed"])
    return f"{setting}/{row['variant']}/{row['hparams']}"


def run_id(row):
    return f"{row['experiment']}/{run_name(row)}"


def _run_section(config):
    """config.json's ``run`` section. A run directory of a version before it (2026-11) has the same facts as the
    MLflow tags of its ``tracking`` section: they are read from there, so its results stay usable."""
    if "run" in config:
        return config["run"]
    tags = config.get("tracking", {}).get("tags", {})
    if not {"experiment", "variant", "noise", "rate", "n"} <= set(tags):
        raise ValueError("config.json has neither a run section nor the grid tags of an earlier version")
    return {"experiment": tags["experiment"], "variant": tags["variant"], "noise": tags["noise"],
            "rate": float(tags["rate"]), "n": tags["n"], "hparams": [k for k in HPARAMS if k in tags]}


def identity(config):
    """The run's identifying columns and its hyperparameter columns (None where the grid set none)."""
    run = _run_section(config)
    grid_hparams = run["hparams"]  # the names the grid set (config.json keeps them under run.hparams)
    given = {k: config["hparams"][k] for k in grid_hparams}
    return {"experiment": run["experiment"], "dataset": dataset_name(config["dataset"]), "noise": run["noise"],
            "rate": run["rate"], "n": run["n"], "seed": config["seed"], "variant": run["variant"],
            "method": config["method"], "hparams": hparams_label(given), "arch": config["arch"],
            "clean_validation": config["clean_validation"], **{k: given.get(k) for k in HPARAMS}}


def run_tags(config):
    """MLflow tags of a run: its identifying and hyperparameter columns, as strings."""
    return {k: fmt(v) if isinstance(v, float) else str(v) for k, v in identity(config).items() if v is not None}


def read_run(run_dir):
    """The run-table row of a finished run directory: run id, identity, metrics, hyperparameter columns."""
    run_dir = Path(run_dir)
    row = identity(read_json(run_dir / CONFIG))
    hparams = {k: row.pop(k) for k in HPARAMS}
    return {"run_id": run_id(row), **row, "run_dir": str(run_dir), **read_json(run_dir / METRICS), **hparams}
