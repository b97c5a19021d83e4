import csv
import json
import os
import subprocess
import sys
import time
import warnings

import pytest
from mlflow.tracking import MlflowClient

from limit.tracking.client import Tracker, flatten, get_or_create_experiment, sync_run
from limit.tracking.uri import redact
from limit.train import train

from mlflow_helpers import PassThroughClient


def small_run(fmnist_dir, labels, out, tracker, epochs=3):
    cfg = {"dataset": "fashion_mnist", "data_dir": str(fmnist_dir), "labels": str(labels), "method": "limit_l",
           "hparams": {"beta": 1.0}, "epochs": epochs, "batch_size": 128, "seed": 1,
           "run": {"experiment": "main", "variant": "limit_l"}, "keep_state": True}  # extended below
    return train(cfg, out, tracker)


def test_run_is_logged_with_params_per_epoch_metrics_tags_and_artifacts(fmnist_dir, make_labels, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = get_or_create_experiment(client, "main", uri)
    out = tmp_path / "run"
    small_run(fmnist_dir, make_labels(), out, Tracker(out, uri, exp))
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    run = client.get_run(run_id)
    # name and tags come from the run's config.json: its grid coordinates and the labels file's data setting
    name = "fashion_mnist/uniform-0.5/n512/seed1/limit_l/beta1"
    assert run.info.status == "FINISHED" and run.info.run_name == name and run.info.experiment_id == exp
    tags = {"experiment": "main", "dataset": "fashion_mnist", "noise": "uniform", "rate": "0.5", "n": "512",
            "seed": "1", "variant": "limit_l", "method": "limit_l", "hparams": "beta1", "beta": "1"}
    assert run.data.params["method"] == "limit_l" and run.data.params["hparams.beta"] == "1.0"
    assert {k: run.data.tags[k] for k in tags} == tags
    for key in ("train_acc", "train_acc_true", "train_acc_corrupted", "val_acc", "test_acc", "q_loss", "mu_sq_norm"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1, 2]
    assert {"history.csv", "metrics.json", "test_outputs.npz"} <= {a.path for a in client.list_artifacts(run_id)}
    # extended by one epoch: config.json changed (epochs), so MLflow gets a new run holding all 4 epochs, and the
    # run of the 3-epoch config is deleted (a resumed job of the same config continues its run: see below)
    small_run(fmnist_dir, make_labels(), out, Tracker(out, uri, exp), epochs=4)
    runs = client.search_runs([exp])
    assert len(runs) == 2 and {r.data.tags.get("mlflow.parentRunId") for r in runs} == {None, run.data.tags[
        "mlflow.parentRunId"]}  # the run and the parent of its selection group
    new_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    assert new_id != run_id and client.get_run(run_id).info.lifecycle_stage == "deleted"
    assert [m.step for m in client.get_metric_history(new_id, "val_acc")] == [0, 1, 2, 3]
    assert client.get_run(new_id).data.params["epochs"] == "4"


def _tracked_run(run_dir, tracker, config, rows):
    """What a training loop does with its tracker (limit.train): start, one call an epoch as history.csv grows,
    then finish on the finished run directory (no training: the tracking is what is tested)."""
    _write_run(run_dir, config, [])
    tracker.start(config, [])
    for epoch, row in enumerate(rows):
        _write_run(run_dir, config, rows[:epoch + 1])
        tracker.log_epoch(row)
    _write_run(run_dir, config, rows, finished=True)
    tracker.finish(run_dir)


def test_unreachable_server_warns_once_then_sync_fills_in_without_duplicates(tmp_path):
    out, rows = tmp_path / "run", [_row(epoch) for epoch in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tracked_run(out, Tracker(out, "http://127.0.0.1:9", experiment_id="1", interval=0.01), CONFIG, rows)
    tracking_warnings = [w for w in caught if "MLflow tracking" in str(w.message)]
    assert len(tracking_warnings) == 1 and "mlflow-sync" in str(tracking_warnings[0].message)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert sync_run(out, uri) == 3
    assert sync_run(out, uri) == 0
    client = MlflowClient(uri)
    runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if "limit.group" not in r.data.tags]  # not the parent run of its selection group
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [0, 1, 2]
    assert len(client.get_metric_history(run_id, "test_acc")) == 3
    assert runs[0].data.metrics["final_test_acc"] == pytest.approx(0.5)  # metrics.json's


@pytest.mark.parametrize("uri,shown", [
    ("http://me:pa55@mlflow.internal:5000", "http://me:***@mlflow.internal:5000"),
    ("postgresql://mlflow:pa55@127.0.0.1:5432/mlflow", "postgresql://mlflow:***@127.0.0.1:5432/mlflow"),
    ("error: API request to https://me:pa55@h/api/2.0 failed", "error: API request to https://me:***@h/api/2.0 failed"),
    ("http://me@mlflow.internal:5000", "http://me@mlflow.internal:5000"),
    ("sqlite:///results/mlflow.db", "sqlite:///results/mlflow.db"),
])
def test_passwords_in_uris_are_redacted(uri, shown):
    assert redact(uri) == shown


def _finished_run_dir(run_dir, seed, beta, test_acc, log_checkpoints=True):
    """A complete run directory as training leaves it (no training: the tracking is what is tested)."""
    run_dir.mkdir(parents=True)
    config = {"method": "limit_g", "dataset": "fashion_mnist", "arch": "cnn", "seed": seed, "epochs": 2,
              "hparams": {"beta": beta}, "clean_validation": False, "log_checkpoints": log_checkpoints,
              "run": {"experiment": "main", "variant": "limit_g", "hparams": ["beta"], "noise": "uniform", "rate": 0.5,
                      "n": "256"}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "job.json").write_text(json.dumps({"slurm_job_id": "4711", "host": "node1", "device": "cpu",
                                                  "device_name": "AMD EPYC", "git_commit": "abc123",
                                                  "torch_version": "2.14.1", "limit_version": "0.1.0",
                                                  "started": "2026-11-30T08:00:00Z"}))
    (run_dir / "history.csv").write_text("epoch,train_acc,val_acc,test_acc\n0,0.3,0.4,0.5\n1,0.4,0.5,0.6\n")
    (run_dir / "metrics.json").write_text(json.dumps({"best_epoch": 1, "best_val_acc": test_acc - 0.1,
                                                      "test_acc": test_acc}))
    for name in ("test_outputs.npz", "best.pt", "train_scores.npz"):
        (run_dir / name).write_bytes(b"x" * 64)
    return run_dir


def test_select_writes_the_selection_of_each_group_of_its_runs(tmp_path, capsys):
    """One select job per experiment block: a file per group (data setting, variant), each group's own pick."""
    from limit.cli import main
    run_dirs = []
    for rate, better in ((0.2, 0.0), (0.5, 10.0)):  # each rate has its own best beta
        for seed in (1, 2):
            for beta in (0.0, 10.0):
                test_acc = 0.7 + 0.1 * (beta == better)
                run_dir = _finished_run_dir(tmp_path / f"r{rate}s{seed}b{beta}", seed, beta, test_acc)
                config = json.loads((run_dir / "config.json").read_text())
                config["run"]["rate"] = rate
                (run_dir / "config.json").write_text(json.dumps(config))
                run_dirs.append(run_dir)
    out = tmp_path / "selected"
    assert main(["select", "--no-tracking", "--out-dir", str(out), *map(str, run_dirs)]) == 0
    written = {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.rglob("*.json")}
    assert sorted(written) == ["main/fashion_mnist/uniform-0.2/n256/limit_g.json",
                               "main/fashion_mnist/uniform-0.5/n256/limit_g.json"]
    for rate, selected in ((0.2, "beta0"), (0.5, "beta10")):
        selection = written[f"main/fashion_mnist/uniform-{rate}/n256/limit_g.json"]
        assert selection["selected"] == selected
        assert selection["all_run_dirs"] == sorted(str(d) for d in run_dirs if d.name.startswith(f"r{rate}"))
        assert selection["run_dirs"] == sorted(str(d) for d in run_dirs if d.name.startswith(f"r{rate}")
                                               and d.name.endswith(f"b{selected[4:]}.0"))
    assert main(["select", "--no-tracking", "--out", str(tmp_path / "one.json"), *map(str, run_dirs)]) == 2
    assert capsys.readouterr().err.startswith("error: --out takes the runs of one group, these are of 2")
    assert not (tmp_path / "one.json").exists()



def test_a_block_of_one_run_selects_it_under_its_group_name(tmp_path):
    """One seed, one variant, one value (a block added to try a setting): the file is the group's, as for many."""
    from limit.cli import main
    run_dir = _finished_run_dir(tmp_path / "only", 1, 0.0, 0.7)
    out = tmp_path / "selected"
    assert main(["select", "--no-tracking", "--out-dir", str(out), str(run_dir)]) == 0
    written = [p.relative_to(out).as_posix() for p in out.rglob("*.json")]
    assert written == ["main/fashion_mnist/uniform-0.5/n256/limit_g.json"]

def test_grid_runs_nest_under_one_parent_per_group_with_tags_artifacts_and_selection(tmp_path):
    from limit.cli import main
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    group = "main/fashion_mnist/uniform-0.5/n256/limit_g"
    assert main(["mlflow-init", "--tracking-uri", uri, "--groups", group]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("main")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    [parent] = client.search_runs([experiment.experiment_id])
    assert parent.info.run_name == "fashion_mnist/uniform-0.5/n256/limit_g" and parent.data.tags["limit.group"] == group
    run_dirs = [_finished_run_dir(tmp_path / f"s{seed}b{beta}", seed, beta, 0.6 + beta / 100, log_checkpoints=seed == 1)
                for seed in (1, 2) for beta in (0.0, 10.0)]
    for run_dir in run_dirs[:2]:  # seed 1's jobs logged as they trained (mlflow.live); seed 2's did not
        assert sync_run(run_dir, uri) == 2
    # the select stage: beta 10 chosen; the parent gets the selection and the chosen runs' test accuracy; the runs
    # that are not in MLflow yet are put there, every epoch included
    assert main(["select", "--tracking-uri", uri, "--out", str(tmp_path / "selected.json"), *map(str, run_dirs)]) == 0
    for run_dir in run_dirs:  # idempotent: a second sync adds nothing and creates no run
        assert sync_run(run_dir, uri) == 0
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 5
    for run_dir in run_dirs:
        run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
        assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [0, 1]
        assert client.get_run(run_id).data.tags["selected"] == ("true" if "b10" in run_dir.name else "false")
    parent = next(r for r in runs if "limit.group" in r.data.tags)
    children = [r for r in runs if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.data.tags["selected_hparams"] == "beta10" and parent.data.tags["selected.beta"] == "10"
    assert parent.data.tags["variant"] == "limit_g" and parent.data.tags["rate"] == "0.5"
    assert parent.data.metrics["test_acc_mean"] == pytest.approx(0.7) and parent.data.metrics["seeds"] == 2
    assert parent.info.status == "FINISHED"
    for child in children:
        tags = child.data.tags
        assert tags["mlflow.source.git.commit"] == "abc123" and tags["slurm_job_id"] == "4711"
        assert tags["torch_version"] == "2.14.1" and tags["device_name"] == "AMD EPYC" and tags["host"] == "node1"
        # its training's times, though the select stage put it into MLflow
        run_dir = tmp_path / f"s{tags['seed']}b{float(tags['beta'])}"
        assert child.info.start_time == 1796025600000  # job.json: 2026-11-30T08:00:00Z
        assert child.info.end_time == int((run_dir / "metrics.json").stat().st_mtime * 1000)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        with_checkpoints = child.data.tags["seed"] == "1"
        assert ("best.pt" in artifacts and "train_scores.npz" in artifacts) == with_checkpoints
        assert "history.csv" in artifacts
    # into a new store: runs and their parent are created there, nested again
    other = f"sqlite:///{tmp_path}/other.db"
    for run_dir in run_dirs:
        sync_run(run_dir, other)
    moved = MlflowClient(other).search_runs([MlflowClient(other).get_experiment_by_name("main").experiment_id])
    parents = [r for r in moved if "limit.group" in r.data.tags]
    assert len(moved) == 5 and len(parents) == 1 and parents[0].data.tags["selected_hparams"] == "beta10"


CONFIG = {"method": "ce", "dataset": "mnist", "arch": "cnn", "seed": 42, "clean_validation": False,
          "hparams": {"lr": 0.001}, "epochs": 400,
          "run": {"experiment": "main", "variant": "ce", "hparams": ["lr"], "noise": "uniform", "rate": 0.5,
                  "n": "all"}}
ROW_KEYS = ("train_loss", "train_acc", "val_acc", "test_acc", "epoch_seconds")


def _row(epoch):
    return {"epoch": epoch, **{k: 0.5 + epoch / 1000 for k in ROW_KEYS}}


def _write_run(run_dir, config, rows, finished=False):
    """What training writes: config.json first, history.csv and metrics.json as it goes and ends."""
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    lines = ["epoch," + ",".join(ROW_KEYS)] + [",".join(str(r[k]) for k in ("epoch", *ROW_KEYS)) for r in rows]
    (run_dir / "history.csv").write_text("\n".join(lines) + "\n")
    if finished:
        (run_dir / "metrics.json").write_text(json.dumps({"test_acc": 0.5, "epochs_run": len(rows)}))


def _timed_epochs(tracker, first, seconds, period=0.01, until=lambda: True):
    """Epochs every ``period`` s for ``seconds`` and until ``until()`` (at most a minute), as a training loop
    hands them over; (rows, slowest call)."""
    rows, slowest, began = [], 0.0, time.monotonic()
    while time.monotonic() - began < seconds or not until() and time.monotonic() - began < 60:
        rows.append(_row(first + len(rows)))
        t0 = time.perf_counter()
        tracker.log_epoch(rows[-1])
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(period)
    return rows, slowest


def test_epochs_go_live_in_one_request_per_interval_from_a_background_thread(tmp_path, monkeypatch):
    """Params while the run trains, its epochs in rounds at most one interval apart, never the loop's time; a job
    killed and started again (same config) continues its MLflow run without a duplicate epoch."""
    from limit.tracking import client as tracking
    uri, run_dir, interval = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "run", 0.5
    requests, rounds = [], []  # rows of each request with epoch metrics; (began, ended, its requests) of each round
    real_client, real_round = tracking._client, Tracker._round

    class Counted(PassThroughClient):
        def log_batch(self, run_id, metrics=(), **kwargs):
            if metrics and metrics[0].key in ROW_KEYS:
                requests.append(len({m.step for m in metrics}))
            return self.client.log_batch(run_id, metrics=metrics, **kwargs)

    def timed_round(self):
        began, before = time.monotonic(), len(requests)
        try:
            real_round(self)
        finally:
            rounds.append((began, time.monotonic(), requests[before:]))

    monkeypatch.setattr(tracking, "_client", lambda u: Counted(real_client(u)))
    monkeypatch.setattr(Tracker, "_round", timed_round)
    _write_run(run_dir, CONFIG, [])
    tracker = Tracker(run_dir, uri, interval=interval)
    tracker.start(CONFIG, [])
    rows, slowest = _timed_epochs(tracker, 0, 3.0, until=lambda: sum(bool(r[2]) for r in rounds) >= 3)
    info = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(uri)
    run = client.get_run(info["run_id"])
    assert run.info.status == "RUNNING" and run.data.params["hparams.lr"] == "0.001"
    assert run.data.params["epochs"] == "400"
    steps = [m.step for m in client.get_metric_history(info["run_id"], "val_acc")]
    assert steps == list(range(len(steps))) and 0 < len(steps) < len(rows)  # oldest first, while it trains
    # a round begins one interval after the last began, or at once where that one took longer (a slow server)
    for (began, ended, _), (next_began, _, _) in zip(rounds, rounds[1:]):
        assert next_began >= min(began + interval, ended) - 0.01
    # a round sends more than one request only for more than 80 rows (1000 metrics a request)
    assert all(n == 80 for _, _, sent in rounds for n in sent[:-1])
    assert len(rows) > 10 * len(requests)  # requests follow the interval, not the epochs
    assert slowest < 0.1, f"log_epoch took {slowest * 1e3:.1f} ms"  # (a loaded 2-core machine: microseconds idle)

    # the job is killed (no finish) and started again from its last checkpoint. At the last epoch it logged: the
    # same MLflow run goes on, no epoch twice. Before it: a new run with the directory's epochs, the old one deleted.
    for checkpoint, same_run in ((len(rows), True), (10, False)):
        tracker.stopping.set()
        tracker.thread.join()
        tracker = Tracker(run_dir, uri, interval=interval)
        tracker.start(CONFIG, rows[:checkpoint])
        more, _ = _timed_epochs(tracker, checkpoint, 1.0, until=lambda t=tracker: t.run is not None)
        rows = rows[:checkpoint] + more
        assert (tracker.run.info.run_id == info["run_id"]) == same_run
    _write_run(run_dir, CONFIG, rows, finished=True)
    tracker.finish(run_dir)
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    assert run_id != info["run_id"] and client.get_run(info["run_id"]).info.lifecycle_stage == "deleted"
    for key in ROW_KEYS:
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(len(rows)))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["final_test_acc"] == 0.5


def test_a_batch_stored_but_its_answer_lost_is_sent_again_and_kept_once(tmp_path, monkeypatch):
    """The server stores a request of epochs, then dies before it answers (killed, timed out): the sender sends
    those epochs again in its next round, and MLflow keeps each once."""
    from limit.tracking import client as tracking
    uri, run_dir, resent = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "run", []
    real_client = tracking._client

    class AnswerLost(PassThroughClient):
        def log_batch(self, run_id, metrics=(), **kwargs):
            self.client.log_batch(run_id, metrics=metrics, **kwargs)
            if metrics and metrics[0].key in ROW_KEYS and not resent:
                resent.append({m.step for m in metrics})
                raise ConnectionError("the server died before it answered")

    monkeypatch.setattr(tracking, "_client", lambda u: AnswerLost(real_client(u)))
    _write_run(run_dir, CONFIG, [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker = Tracker(run_dir, uri, interval=0.2)
        tracker.start(CONFIG, [])
        rows, _ = _timed_epochs(tracker, 0, 1.0, period=0.02, until=lambda: bool(resent))
        time.sleep(0.5)  # the next round, which sends them again
        _write_run(run_dir, CONFIG, rows, finished=True)
        assert tracker.finish(run_dir)  # MLflow has the whole run
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    client = MlflowClient(uri)
    assert resent and resent[0]
    for key in ROW_KEYS:
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(len(rows))), key


def test_a_server_that_never_answers_never_stalls_an_epoch(tmp_path, monkeypatch):
    from limit.tracking.server import free_port

    from mlflow_helpers import HungServer
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port, run_dir = free_port(), tmp_path / "run"
    _write_run(run_dir, CONFIG, [])
    hung = HungServer(port)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker = Tracker(run_dir, f"http://127.0.0.1:{port}", interval=0.2)
            tracker.start(CONFIG, [])
            rows, slowest = _timed_epochs(tracker, 0, 3.0)
            _write_run(run_dir, CONFIG, rows, finished=True)
            assert not tracker.finish(run_dir)  # the run is left for mlflow-sync
    finally:
        hung.close()
    assert hung.connections and slowest < 0.5, f"log_epoch took {slowest * 1e3:.1f} ms"  # a request: 2 s
    assert len([w for w in caught if "MLflow tracking to" in str(w.message)]) == 1
    assert len((run_dir / "history.csv").read_text().splitlines()) == len(rows) + 1


def test_retraining_a_run_directory_under_another_config_mirrors_only_the_second(tmp_path):
    """A run directory tracked with batch 128 and patience 100, then replaced (``limit train --overwrite``: every
    file but mlflow.json removed) by a run with batch 64 and patience 1: MLflow shows that directory's second
    config, its epochs, final metrics and artifacts, and nothing of the first."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    _tracked_run(out, Tracker(out, uri, interval=0.01), {**CONFIG, "batch_size": 128, "patience": 100},
                 [_row(epoch) for epoch in range(2)])
    first = json.loads((out / "mlflow.json").read_text())["run_id"]
    for path in out.iterdir():
        if path.name != "mlflow.json":
            path.unlink()
    _tracked_run(out, Tracker(out, uri, interval=0.01), {**CONFIG, "batch_size": 64, "patience": 1}, [_row(0)])
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("main").experiment_id
    [run] = [r for r in client.search_runs([experiment]) if "limit.group" not in r.data.tags]
    assert run.info.run_id == json.loads((out / "mlflow.json").read_text())["run_id"] != first
    config = json.loads((out / "config.json").read_text())
    assert run.data.params == {k: str(v) for k, v in flatten(config).items()}
    assert run.data.params["batch_size"] == "64" and run.data.params["patience"] == "1"
    history = list(csv.DictReader(open(out / "history.csv")))
    for key in ("train_loss", "val_acc", "test_acc"):
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == pytest.approx(
            [(int(r["epoch"]), float(r[key])) for r in history])
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["final_test_acc"] == pytest.approx(metrics["test_acc"])
    for name in ("config.json", "metrics.json", "history.csv"):
        copy = client.download_artifacts(run.info.run_id, name, str(tmp_path / "artifacts"))
        assert open(copy).read() == (out / name).read_text(), name


@pytest.mark.pipeline
def test_training_jobs_turn_off_mlflow_telemetry_whose_thread_breaks_os_environ(tmp_path):
    """MLflow's telemetry, once it cannot download its config (no internet), unsets _MLFLOW_TELEMETRY_SESSION_ID
    from its own thread; any thread iterating os.environ then (requests does, for proxies, on every call) raised
    KeyError('_MLFLOW_TELEMETRY_SESSION_ID'). A subprocess: MLflow reads the switch once, at import."""
    code = f"""
import os, threading, time
from limit.tracking.client import Tracker, sync_run
errors, stop = [], False
def like_requests():
    while not stop:
        try:
            dict(os.environ.items())
        except KeyError as exc:
            errors.append(repr(exc))
Tracker({str(tmp_path / 'run')!r}, {f'sqlite:///{tmp_path}/mlflow.db'!r})
import mlflow  # as a training job's sender thread does
threading.Thread(target=like_requests).start()
sync_run({str(tmp_path / 'run')!r}, {f'sqlite:///{tmp_path}/mlflow.db'!r})
time.sleep(3)  # MLflow's telemetry gives up on its config within 1 s
stop = True
print(errors)
"""
    _write_run(tmp_path / "run", CONFIG, [_row(0)], finished=True)
    testing = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in os.environ.items() if k not in testing}  # MLflow's telemetry is off under tests
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-3000:]


@pytest.mark.pipeline
def test_tracking_bench_finds_every_metric_its_runs_sent(tmp_path):
    """`limit tracking-bench` as docs/cluster.md gives it, against a local store: 2 runs x 5 epochs/s x 3 s, every
    epoch metric sent is found in the store."""
    from limit.tools.tracking_bench import EPOCH_METRICS
    done = subprocess.run([sys.executable, "-m", "limit", "tracking-bench", "--uri", f"sqlite:///{tmp_path}/bench.db",
                           "--runs", "2", "--epochs-per-second", "5", "--seconds", "3", "--processes", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["sent"] == summary["found"] == 2 * 15 * len(EPOCH_METRICS) and summary["lost"] == 0
    assert summary["tracking_share_max"] < 0.01
