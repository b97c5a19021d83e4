"""The local MLflow UI (what ``./project ui`` starts) on the store of a real tiny pipeline run.

Real processes only, all on 127.0.0.1: Snakemake runs a reduced test config (one seed, 5 training jobs),
``python -m limit.mlflow_server`` serves its SQLite store, the REST API must hold every run with its tags and
per-epoch metric history, and Debian's headless Chromium must render the runs table with the run names.
``LIMIT_UPDATE_SCREENSHOTS=1`` also saves docs/img/mlflow-ui.png.
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from limit.mlflow_server import api, free_port, search_runs
from pipeline_helpers import ensure_debian_packages, pipeline_env, snakemake_command

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1900,1100", "--virtual-time-budget=15000"]
PER_EPOCH = ("train_loss", "train_acc", "val_acc", "test_acc")


def history_rows(run_dir):
    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


def chromium(url, tmp_path, *flags, timeout=90):
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    done = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def chromium_installed():
    ensure_debian_packages("chromium")


@pytest.fixture(scope="module")
def pipeline(fmnist_dir, tmp_path_factory):
    """The test config reduced to one seed (5 training jobs), run to results/runs.csv."""
    work = tmp_path_factory.mktemp("ui-pipeline")
    override = work / "one-seed.yaml"
    override.write_text("experiments:\n  main:\n    seeds: [1]\n")
    t0 = time.monotonic()
    done = subprocess.run(snakemake_command(work, fmnist_dir, 2, [override]), cwd=work, env=pipeline_env(),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-5000:]
    print(f"pipeline: {time.monotonic() - t0:.0f} s")
    return work


@pytest.fixture
def ui_server(pipeline, tmp_path):
    """``python -m limit.mlflow_server`` (what ``./project ui`` runs) in the pipeline directory."""
    port = free_port()
    out = tmp_path / "ui.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "limit.mlflow_server", "--store", "results/mlflow.db",
                                 "--artifacts", "results/mlartifacts", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=pipeline, env=pipeline_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Ctrl+C stops the server" not in out.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        assert proc.poll() is None, out.read_text()
        yield proc, port, out.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the wrapper stops the server's process group
            proc.wait(30)


def test_ui_shows_every_run_of_the_pipeline_with_tags_and_metric_history(pipeline, ui_server, chromium_installed,
                                                                         tmp_path):
    proc, port, banner = ui_server
    url = f"http://127.0.0.1:{port}"
    experiment_id = json.loads((pipeline / "results/mlflow/experiments.json").read_text())["experiments"]["main"]
    # the wrapper prints the runs table of each experiment (not #/experiments/<id>, the traces overview)
    runs_page = f"{url}/#/experiments/{experiment_id}/runs"
    assert f"runs of experiment 'main': {runs_page}" in banner
    assert api(url, "experiments/get-by-name", experiment_name="main")["experiment"]["experiment_id"] == experiment_id

    run_dirs = sorted(p.parent for p in (pipeline / "results/runs").rglob("metrics.json"))
    assert len(run_dirs) == 5
    table = {row["run_dir"]: row for row in csv.DictReader(open(pipeline / "results/runs.csv"))}
    runs = {r["info"]["run_name"]: r for r in search_runs(url, [experiment_id])}
    expected = {str(d.relative_to(pipeline / "results/runs/main")): d for d in run_dirs}
    assert set(runs) == set(expected)  # readable names: dataset/noise-rate/nN/seedS/variant/hparams, no duplicates
    for name, run_dir in expected.items():
        run = runs[name]
        assert run["info"]["status"] == "FINISHED"
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        config = json.loads((run_dir / "config.json").read_text())
        grid = config["tracking"]["tags"]
        assert {"experiment", "dataset", "noise", "rate", "n", "seed", "variant", "method", "hparams"} <= set(grid)
        assert {k: tags.get(k) for k in grid} == grid
        row = table[str(run_dir.relative_to(pipeline))]
        assert tags["selected"] == row["selected"].lower()  # the select stage's choice, as in runs.csv
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["method"] == config["method"] and params["epochs"] == str(config["epochs"])
        history = history_rows(run_dir)
        for key in PER_EPOCH:
            logged = api(url, "metrics/get-history", run_id=run["info"]["run_id"], metric_key=key)["metrics"]
            assert sorted(m["step"] for m in logged) == [int(r["epoch"]) for r in history]
            by_step = {m["step"]: m["value"] for m in logged}
            assert all(by_step[int(r["epoch"])] == pytest.approx(float(r[key])) for r in history)
        artifacts = {f["path"] for f in api(url, "artifacts/list", run_id=run["info"]["run_id"]).get("files", [])}
        assert {"history.csv", "metrics.json", "test_outputs.npz", "config.json"} <= artifacts

    # the grid tags filter runs, in the REST API as in the UI's search box
    limit_g = {n for n in expected if "/limit_g/" in n}
    assert len(limit_g) == 2
    found = search_runs(url, [experiment_id], "tags.variant = 'limit_g'")
    assert {r["info"]["run_name"] for r in found} == limit_g
    selected = {n for n, d in expected.items() if table[str(d.relative_to(pipeline))]["selected"] == "True"}
    found = search_runs(url, [experiment_id], "tags.selected = 'true'")
    assert {r["info"]["run_name"] for r in found} == selected and 0 < len(selected) < 5

    # the browser renders the runs table with every run name
    dom = chromium(runs_page, tmp_path, "--dump-dom")
    assert "Run Name" in dom
    assert all(name in dom for name in expected), [n for n in expected if n not in dom]
    variant_filter = quote("tags.variant = 'limit_g'")
    dom = chromium(f"{runs_page}?searchFilter={variant_filter}", tmp_path, "--dump-dom")
    assert all(name in dom for name in limit_g)
    assert not any(name in dom for name in set(expected) - limit_g)
    if os.environ.get("LIMIT_UPDATE_SCREENSHOTS") == "1":
        shot = REPO / "docs" / "img" / "mlflow-ui.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        chromium(runs_page, tmp_path, f"--screenshot={shot}")
        assert shot.stat().st_size > 10_000

    # SIGTERM (like Ctrl+C) stops the wrapper and the server with it
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
