"""Config strings never reach the shell unquoted, a tracking password never reaches a file or a log, and a tracking
server that dies mid-pipeline costs no result.

The tiny pipeline (one epoch, one seed: five runs) runs with a ``data_dir`` and a ``results`` that hold a space, a
quote and a ``; touch`` payload, against a real MLflow server whose URI (with a password) is given only in the
environment. The server is killed (SIGKILL: a crash) once the first two training jobs have finished: the pipeline
still finishes, every run directory and the run table are complete, each affected job warns once; after a restart
``python -m limit mlflow-sync`` puts in what is missing, and a second sync adds nothing (no duplicate runs, epochs,
params, tags or artifacts).
"""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_mlflow_faults import WARNING

from limit.runs.rundir import run_tags
from limit.tracking.server import free_port, start_server, stop_server

from pipeline_helpers import pipeline_env

pytestmark = pytest.mark.pipeline  # Snakemake or the command line in subprocesses

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = "da ta'; touch pwned-data"
RESULTS = 'res ults"; touch pwned-results'
PASSWORD = "hunter2-s3cret"
PER_EPOCH = ("train_loss", "train_acc", "val_acc", "test_acc")
ARTIFACTS = {"history.csv", "metrics.json", "test_outputs.npz", "config.json"}


def store_snapshot(client):
    """Everything of every run in the store, to compare before and after a sync."""
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)

    def history(run_id, key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return {r.info.run_id: {"name": r.info.run_name, "experiment": r.info.experiment_id, "status": r.info.status,
                            "params": dict(r.data.params), "tags": dict(r.data.tags),
                            "history": {k: history(r.info.run_id, k) for k in r.data.metrics},
                            "artifacts": sorted(a.path for a in client.list_artifacts(r.info.run_id))}
            for r in runs}


@pytest.fixture(scope="module")
def hostile_run(fmnist_dir, tmp_path_factory):
    """The pipeline, the server killed under it, then restarted and synced twice: what each step left."""
    work, logs = tmp_path_factory.mktemp("hostile"), tmp_path_factory.mktemp("hostile-logs")
    os.symlink(fmnist_dir, work / DATA_DIR)
    config = work / "hostile.yaml"
    config.write_text(yaml.safe_dump({"data_dir": DATA_DIR, "results": RESULTS,
                                      "training": {"fashion_mnist": {"epochs": 1, "patience": 1}},
                                      "experiments": {"main": {"seeds": [1]}}}))
    store, artifacts, port = work / "server" / "mlflow.db", work / "server" / "mlartifacts", free_port()
    store.parent.mkdir()
    server, url = start_server(store, artifacts, port=port, log=logs / "server.log")
    # One retry keeps the dead-server path short here; the project default is 3 (about 7 s per failed call).
    env = pipeline_env(MLFLOW_TRACKING_URI=url.replace("http://", f"http://me:{PASSWORD}@"),
                       MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
    log_path = logs / "snakemake.log"
    killed_at = None
    with open(log_path, "wb") as log:
        pipeline = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d",
                                     str(work), "--cores", "2", "--configfile", str(REPO / "config/test.yaml"),
                                     str(REPO / "tests/data/live-tracking.yaml"), str(config)],
                                    cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while pipeline.poll() is None:
                assert time.monotonic() < deadline, "pipeline took too long"
                finished = re.findall(r"Finished jobid: \d+ \(Rule: train\)", log_path.read_text())
                if killed_at is None and len(finished) >= 2:  # the first two training jobs have exited
                    stop_server(server, sig=signal.SIGKILL)  # a crash, not a clean shutdown
                    killed_at = time.time()
                time.sleep(0.2)
        finally:
            if pipeline.poll() is None:
                os.killpg(pipeline.pid, signal.SIGKILL)
                pipeline.wait(30)
            stop_server(server)
    done = {"returncode": pipeline.returncode, "output": log_path.read_text(), "killed_at": killed_at}
    results = work / RESULTS
    run_dirs = sorted(p.parent for p in (results / "runs").rglob("config.json"))
    # the same server again (same URL, as recorded in the run directories), then the sync, twice
    server, url = start_server(store, artifacts, port=port, log=logs / "server.log")
    try:
        client = MlflowClient(url)
        done["before"] = store_snapshot(client)
        sync = [sys.executable, "-m", "limit", "mlflow-sync", *map(str, run_dirs)]
        done["syncs"], done["after_sync"] = [], []
        for _ in range(2):
            done["syncs"].append(subprocess.run(sync, cwd=work, env=env, capture_output=True, text=True, timeout=300))
            done["after_sync"].append(store_snapshot(client))
        done["experiment_id"] = client.get_experiment_by_name("main").experiment_id
    finally:
        stop_server(server)
    return work, run_dirs, done


def test_hostile_paths_run_the_pipeline_and_nothing_else(hostile_run):
    work, run_dirs, done = hostile_run
    assert done["returncode"] == 0, done["output"][-5000:]
    table = pd.read_csv(work / RESULTS / "runs.csv")
    assert len(table) == 5 and all((work / d / "metrics.json").exists() for d in table.run_dir)
    assert (work / RESULTS / "figures" / "figure3_curves.png").exists()
    assert not (work / "pwned-data").exists() and not (work / "pwned-results").exists()
    assert sorted(p.name for p in work.iterdir()) == sorted([".snakemake", DATA_DIR, RESULTS, "hostile.yaml",
                                                            "server"])


def test_a_tracking_password_is_in_no_file_and_no_log(hostile_run):
    work, run_dirs, done = hostile_run
    assert done["returncode"] == 0, done["output"][-5000:]
    children = [r for r in done["after_sync"][-1].values() if "mlflow.parentRunId" in r["tags"]]
    assert len(children) == 5 and all(r["status"] == "FINISHED" for r in children)  # the URI was used
    files = [p for p in [*(work / RESULTS).rglob("*"), *(work / ".snakemake").rglob("*")] if p.is_file()]
    assert len(files) > 100
    leaked = [str(p) for p in files if PASSWORD.encode() in p.read_bytes()]
    outputs = [done["output"], *(s.stdout + s.stderr for s in done["syncs"])]
    assert not leaked and not any(PASSWORD in output for output in outputs), leaked


def test_a_server_killed_mid_pipeline_costs_no_result_and_two_syncs_fill_in_once(hostile_run):
    work, run_dirs, done = hostile_run
    assert done["returncode"] == 0, done["output"][-5000:]
    assert done["killed_at"] is not None, "the pipeline finished before the server could be killed"
    results = work / RESULTS
    # every run directory is complete and the run table is right
    assert len(run_dirs) == 5  # one seed
    for run_dir in run_dirs:
        assert {"metrics.json", "history.csv", "test_outputs.npz", "best.pt", "config.json"} <= {
            p.name for p in run_dir.iterdir()}
    table = list(csv.DictReader(open(results / "runs.csv")))
    assert sorted(r["run_dir"] for r in table) == [str(d.relative_to(work)) for d in run_dirs]
    selected_dirs = {d for f in (results / "selected").rglob("*.json") for d in json.loads(f.read_text())["run_dirs"]}
    for row in table:
        metrics = json.loads((work / row["run_dir"] / "metrics.json").read_text())
        assert float(row["test_acc"]) == pytest.approx(metrics["test_acc"])
        assert float(row["best_val_acc"]) == pytest.approx(metrics["best_val_acc"])
        assert (row["selected"] == "True") == (row["run_dir"] in selected_dirs)

    # each job warned at most once; every job that started after the crash warned exactly once
    warned = {}
    for run_dir in run_dirs:
        text = (results / "logs/train" / run_dir.relative_to(results / "runs")).with_suffix(".log").read_text()
        warned[run_dir] = text.count(WARNING)
        assert warned[run_dir] <= 1, text
        if (run_dir / "job.json").stat().st_mtime > done["killed_at"] + 1:
            assert warned[run_dir] == 1, text
    affected = [d for d, n in warned.items() if n]
    assert 1 <= len(affected) <= 3  # the first two jobs were done before the crash

    # after the restart, before the sync: something is missing; the first sync puts it in, the second adds nothing
    before = done["before"]
    assert len(before) < 5 or any(r["status"] != "FINISHED" for r in before.values())
    assert len([r for r in before.values() if r["status"] == "FINISHED"]) >= 2
    first, second = done["syncs"]
    assert first.returncode == 0, first.stderr[-3000:]
    added = int(re.search(r"synced 5 runs, (\d+) epochs added", first.stdout).group(1))
    assert added > 0 and WARNING not in first.stderr
    assert second.returncode == 0 and "synced 5 runs, 0 epochs added" in second.stdout
    after_first, after_second = done["after_sync"]
    assert after_second == after_first  # the second sync changed nothing

    by_name = {r["name"]: (run_id, r) for run_id, r in after_first.items() if "limit.group" not in r["tags"]}
    assert len(by_name) == 5 and len(after_first) == 5 + 4  # one run per run directory and per group
    for run_dir in run_dirs:
        run_id, run = by_name[str(run_dir.relative_to(results / "runs/main"))]
        assert run["experiment"] == done["experiment_id"] and run["status"] == "FINISHED"
        assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run_id
        tags = run_tags(json.loads((run_dir / "config.json").read_text()))
        assert {k: run["tags"].get(k) for k in tags} == tags
        # the select stage ran while the server was down: its tag came back with the sync
        assert run["tags"]["selected"] == str(str(run_dir.relative_to(work)) in selected_dirs).lower()
        history = list(csv.DictReader(open(run_dir / "history.csv")))
        for key in PER_EPOCH:
            assert [s for s, _ in run["history"][key]] == [int(r["epoch"]) for r in history], (run_dir, key)
            assert [v for _, v in run["history"][key]] == pytest.approx([float(r[key]) for r in history])
        assert ARTIFACTS <= set(run["artifacts"]) and run["params"]["method"]
