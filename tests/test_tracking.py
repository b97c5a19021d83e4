import json
import warnings

import pytest
from mlflow.tracking import MlflowClient

from limit.tracking import Tracker, get_or_create_experiment, sync_run
from limit.train import train


def small_run(fmnist_dir, labels, out, tracker, epochs=3):
    cfg = {"dataset": "fashion_mnist", "data_dir": str(fmnist_dir), "labels": str(labels), "method": "limit_l",
           "hparams": {"beta": 1.0}, "epochs": epochs, "batch_size": 128, "seed": 1,
           "run": {"experiment": "main", "variant": "limit_l"}}
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
    assert len(client.search_runs([exp])) == 1
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
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [0, 1, 2]
    assert len(client.get_metric_history(run_id, "test_acc")) == 3
    assert runs[0].data.metrics["final_test_acc"] == pytest.approx(metrics["test_acc"])
