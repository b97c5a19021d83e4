"""Config strings never reach the shell unquoted, and a tracking password never reaches a file or a log.

The tiny pipeline (one epoch, one seed) runs with a ``data_dir`` and a ``results`` that hold a space, a quote and a
``; touch`` payload, against a real MLflow server whose URI (with a password) is given only in the environment.
"""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from limit.tracking.server import start_server, stop_server

from pipeline_helpers import pipeline_env

pytestmark = pytest.mark.pipeline  # Snakemake or the command line in subprocesses

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = "da ta'; touch pwned-data"
RESULTS = 'res ults"; touch pwned-results'
PASSWORD = "hunter2-s3cret"


@pytest.fixture(scope="module")
def hostile_run(fmnist_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")
    os.symlink(fmnist_dir, work / DATA_DIR)
    config = work / "hostile.yaml"
    config.write_text(yaml.safe_dump({"data_dir": DATA_DIR, "results": RESULTS,
                                      "training": {"fashion_mnist": {"epochs": 1, "patience": 1}},
                                      "experiments": {"main": {"seeds": [1]}}}))
    server, url = start_server(work / "server" / "mlflow.db", work / "server" / "mlartifacts")
    try:
        env = pipeline_env(MLFLOW_TRACKING_URI=url.replace("http://", f"http://me:{PASSWORD}@"))
        done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
                               "--cores", "2", "--configfile", str(REPO / "config/test.yaml"),
                               str(REPO / "tests/data/live-tracking.yaml"), str(config)],
                              cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        client = MlflowClient(url)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    finally:
        stop_server(server)
    return work, done, runs


def test_hostile_paths_run_the_pipeline_and_nothing_else(hostile_run):
    work, done, runs = hostile_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pd.read_csv(work / RESULTS / "runs.csv")
    assert len(table) == 5 and all((work / d / "metrics.json").exists() for d in table.run_dir)
    assert (work / RESULTS / "figures" / "figure3_curves.png").exists()
    assert not (work / "pwned-data").exists() and not (work / "pwned-results").exists()
    assert sorted(p.name for p in work.iterdir()) == sorted([".snakemake", DATA_DIR, RESULTS, "hostile.yaml",
                                                            "server"])


def test_a_tracking_password_is_in_no_file_and_no_log(hostile_run):
    work, done, runs = hostile_run
    assert done.returncode == 0, done.stderr[-3000:]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # the grid runs, under their parents
    assert len(children) == 5 and all(r.info.status == "FINISHED" for r in children)  # the URI was used
    files = [p for p in [*(work / RESULTS).rglob("*"), *(work / ".snakemake").rglob("*")] if p.is_file()]
    assert len(files) > 100
    leaked = [str(p) for p in files if PASSWORD.encode() in p.read_bytes()]
    assert not leaked and PASSWORD not in done.stdout + done.stderr, leaked
