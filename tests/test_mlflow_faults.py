"""MLflow failures must never cost training: 8 jobs racing on SQLite, lost answers, a server that never answers (a
server that dies mid-pipeline: tests/test_hostile_paths.py, whose pipeline it kills).

(a) 8 ``python -m limit train`` processes start at the same instant against a fresh SQLite store created by
    ``python -m limit mlflow-init``: none fails, all 8 runs land in the right experiment.
(b) The server created a run but its answer was lost: the next sync finds that run instead of adding a duplicate.
(c) A server accepts connections and never answers: a job is delayed by a bounded time, then syncs once.
"""
import json
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from limit.tracking.server import free_port, start_server, stop_server

from mlflow_helpers import HungServer, PassThroughClient
from pipeline_helpers import pipeline_env, snakemake_command

pytestmark = pytest.mark.pipeline  # Snakemake or the command line in subprocesses

WARNING = "MLflow tracking to"


def test_eight_jobs_starting_together_on_a_fresh_sqlite_store(fmnist_dir, make_labels, tmp_path):
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    env = pipeline_env(OMP_NUM_THREADS="1")
    init = subprocess.run([sys.executable, "-m", "limit", "mlflow-init", "--tracking-uri", uri,
                           "--groups", "main/fashion_mnist/uniform-0.5/n256/ce"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    labels = make_labels(n=256, val_size=256)
    jobs = []
    for i in range(8):
        out = tmp_path / f"runs/seed{i}"
        cmd = [sys.executable, "-m", "limit", "train", "--dataset", "fashion_mnist", "--data-dir", str(fmnist_dir),
               "--labels", str(labels), "--method", "ce", "--epochs", "1", "--batch-size", "128", "--seed", str(i),
               "--device", "cpu", "--no-test-curve", "--out", str(out), "--tracking-uri", uri,
               "--experiment", "main"]
        jobs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))
    outputs = []
    try:
        for job in jobs:
            outputs.append(job.communicate(timeout=300)[0])
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.wait(30)
    for job, output in zip(jobs, outputs):
        assert job.returncode == 0, output
        assert WARNING not in output and "database is locked" not in output, output

    client = MlflowClient(uri)
    main_id = client.get_experiment_by_name("main").experiment_id
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    parents = [r for r in everything if "limit.group" in r.data.tags]
    everything = [r for r in everything if r not in parents]
    assert len(everything) == 8 and len(parents) == 1  # one selection group: one parent, created once
    assert {r.info.experiment_id for r in everything + parents} == {main_id}  # none in Default
    assert sorted(r.info.run_name for r in everything) == [f"fashion_mnist/uniform-0.5/n256/seed{i}/ce/default"
                                                           for i in range(8)]
    for run in everything:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [0]
        assert f"/seed{run.data.tags['seed']}/" in run.info.run_name
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id


def test_a_lost_answer_to_create_run_creates_no_duplicate(tmp_path, monkeypatch):
    """The server created the run but the job never heard back (server died, timeout): the sync finds that run."""
    from mlflow.exceptions import MlflowException

    from limit.tracking import client as tracking
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({
        "method": "ce", "dataset": "fashion_mnist", "arch": "cnn", "seed": 42, "clean_validation": False,
        "hparams": {"lr": 0.001}, "run": {"experiment": "main", "variant": "ce", "hparams": [], "noise": "uniform",
                                          "rate": 0.5, "n": "256"}}))
    real_client = tracking._client

    class LosesCreateAnswer(PassThroughClient):
        def create_run(self, *args, **kwargs):
            self.client.create_run(*args, **kwargs)
            raise MlflowException("connection reset while reading the answer")

    monkeypatch.setattr(tracking, "_client", lambda u: LosesCreateAnswer(real_client(u)))
    with pytest.raises(MlflowException):
        tracking.sync_run(run_dir, uri)
    monkeypatch.setattr(tracking, "_client", real_client)
    tracking.sync_run(run_dir, uri)
    client = MlflowClient(uri)
    runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if "limit.group" not in r.data.tags]  # not the parent run of its selection group
    assert len(runs) == 1 and runs[0].info.run_name == "fashion_mnist/uniform-0.5/n256/seed42/ce/default"
    assert runs[0].data.tags["variant"] == "ce"
    assert client.get_experiment(runs[0].info.experiment_id).name == "main"
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == runs[0].info.run_id


