"""The paper grid rehearsed as docs/cluster.md gives it, on the local Slurm cluster (system tier).

Stand-in data for every dataset of config/paper.yaml, in its real on-disk layout at the location the docs give
(MNIST's IDX files, CIFAR-10/100's pickles, a Clothing1M release tree with one truncated JPEG in each split);
``snakemake --profile slurm --configfile config/paper.yaml config/rehearsal.yaml`` from the repository root, with
tests/data/rehearsal-ci.yaml for what this 2-core machine without a GPU cannot give; every training job a Slurm
job that tracks to an MLflow server on PostgreSQL. Checked: every job ran, with its config's resources; every run
is in MLflow once, with every epoch, its tags, selection and files, and its rows are in PostgreSQL; every paper
table and figure is rendered with a number in each cell the grid fills; the unreadable images are counted;
nothing wrote SQLite.
"""
import csv
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from limit.datasets.clothing1m import write_synthetic_release
from limit.report.tables import setting_key
from limit.runs import rundir
from limit.runs.grid import expand_runs, pack_runs
from limit.runs.plan import merged_config
from limit.tools.tracking_bench import EPOCH_METRICS
from limit.tracking.server import start_server, stop_server

from mlflow_helpers import psycopg2_driver
from pipeline_helpers import jobcomp, pipeline_env
from standin_data import standin_env, write_cifar, write_mnist_idx

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["config/paper.yaml", "config/rehearsal.yaml", "tests/data/rehearsal-ci.yaml"]
PAPER_TABLES = ["table1", "table2", "table4", "table5", "table6", "table7"]
FIGURES = ["figure1_memorisation", "figure2_fano", "figure3_curves", "figureA0_beta_", "figureA1A2_histograms_",
           "figure4_top_examples_"]


def write_standin_data(data_dir):
    """Every dataset of the paper grid where docs/cluster.md puts it; returns Clothing1M's unreadable images."""
    write_mnist_idx(data_dir, 1300, 200)  # n = 1000 of the 80% training split
    write_cifar(data_dir, "cifar10", 300, 100)
    write_cifar(data_dir, "cifar100", 300, 100)
    _, unreadable = write_synthetic_release(data_dir / "clothing1m", per_class=2, eval_per_class=1,
                                            unreadable_per_split=1)
    return unreadable


def rehearsal_command(workdir, data_dir):
    # as docs/cluster.md gives it, from the repository root; the local cluster has no accounting (squeue) and its
    # GPU-less node runs at most 8 jobs at once on this machine's 2 cores (alone there: 311 s, 572 CPU seconds)
    return ["timeout", "--foreground", "-s", "INT", "-k", "30", "3000", "snakemake", "--profile", "slurm",
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1", "--jobs", "8",
            "--keep-going",
            "--directory", str(workdir), "--configfile", *CONFIGS,
            "--config", "slurm_partition=debug", f"data_dir={data_dir}"]


def cell_key(variant, dataset, noise, rate, n):
    return variant, setting_key(dataset, noise, float(rate) if rate else None, n)


def filled_cells(table_csv, run_cells):
    """The cells of a rendered table that the grid fills: [(row, column, our mean)]."""
    with open(table_csv, newline="") as f:
        cells = list(csv.DictReader(f))
    return [(c["row"], c["column"], float(c["ours_mean"]) if c["ours_mean"] else math.nan) for c in cells
            if cell_key(c["row"], c["dataset"], c["noise"], c["rate"], c["n"]) in run_cells]


