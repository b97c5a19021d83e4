"""The local MLflow UI (what ``./project ui`` starts) on the store of a real tiny pipeline run.

Real processes only, all on 127.0.0.1: Snakemake runs a reduced test config (one seed, 5 training jobs),
``python -m limit.tracking.server`` serves its SQLite store, the REST API must hold every run with its tags and
per-epoch metric history, and Debian's headless Chromium must render the runs table: each parent run with its
nested grid runs, and a param and a metric column with their values. Runs only with LIMIT_SYSTEM_TESTS=1.
"""
import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from limit.runs.rundir import run_tags
from limit.tracking.server import api, free_port, runs_table, runs_url, search_runs

from pipeline_helpers import ensure_debian_packages, pipeline_env

pytestmark = pytest.mark.system
PER_EPOCH = ("train_loss", "train_acc", "val_acc", "test_acc")


def history_rows(run_dir):
    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def chromium_installed():
    ensure_debian_packages("chromium")


@pytest.fixture
def ui_server(tiny_pipeline, tmp_path):
    """``python -m limit.tracking.server`` (what ``./project ui`` runs) in the pipeline directory."""
    port = free_port()
    out = tmp_path / "ui.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "limit.tracking.server", "--store", "results/mlflow.db",
                                 "--artifacts", "results/mlartifacts", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=tiny_pipeline, env=pipeline_env(), stdout=f, stderr=subprocess.STDOUT)
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


def test_ui_shows_every_run_of_the_pipeline_with_tags_and_metric_history(tiny_pipeline, ui_server, chromium_installed,
                                                                         tmp_path):
    proc, port, banner = ui_server
    url = f"http://127.0.0.1:{port}"
    pipeline = tiny_pipeline
    experiment_id = MlflowClient(f"sqlite:///{pipeline}/results/mlflow.db").get_experiment_by_name("main").experiment_id
    # the wrapper prints the runs table of each experiment (not #/experiments/<id>, the traces overview)
    runs_page = runs_url(url, experiment_id)
    assert f"runs of experiment 'main': {runs_page}" in banner
    assert api(url, "experiments/get-by-name", experiment_name="main")["experiment"]["experiment_id"] == experiment_id

    run_dirs = sorted(p.parent for p in (pipeline / "results/runs").rglob("metrics.json"))
    assert len(run_dirs) == 10
    table = {row["run_dir"]: row for row in csv.DictReader(open(pipeline / "results/runs.csv"))}
    everything = search_runs(url, [experiment_id])
    parents = {r["info"]["run_id"]: r for r in everything if any(t["key"] == "limit.group" for t in r["data"]["tags"])}
    runs = {r["info"]["run_name"]: r for r in everything if r["info"]["run_id"] not in parents}
    expected = {str(d.relative_to(pipeline / "results/runs/main")): d for d in run_dirs}
    assert set(runs) == set(expected)  # readable names: dataset/noise-rate/nN/seedS/variant/hparams, no duplicates
    # one parent per selection group (variant of the setting), named like its children without seed and hparams
    assert sorted(r["info"]["run_name"] for r in parents.values()) == [
        f"fashion_mnist/uniform-0.5/n256/{v}" for v in ("ce", "fw", "limit_g", "limit_l_init")]
    parent_of = {}
    for name, run_dir in expected.items():
        run = runs[name]
        assert run["info"]["status"] == "FINISHED"
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        parent = parents[tags["mlflow.parentRunId"]]
        parent_of[name] = parent["info"]["run_id"]
        assert name.startswith(parent["info"]["run_name"].rsplit("/", 1)[0]) and f"/{tags['variant']}/" in name
        assert tags["mlflow.source.git.commit"] and tags["torch_version"] and tags["device"] == "cpu"
        config = json.loads((run_dir / "config.json").read_text())
        grid = run_tags(config)
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
        assert {"history.csv", "metrics.json", "test_outputs.npz", "config.json", "best.pt"} <= artifacts

    # the grid tags filter runs (children and their parent), in the REST API as in the UI's search box
    limit_g = {n for n in expected if "/limit_g/" in n}
    assert len(limit_g) == 4
    found = search_runs(url, [experiment_id], "tags.variant = 'limit_g'")
    assert {r["info"]["run_name"] for r in found} == limit_g | {"fashion_mnist/uniform-0.5/n256/limit_g"}
    selected = {n for n, d in expected.items() if table[str(d.relative_to(pipeline))]["selected"] == "True"}
    found = search_runs(url, [experiment_id], "tags.selected = 'true'")
    assert {r["info"]["run_name"] for r in found} == selected and 0 < len(selected) < 10

    # the browser renders every parent with its nested runs below it, the beta param and the test accuracy metric
    rows = runs_table(url, experiment_id)
    names = [r["attributes.`Run Name`"] for r in rows]
    assert sorted(names) == sorted([*expected, *(r["info"]["run_name"] for r in parents.values())])
    for parent in parents.values():
        at = names.index(parent["info"]["run_name"])
        children = [n for n in expected if parent_of[n] == parent["info"]["run_id"]]
        assert rows[at]["parent"] and set(names[at + 1:at + 1 + len(children)]) == set(children)
        assert all(not r["parent"] and r["indent"] > rows[at]["indent"] for r in rows[at + 1:at + 1 + len(children)])
    for row in rows:
        if not row["parent"]:
            run = runs[row["attributes.`Run Name`"]]
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert float(row["metrics.`final_test_acc`"]) == pytest.approx(metrics["final_test_acc"], abs=1e-3)
            beta = {p["key"]: p["value"] for p in run["data"]["params"]}["hparams.beta"]
            assert row["params.`hparams.beta`"] == beta  # "0.0" for CE: the resolved config's default
    by_name = dict(zip(names, rows))
    limit_g_parent = by_name["fashion_mnist/uniform-0.5/n256/limit_g"]
    assert 0 < float(limit_g_parent["metrics.`test_acc_mean`"]) < 1  # the selection summary of the parent

    # with a search filter the table is flat: exactly the matching runs
    rows = runs_table(url, experiment_id, search="tags.variant = 'limit_g'")
    names = sorted(r["attributes.`Run Name`"] for r in rows)
    assert names == sorted(limit_g | {"fashion_mnist/uniform-0.5/n256/limit_g"})

    # SIGTERM (like Ctrl+C) stops the wrapper and the server with it
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
