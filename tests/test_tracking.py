import json
import warnings

import pytest
from mlflow.tracking import MlflowClient

from limit.tracking import Tracker, get_or_create_experiment, redact, sync_run
from limit.train import train


def small_run(fmnist_dir, labels, out, tracker, epochs=3):
    cfg = {"dataset": "fashion_mnist", "data_dir": str(fmnist_dir), "labels": str(labels), "method": "limit_l",
           "hparams": {"beta": 1.0}, "epochs": epochs, "batch_size": 128, "seed": 1}
    return train(cfg, out, tracker)


def test_run_is_logged_with_params_per_epoch_metrics_tags_and_artifacts(fmnist_dir, make_labels, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = get_or_create_experiment(client, "main", uri)
    out = tmp_path / "run"
    tags = {"dataset": "fashion_mnist", "method": "limit_l", "seed": "1"}
    small_run(fmnist_dir, make_labels(), out, Tracker(out, uri, exp, run_name="fm/limit_l", tags=tags))
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "fm/limit_l" and run.info.experiment_id == exp
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


@pytest.mark.parametrize("uri,shown", [
    ("http://me:pa55@mlflow.internal:5000", "http://me:***@mlflow.internal:5000"),
    ("postgresql://mlflow:pa55@127.0.0.1:5432/mlflow", "postgresql://mlflow:***@127.0.0.1:5432/mlflow"),
    ("error: API request to https://me:pa55@h/api/2.0 failed", "error: API request to https://me:***@h/api/2.0 failed"),
    ("http://me@mlflow.internal:5000", "http://me@mlflow.internal:5000"),
    ("sqlite:///results/mlflow.db", "sqlite:///results/mlflow.db"),
])
def test_passwords_in_uris_are_redacted(uri, shown):
    assert redact(uri) == shown