def check_tracked(client, results, runs, artifacts, postgres):
    """Every run in MLflow once, finished, under its group's parent, with its tags, selection, per-epoch history,
    final test accuracy and files; the artifacts in the server's directory, the rows in PostgreSQL."""
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
    tracked = {r.info.run_id: r for r in everything if "limit.group" not in r.data.tags}
    parents = {r.info.run_id for r in everything if "limit.group" in r.data.tags}
    with open(results / "runs.csv", newline="") as f:
        table = {r["run_dir"]: r for r in csv.DictReader(f)}
    run_dirs = sorted(p.parent for p in (results / "runs").rglob(rundir.METRICS))
    assert len(tracked) == len(run_dirs) == runs == len(table)
    epochs = 0
    for run_dir in run_dirs:
        run = tracked[rundir.read_json(run_dir / rundir.MLFLOW)["run_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] in parents
        tags = rundir.run_tags(rundir.read_json(run_dir / rundir.CONFIG))
        assert {k: run.data.tags.get(k) for k in tags} == tags
        assert run.data.tags["selected"] == table[str(run_dir.relative_to(results.parent))]["selected"].lower()
        with open(run_dir / rundir.HISTORY, newline="") as f:
            history = list(csv.DictReader(f))
        epochs += len(history)
        for key in set(history[0]) & set(EPOCH_METRICS):
            logged = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            values = [(int(r[rundir.EPOCH]), float(r[key])) for r in history if r[key]]
            assert [(m.step, m.value) for m in logged] == [(e, pytest.approx(v)) for e, v in values
                                                           if not math.isnan(v)], (run_dir, key)  # NaN: not sent
        assert run.data.metrics["final_test_acc"] == pytest.approx(
            rundir.read_json(run_dir / rundir.METRICS)[rundir.TEST_ACC])
        assert {rundir.HISTORY, rundir.METRICS, rundir.TEST_OUTPUTS, rundir.CONFIG} <= {
            a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(list(artifacts.rglob(rundir.HISTORY))) == runs  # through the server, into its directory
    db = psycopg2_driver().connect(postgres)
    try:
        cur = db.cursor()
        cur.execute("SELECT COUNT(*) FROM runs WHERE lifecycle_stage = 'active'")
        assert cur.fetchone()[0] == runs + len(parents)
        # jobs of a group that start together may each create its parent: all but one are deleted
        cur.execute("SELECT COUNT(*) FROM runs r WHERE lifecycle_stage = 'deleted' AND NOT EXISTS "
                    "(SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'limit.group')")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT COUNT(*) FROM metrics WHERE key = 'val_acc'")
        assert cur.fetchone()[0] == epochs  # each epoch once
    finally:
        db.close()


def test_the_rehearsal_keeps_every_kind_of_job_of_the_paper_grid():
    """config/rehearsal.yaml over config/paper.yaml: every block, dataset, noise model and method variant, the same
    CE runs to start from, each dataset's resources, partition, device and tracking as the paper's; one epoch."""
    paper = expand_runs(merged_config([REPO / "config/paper.yaml"], ["slurm_partition=gpu"]))
    rehearsal = expand_runs(merged_config([REPO / "config/paper.yaml", REPO / "config/rehearsal.yaml"],
                                          ["slurm_partition=gpu"]))
    kinds = {(r["experiment"], r["dataset"], r["noise"], r["variant"], r["method"]) for r in paper}
    assert {(r["experiment"], r["dataset"], r["noise"], r["variant"], r["method"]) for r in rehearsal} == kinds
    depends = {r["run_id"]: r["init_from"] for r in rehearsal}
    assert all((depends[r["run_id"]] is not None) == (r["method"] in ("fw", "dmi") or "init" in r["variant"])
               for r in rehearsal)
    job = ("threads", "mem_mb", "gpus", "device", "slurm_partition", "precision", "pack", "arch", "num_workers",
           "log_checkpoints", "bn_init", "batch_size", "decode")
    settings = {(r["experiment"], r["dataset"]): {k: r[k] for k in job} for r in paper}
    assert all({k: r[k] for k in job} == settings[r["experiment"], r["dataset"]] for r in rehearsal)
    assert {r["epochs"] for r in rehearsal} == {1} and len(rehearsal) == 78
    assert max(len(m) for m in pack_runs(rehearsal).values()) == 16
    assert {r["seed"] for r in rehearsal if r["experiment"] == "mnist"} == {42, 43}


@pytest.mark.system
@pytest.mark.slurm
def test_the_paper_grid_rehearsed_on_slurm_with_postgres_tracking(slurm_cluster, postgres, tmp_path):
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    unreadable = write_standin_data(data_dir)
    config = merged_config([REPO / c for c in CONFIGS], ["slurm_partition=debug", f"data_dir={data_dir}"])
    rows = expand_runs(config)
    packs = pack_runs(rows)
    jobs = len(rows) - sum(len(m) for m in packs.values()) + len(packs)
    assert max(len(m) for m in packs.values()) == 16  # a full pack

    artifacts = tmp_path / "mlartifacts"
    server, url = start_server(postgres, artifacts, log=tmp_path / "server.log", timeout=180)
    try:
        env = standin_env(data_dir, pipeline_env(MLFLOW_TRACKING_URI=url))
        for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            env.pop(key, None)  # the project's defaults (3 retries, backoff 1, 30 s), as on a cluster
        start = time.monotonic()
        done = subprocess.run(rehearsal_command(workdir, data_dir), cwd=REPO, capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL)
        wall = time.monotonic() - start
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-8000:]
        results = workdir / config["results"]
        check_tracked(MlflowClient(url), results, len(rows), artifacts, postgres)
    finally:
        stop_server(server)

    # every job ran, each training job as its own Slurm job
    assert re.search(r"(\d+) of \1 steps \(100%\) done", output), output[-3000:]
    slurm_jobs = {}
    for row in rows:
        run_dir = results / "runs" / row["run_id"]
        assert (run_dir / "metrics.json").exists(), row["run_id"]
        slurm_jobs.setdefault(json.loads((run_dir / "job.json").read_text())["slurm_job_id"], []).append(row)
    assert None not in slurm_jobs and len(slurm_jobs) == jobs == output.count("submitted with SLURM jobid")
    assert sorted(len(m) for m in slurm_jobs.values() if len(m) > 1) == sorted(len(m) for m in packs.values())
    finished = jobcomp(slurm_cluster, wait_for=slurm_jobs)
    for job_id, members in slurm_jobs.items():
        record = finished[job_id]
        # the config's resources: a pack in one process (the CI's, on a CPU) one run's CPUs and memory
        assert all(r["pack_in_process"] for r in members) or len(members) == 1
        assert record["JobState"] == "COMPLETED" and record["Partition"] == "debug", record
        assert f"cpu={members[0]['threads']}," in record["Tres"], record
        assert f"mem={members[0]['mem_mb']}M" in record["Tres"], record

    # no SQLite anywhere (every run went to the server: check_tracked)
    assert not [p for p in (*workdir.rglob("*.db"), *REPO.glob("*.db"), *data_dir.rglob("*.db"))]

    # Clothing1M: one unreadable JPEG in each split, counted by every run
    for row in rows:
        if row["dataset"] == "clothing1m":
            metrics = json.loads((results / "runs" / row["run_id"] / "metrics.json").read_text())
            assert metrics["unreadable_images"] == sum(len(v) for v in unreadable.values()), metrics

    # every paper table, with a number in each cell the grid fills; every figure
    with open(results / "runs.csv", newline="") as f:
        run_cells = {cell_key(r["variant"], r["dataset"], r["noise"], r["rate"], r["n"]) for r in csv.DictReader(f)}
    tables = sorted(p.name for p in (results / "tables").glob("*.md"))
    for table in PAPER_TABLES:
        cells = filled_cells(results / "tables" / f"{table}.csv", run_cells)
        assert cells and all(not math.isnan(mean) for _, _, mean in cells), (table, cells)
    assert "table3_architecture.md" in tables and "detection_auc.md" in tables
    figures = sorted(p.name for p in (results / "figures").glob("*.png"))
    for prefix in FIGURES:
        assert any(name.startswith(prefix) for name in figures), (prefix, figures)
    print(f"\nrehearsal: {wall:.0f} s, {len(rows)} runs in {jobs} Slurm jobs "
          f"({output.count('Finished jobid')} Snakemake jobs); tables: {', '.join(tables)}; "
          f"figures: {', '.join(figures)}", file=sys.stderr)
