"""A Clothing1M run with one unreadable (truncated) JPEG in each split: every prediction is scored against the label
of the example it came from, the unreadable test image is left out of the test accuracy, and metrics.json states
the denominator."""
import json

import numpy as np
import pytest
from test_label_issues import read_rows
from torch import nn

from limit import labels as L
from limit import models
from limit import train as T
from limit.cli import main
from limit.datasets.clothing1m import clothing1m_labels, read_clothing1m_split, write_synthetic_release
from limit.models import Classifier


@pytest.fixture
def clothing_run(tmp_path, monkeypatch):
    """One LIMIT epoch on a synthetic release with one truncated JPEG in each split, the test curve on."""
    root, labels, run = tmp_path / "clothing1m", tmp_path / "labels.npz", tmp_path / "run"
    _, unreadable = write_synthetic_release(root, unreadable_per_split=1)
    L.write_labels_file(labels, clothing1m_labels(root), {"dataset": "clothing1m", "noise": "real", "rate": None,
                                                          "n": "all", "seed": 1, "val_size": None})
    # A pooled linear model stands in for ResNet-50 (classifier and q): this test is about the data path.
    monkeypatch.setattr(models, "build_model", lambda *a, **k: Classifier(
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(3, 14)))
    with pytest.warns(RuntimeWarning, match="unreadable image, skipped"):
        metrics = T.train({"dataset": "clothing1m", "data_dir": str(tmp_path), "labels": str(labels),
                           "method": "limit_l", "arch": "resnet50", "epochs": 1, "batch_size": 4, "num_workers": 0,
                           "device": "cpu", "test_curve": True}, run)
    return root, run, metrics, unreadable


def test_unreadable_images_are_left_out_and_every_score_keeps_its_own_label(clothing_run):
    root, run, metrics, unreadable = clothing_run
    test_paths, test_labels, _ = read_clothing1m_split(root, "test")
    readable = [i for i, p in enumerate(test_paths) if p not in unreadable["test"]]
    assert len(readable) == 13 and readable != list(range(13))  # the unreadable one is inside the list

    with np.load(run / "test_outputs.npz") as outputs:
        assert outputs["index"].tolist() == readable
        assert outputs["labels"].tolist() == test_labels[readable].tolist()
        correct = outputs["logits"].argmax(1) == outputs["labels"]
    assert metrics["test_acc"] == pytest.approx(correct.mean())
    assert metrics["test_examples"] == 13 and metrics["test_unreadable"] == 1 and metrics["unreadable_images"] == 3
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert np.isfinite(np.genfromtxt(run / "history.csv", delimiter=",", names=True)["test_acc"]).all()

    train_paths, train_noisy, train_true = read_clothing1m_split(root, "train")
    kept = np.array([p not in unreadable["train"] for p in train_paths])
    with np.load(run / "train_scores.npz") as scores:
        assert {len(scores[k]) for k in scores.files} == {27}
        assert scores["train_idx"].tolist() == np.flatnonzero(kept).tolist()
        assert scores["noisy_label"].tolist() == train_noisy[kept].tolist()
        assert scores["true_label"].tolist() == train_true[kept].tolist()


def test_find_label_issues_ranks_the_readable_examples_each_with_its_own_label(clothing_run, tmp_path):
    root, run, _, unreadable = clothing_run
    assert main(["find-label-issues", str(run), "--out", str(tmp_path / "o"), "--top-k", "3"]) == 0
    rows = read_rows(tmp_path / "o/label_issues.csv")
    expected = {}
    for split in ("train", "val"):
        paths, labels, _ = read_clothing1m_split(root, split)
        expected.update({str(root / p): str(int(y)) for p, y in zip(paths, labels) if p not in unreadable[split]})
    assert {r["path"]: r["given_label"] for r in rows} == expected and len(rows) == 27 + 13
