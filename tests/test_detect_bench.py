"""detect-bench --quick on a tiny real Fashion-MNIST setting: LIMIT's beta grid selected on noisy validation,
cleanlab on out-of-sample folds, CE's loss, all under one budget rule."""
import json
import math

import numpy as np

from limit import labels as L
from limit.cli import main
from limit.registry import DEFAULT_SCORE, SCORES
from limit.report.stats import detection_metrics
from limit.tools.detect_bench import QUICK, cleanlab_ranking


def test_detect_bench_quick_scores_three_detectors_under_one_budget_rule(fmnist_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["detect-bench", "--quick", "--out", str(out), "--data-dir", str(fmnist_dir)]
    assert main(args) == 0
    setting = out / "uniform-0.5-n300" / "seed7"
    result = json.loads((setting / "result.json").read_text())
    labels, _ = L.read_labels_file(setting / "labels.npz")
    corrupted = int(labels["is_corrupted"].sum())
    assert result["corrupted"] == corrupted and 100 < corrupted < 200 and len(labels["val_idx"]) == 60
    metrics = [result["cleanlab"], result["ce_loss"], *result["limit"]["scores"].values()]
    assert set(result["limit"]["scores"]) == set(SCORES)
    for m in metrics:
        assert m["k"] == corrupted and 0 <= m["roc_auc"] <= 1 and 0 <= m["precision_at_k"] <= 1
    # LIMIT: the whole beta grid is trained, the best noisy validation accuracy selected, the grid's time counted
    val_acc = {b: json.loads((setting / f"limit-beta{b:g}" / "metrics.json").read_text())["best_val_acc"]
               for b in QUICK["betas"]}
    assert result["limit"]["beta"] == max(QUICK["betas"], key=val_acc.get)
    assert result["limit"]["seconds"] > result["limit"]["selected_seconds"] > 0
    # one budget rule: every model gets the same epochs and the paper's patience scaled (a quarter)
    runs = ["ce", *(f"limit-beta{b:g}" for b in QUICK["betas"]), "fold0", "fold1"]
    for run in runs:
        cfg = json.loads((setting / run / "config.json").read_text())
        assert (cfg["epochs"], cfg["patience"]) == (QUICK["epochs"], math.ceil(QUICK["epochs"] / 4))
    # cleanlab's probabilities are out of sample: the folds' training parts partition the training split
    folds = [L.read_labels_file(setting / f"fold{i}.npz")[0]["train_idx"] for i in range(2)]
    assert not set(folds[0]) & set(folds[1])
    assert sorted(np.concatenate(folds)) == sorted(labels["train_idx"])
    table = (out / "detect_bench.md").read_text()
    # three methods, the goal row, the scores row
    assert table.count("| Fashion-MNIST, 50% uniform noise, n = 300 |") == 5
    assert f"{100 * result['limit']['scores'][DEFAULT_SCORE]['roc_auc']:.1f}" in table
    # a finished setting is kept: a second call retrains nothing and reports the same numbers
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads((setting / "result.json").read_text()) == result
    assert "cleanlab AUC" in capsys.readouterr().out


def test_each_detector_ranks_planted_mislabels_on_the_right_side():
    """A known ranking: the first 10 of 40 examples are mislabeled, and every detector must put them first."""
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 40)
    given = true.copy()
    given[:10] = (true[:10] + 1) % 4
    is_corrupted = given != true
    # the scores as each detector reads them: higher = more likely mislabeled
    planted = np.where(is_corrupted, 2.0, 1.0) + rng.uniform(0, 0.5, 40)
    assert detection_metrics(planted, is_corrupted)["roc_auc"] == 1.0
    assert detection_metrics(-planted, is_corrupted)["roc_auc"] == 0.0  # a flipped sign is seen
    perfect = detection_metrics(planted, is_corrupted)
    assert (perfect["average_precision"], perfect["precision_at_k"], perfect["k"]) == (1.0, 1.0, 10)
    # cleanlab: out-of-sample probabilities that believe the true labels
    probs = np.full((40, 4), 0.02)
    probs[np.arange(40), true] = 0.94
    flagged, suspicion = cleanlab_ranking(given, probs)
    assert set(flagged) == set(range(10))
    assert detection_metrics(suspicion, is_corrupted)["roc_auc"] == 1.0


def test_planted_labels_give_k_of_n_images_another_class():
    from limit.tools.detect_bench import planted_labels
    arrays = planted_labels(np.arange(2000) % 10, 10, 300, 42)
    assert len(arrays["train_idx"]) + len(arrays["val_idx"]) == 300 and len(arrays["val_idx"]) == 60
    wrong = np.concatenate([arrays["train_noisy"] != arrays["train_true"], arrays["val_noisy"] != arrays["val_true"]])
    assert wrong.sum() == 10
    np.testing.assert_array_equal(wrong, np.concatenate([arrays["is_corrupted"], arrays["val_corrupted"]]))


def test_the_default_score_rule_keeps_uniform_noise_within_a_point():
    from limit.tools.detect_bench import choose_default
    cell = lambda **scores: {"limit": {"scores": {name: {"roc_auc": a, "average_precision": p}
                                                  for name, (a, p) in scores.items()}}}
    uniform = cell(ce_loss=(0.987, 0.977), posterior=(0.985, 0.974), fw=(0.972, 0.930))
    asymmetric = cell(ce_loss=(0.63, 0.15), posterior=(0.77, 0.22), fw=(0.81, 0.26))
    # fw gains most on the asymmetric setting but loses 4.7 points of AP on the uniform one
    assert choose_default([uniform, asymmetric]) == "posterior"
    assert choose_default([uniform]) == "ce_loss"
