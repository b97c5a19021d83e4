import json
import warnings

import pytest
from mlflow.tracking import MlflowClient

from limit.tracking.client import Tracker, get_or_create_experiment, sync_run
from limit.tracking.uri import redact
from limit.train import train


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
    # resuming the same run directory continues the same MLflow run: no duplicate
    small_run(fmnist_dir, make_labels(), out, Tracker(out, uri, exp), epochs=4)
    runs = client.search_runs([exp])
    assert len(runs) == 2 and {r.data.tags.get("mlflow.parentRunId") for r in runs} == {None, run.data.tags[
        "mlflow.parentRunId"]}  # the run and the parent of its selection group
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [0, 1, 2, 3]


def test_unreachable_server_warns_once_then_sync_fills_in_without_duplicates(fmnist_dir, make_labels, tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = small_run(fmnist_dir, make_labels(), out, Tracker(out, "http://127.0.0.1:9", experiment_id="1"))
    tracking_warnings = [w for w in caught if "MLflow tracking" in str(w.message)]
    assert len(tracking_warnings) == 1 and "mlflow-sync" in str(tracking_warnings[0].message)
    assert metrics["epochs_run"] == 3 and (out / "history.csv").exists() and (out / "test_outputs.npz").exists()

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
    assert runs[0].data.metrics["final_test_acc"] == pytest.approx(metrics["test_acc"])


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
                                                  "torch_version": "2.14.1", "limit_version": "0.1.0"}))
    (run_dir / "history.csv").write_text("epoch,train_acc,val_acc,test_acc\n0,0.3,0.4,0.5\n1,0.4,0.5,0.6\n")
    (run_dir / "metrics.json").write_text(json.dumps({"best_epoch": 1, "best_val_acc": test_acc - 0.1, "test_acc": test_acc}))
    for name in ("test_outputs.npz", "best.pt", "train_scores.npz"):
        (run_dir / name).write_bytes(b"x" * 64)
    return run_dir


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


def test_params_are_logged_when_a_run_starts(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = Tracker(run_dir, uri)
    tracker.start({"method": "ce", "dataset": "mnist", "arch": "cnn", "seed": 42, "clean_validation": False,
                   "hparams": {"lr": 0.001}, "epochs": 400,
                   "run": {"experiment": "main", "variant": "ce", "hparams": ["lr"], "noise": "uniform", "rate": 0.5,
                           "n": "all"}}, [])
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "RUNNING" and run.data.params["hparams.lr"] == "0.001" and run.data.params["epochs"] == "400"