def test_a_server_that_never_answers_delays_a_job_by_a_bounded_time(fmnist_dir, make_labels, tmp_path):
    """Each MLflow call waits MLFLOW_HTTP_REQUEST_TIMEOUT x (retries + 1). The training loop waits for none: the
    job's background sender tries once per live interval (30 s); at its end the job waits for at most the round
    in flight and its final sync, then finishes with one warning.
    A password in the URI (from the environment only) appears nowhere: not in output, not in the run directory."""
    port, timeout_s = free_port(), 3
    uri = f"http://me:hunter2@127.0.0.1:{port}"
    env = pipeline_env(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s),
                       MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", OMP_NUM_THREADS="1")
    run_dir = tmp_path / "run"
    train = [sys.executable, "-m", "limit", "train", "--dataset", "fashion_mnist", "--data-dir", str(fmnist_dir),
             "--labels", str(make_labels(n=256, val_size=256)), "--method", "ce", "--epochs", "2", "--batch-size",
             "128", "--device", "cpu", "--out", str(run_dir), "--experiment", "main"]
    hung = HungServer(port)
    began = time.monotonic()
    try:
        done = subprocess.run(train, env=env, capture_output=True, text=True, timeout=300)
    finally:
        hung.close()
    elapsed = time.monotonic() - began
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert (run_dir / "metrics.json").exists() and (run_dir / "history.csv").exists()
    assert output.count(WARNING) == 1 and "me:***@127.0.0.1" in output, output[-3000:]
    assert 1 <= len(hung.connections) <= 2 + elapsed / 30  # a round per interval, the final sync; no retries
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and b"hunter2" in p.read_bytes()]
    assert "hunter2" not in output and not leaked, leaked

    # the server comes back (a real one, same URL): the sync adds the run once, a second sync adds nothing
    server, _ = start_server(tmp_path / "mlflow.db", tmp_path / "mlartifacts", port=port, log=tmp_path / "server.log")
    try:
        sync = [sys.executable, "-m", "limit", "mlflow-sync", str(run_dir)]
        first = subprocess.run(sync, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0 and "2 epochs added" in first.stdout, first.stderr[-3000:]
        second = subprocess.run(sync, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0 and "0 epochs added" in second.stdout, second.stderr[-3000:]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                if "limit.group" not in r.data.tags]  # not the parent run of its selection group
        assert [r.info.run_name for r in runs] == ["fashion_mnist/uniform-0.5/n256/seed42/ce/default"]
        assert runs[0].info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_acc")] == [0, 1]
        assert json.loads((run_dir / "mlflow.json").read_text())["tracking_uri"] == f"http://me:***@127.0.0.1:{port}"
    finally:
        stop_server(server)
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and b"hunter2" in p.read_bytes()]
    assert not leaked and "hunter2" not in first.stdout + first.stderr + second.stdout + second.stderr


def test_a_command_that_trains_nothing_creates_no_experiment_and_no_run(fmnist_dir, tmp_path):
    """The documented data step (a .ready target) with tracking on: the store has no experiment and no run."""
    from limit.tracking.server import sqlite_experiments
    store = tmp_path / "mlflow.db"
    command = snakemake_command(tmp_path, fmnist_dir, 1, seeds=[1])
    command[command.index("results/runs.csv")] = "results/data/fashion_mnist.ready"
    done = subprocess.run(command, cwd=tmp_path, env=pipeline_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results/data/fashion_mnist.ready").exists()
    assert sqlite_experiments(f"sqlite:///{store}") == []  # (an empty store has MLflow's own empty Default)
