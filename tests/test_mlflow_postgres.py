"""The cluster setup, on one machine: an MLflow server backed by PostgreSQL, 4 jobs logging to it at once.

A throwaway PostgreSQL database (``mlflow_helpers.postgres``) is served by
``mlflow server --backend-store-uri postgresql://... --artifacts-destination DIR``; the tiny test
pipeline runs with ``--cores 4`` and ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`` (and the project's HTTP retry
defaults). Every run must be in MLflow, and in the database, with its full per-epoch metric history.
"""
import csv
import json
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from limit.runs.rundir import run_tags
from limit.tracking.server import start_server, stop_server

from mlflow_helpers import postgres, psycopg2_driver  # noqa: F401 (postgres: the fixture)
from pipeline_helpers import pipeline_env, snakemake_command

pytestmark = pytest.mark.system

PER_EPOCH = ("train_loss", "train_acc", "train_acc_true", "train_acc_corrupted", "val_acc", "test_acc")


def test_four_parallel_jobs_log_everything_to_a_postgres_backed_server(postgres, fmnist_dir, tmp_path):
    psycopg2 = psycopg2_driver()
    shared = tmp_path / "shared-mlartifacts"
    server, url = start_server(postgres, shared, log=tmp_path / "server.log", timeout=180)
    try:
        work = tmp_path / "pipeline"
        work.mkdir()
        env = pipeline_env(MLFLOW_TRACKING_URI=url)
        for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            env.pop(key, None)  # the project's defaults (3 retries, backoff 1, 30 s), as on a cluster
        t0 = time.monotonic()
        done = subprocess.run(snakemake_command(work, fmnist_dir, 4), cwd=work, env=env, capture_output=True,
                              text=True, timeout=500)
        print(f"pipeline with 4 jobs against the PostgreSQL-backed server: {time.monotonic() - t0:.0f} s")
        assert done.returncode == 0, done.stderr[-5000:]
        results = work / "results"

        run_dirs = sorted(p.parent for p in (results / "runs").rglob("metrics.json"))
        assert len(run_dirs) == 10
        for log in (results / "logs/train").rglob("*.log"):
            assert "MLflow tracking" not in log.read_text(), log  # no job lost its connection
        table = {r["run_dir"]: r for r in csv.DictReader(open(results / "runs.csv"))}

        client = MlflowClient(url)
        main_id = client.get_experiment_by_name("main").experiment_id
        everything = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
        runs = {r.info.run_name: r for r in everything if "limit.group" not in r.data.tags}
        parents = {r.info.run_id for r in everything if "limit.group" in r.data.tags}
        assert len(runs) == 10 and len(everything) == 10 + len(parents) == 10 + 4  # no duplicates, nothing elsewhere
        epochs_total = 0
        for run_dir in run_dirs:
            name = str(run_dir.relative_to(results / "runs/main"))
            run = runs[name]
            assert run.info.experiment_id == main_id and run.info.status == "FINISHED"
            assert run.info.run_id == json.loads((run_dir / "mlflow.json").read_text())["run_id"]
            tags = run_tags(json.loads((run_dir / "config.json").read_text()))
            assert {k: run.data.tags.get(k) for k in tags} == tags
            assert run.data.tags["selected"] == table[str(run_dir.relative_to(work))]["selected"].lower()
            assert run.data.tags["mlflow.parentRunId"] in parents
            history = list(csv.DictReader(open(run_dir / "history.csv")))
            epochs_total += len(history)
            for key in PER_EPOCH:
                logged = client.get_metric_history(run.info.run_id, key)
                assert sorted(m.step for m in logged) == [int(r["epoch"]) for r in history], (name, key)
                assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(
                    [float(r[key]) for r in history])
            metrics = json.loads((run_dir / "metrics.json").read_text())
            assert run.data.metrics["final_test_acc"] == pytest.approx(metrics["test_acc"])
            assert {"history.csv", "metrics.json", "test_outputs.npz", "config.json"} <= {
                a.path for a in client.list_artifacts(run.info.run_id)}
        # artifacts went through the server into the shared directory; rows really are in PostgreSQL
        assert len(list(shared.rglob("history.csv"))) == 10
        db = psycopg2.connect(postgres)
        try:
            cur = db.cursor()
            cur.execute("SELECT COUNT(*) FROM runs WHERE lifecycle_stage = 'active'")
            assert cur.fetchone()[0] == 10 + 4  # and the parent of each group
            # jobs of a group that start together may each create its parent: all but one are deleted
            cur.execute("SELECT COUNT(*) FROM runs r WHERE lifecycle_stage = 'deleted' AND NOT EXISTS "
                        "(SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'limit.group')")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT COUNT(*) FROM metrics WHERE key = 'val_acc'")
            assert cur.fetchone()[0] == epochs_total  # each epoch once
        finally:
            db.close()
    finally:
        stop_server(server)
