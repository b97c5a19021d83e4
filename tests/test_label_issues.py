"""Your own images end to end: import an ImageFolder tree, train LIMIT on it, find a planted mislabeled image."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from limit.cli import main
from limit.evaluate import detection_metrics

CLASSES = ["bottom", "left", "top"]


def pattern(cls, rng, side=28):
    """A greyscale image: the brighter half of the class (top, bottom or left) under strong pixel noise (a task
    the CNN needs a few epochs for, so that validation selects a trained checkpoint)."""
    image = rng.integers(0, 200, (side, side))
    half = {"top": (slice(0, side // 2), slice(None)), "bottom": (slice(side // 2, None), slice(None)),
            "left": (slice(None), slice(0, side // 2))}[cls]
    image[half] += 50
    return Image.fromarray(image.astype(np.uint8), mode="L")


@pytest.fixture
def image_tree(tmp_path):
    """45 images per class; one "top" image is planted in the "bottom" folder (a wrong label)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(45):
            pattern(cls, rng).save(root / cls / f"{cls}{i:02d}.png")
    pattern("top", rng).save(root / "bottom" / "planted.png")
    return root


def test_find_label_issues_ranks_a_planted_mislabeled_image_near_the_top(image_tree, tmp_path, capsys):
    cache, labels, run, out = (tmp_path / d for d in ("cache", "labels.npz", "run", "issues"))
    assert main(["import-images", str(image_tree), "--out", str(cache)]) == 0
    info = json.loads((cache / "dataset.json").read_text())
    assert info["classes"] == CLASSES and info["channels"] == 1 and info["size"] == 28 and info["num_train"] == 136
    assert 0.2 < info["mean"][0] < 0.6  # computed over the training images, 0-1 scale
    # labels as given; the validation split is small so the planted image most likely stays in training
    assert main(["corrupt", "--dataset", str(cache), "--noise", "given", "--rate", "0", "--seed", "1",
                 "--val-size", "20", "--out", str(labels)]) == 0
    arrays = np.load(labels)
    planted = int(np.flatnonzero(np.char.endswith(np.load(cache / "images.npz")["train_paths"], "planted.png"))[0])
    assert planted in arrays["train_idx"]
    assert main(["train", "--dataset", str(cache), "--labels", str(labels), "--method", "limit_l", "--beta", "1",
                 "--epochs", "6", "--patience", "6", "--batch-size", "32", "--seed", "1", "--out", str(run),
                 "--no-tracking"]) == 0
    capsys.readouterr()
    assert main(["find-label-issues", str(run), "--out", str(out), "--top-k", "8"]) == 0
    printed = capsys.readouterr().out
    with open(out / "label_issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(arrays["train_idx"])
    assert list(rows[0]) == ["rank", "index", "path", "given_label", "predicted_label", "score", "ce_loss", "margin"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    top = rows[:3]
    assert any(r["path"].endswith("planted.png") for r in top), top
    planted_row = next(r for r in rows if r["path"].endswith("planted.png"))
    assert int(planted_row["index"]) == planted
    assert planted_row["given_label"] == "bottom" and planted_row["predicted_label"] == "top"
    assert (out / "gallery.png").stat().st_size > 0
    assert "planted.png" in printed and "true labels known" not in printed  # labels as given: no truth to score


def test_synthetic_noise_on_own_images_reports_detection_metrics(image_tree, tmp_path, capsys):
    cache, labels, run, out = (tmp_path / d for d in ("cache", "labels.npz", "run", "issues"))
    main(["import-images", str(image_tree), "--out", str(cache)])
    assert main(["corrupt", "--dataset", str(cache), "--noise", "uniform", "--rate", "0.3", "--seed", "2",
                 "--val-size", "20", "--out", str(labels)]) == 0
    config = tmp_path / "train.yaml"  # find-label-issues trains the run from a config first
    config.write_text(json.dumps({"dataset": str(cache), "labels": str(labels), "method": "limit_l",
                                  "hparams": {"beta": 1}, "epochs": 4, "batch_size": 32, "seed": 2}))
    capsys.readouterr()
    assert main(["find-label-issues", str(run), "--config", str(config), "--out", str(out)]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 4
    assert "true labels known" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    corrupted = int(np.load(labels)["is_corrupted"].sum())
    assert summary["corrupted"] == corrupted and summary["detection"]["limit"]["k"] == corrupted
    with open(out / "label_issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["is_corrupted"]) for r in rows) == corrupted


def test_find_label_issues_refuses_a_ce_run_and_an_unfinished_one(image_tree, tmp_path, capsys):
    cache, labels, run = tmp_path / "cache", tmp_path / "labels.npz", tmp_path / "run"
    main(["import-images", str(image_tree), "--out", str(cache)])
    main(["corrupt", "--dataset", str(cache), "--noise", "given", "--rate", "0", "--seed", "1", "--out", str(labels)])
    assert main(["find-label-issues", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "not a finished run" in capsys.readouterr().err
    main(["train", "--dataset", str(cache), "--labels", str(labels), "--method", "ce", "--epochs", "1",
          "--out", str(run), "--no-tracking"])
    assert main(["find-label-issues", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "needs a LIMIT run" in capsys.readouterr().err


def test_detection_metrics_on_a_known_ranking():
    is_corrupted = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    perfect = detection_metrics(np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.4]), is_corrupted)
    assert perfect == {"roc_auc": 1.0, "average_precision": 1.0, "precision_at_k": 1.0, "k": 2}
    half = detection_metrics(np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.4]), is_corrupted)
    # corrupted ranks 1 and 6: 4 of 8 (corrupted, clean) pairs in order; precision 1/1 and 2/6 at the hits
    assert half["precision_at_k"] == 0.5 and half["roc_auc"] == 0.5
    assert half["average_precision"] == pytest.approx((1 + 2 / 6) / 2)
    assert np.isnan(detection_metrics(np.ones(6), np.zeros(6))["roc_auc"])
