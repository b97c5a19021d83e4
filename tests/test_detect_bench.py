"""detect-bench on a tiny real Fashion-MNIST setting: LIMIT, cleanlab on out-of-sample folds, CE's loss."""
import json

import numpy as np

from limit import data as D
from limit.cli import main


def test_detect_bench_scores_three_detectors_on_out_of_sample_folds(fmnist_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["detect-bench", "--out", str(out), "--data-dir", str(fmnist_dir), "--settings", "uniform:0.5",
            "--seeds", "7", "--n", "300", "--val-size", "100", "--epochs", "2", "--patience", "2", "--folds", "2"]
    assert main(args) == 0
    setting = out / "uniform-0.5" / "seed7"
    result = json.loads((setting / "result.json").read_text())
    labels, _ = D.read_labels_file(setting / "labels.npz")
    corrupted = int(labels["is_corrupted"].sum())
    assert result["corrupted"] == corrupted and 100 < corrupted < 200
    for method in ("limit", "cleanlab", "ce_loss"):
        m = result[method]
        assert m["k"] == corrupted and 0 <= m["roc_auc"] <= 1 and 0 <= m["precision_at_k"] <= 1 and m["seconds"] > 0
    # cleanlab's probabilities are out of sample: the folds' training parts partition the training split
    folds = [D.read_labels_file(setting / f"fold{i}.npz")[0]["train_idx"] for i in range(2)]
    assert not set(folds[0]) & set(folds[1])
    assert sorted(np.concatenate(folds)) == sorted(labels["train_idx"])
    assert result["fold_epochs"] == json.loads((setting / "ce" / "metrics.json").read_text())["best_epoch"] + 1
    assert result["cleanlab"]["seconds"] > result["ce_loss"]["seconds"]  # it includes the epoch-selection CE run
    table = (out / "detect_bench.md").read_text()
    assert table.count("| uniform p = 0.5 |") == 3
    # a finished setting is kept: a second call retrains nothing and reports the same numbers
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads((setting / "result.json").read_text()) == result
    assert "cleanlab AUC" in capsys.readouterr().out
