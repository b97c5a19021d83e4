"""Statistics of runs: accuracy, bootstrap error bars, and mislabeled-example detection scores."""
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from limit.runs import rundir


def accuracy(logits, labels):
    """Fraction of examples whose arg-max logit is the label."""
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == np.asarray(labels)))


def bootstrap_std(logits, labels, n_boot=1000, seed=0):
    """(mean, std) of the test accuracy over ``n_boot`` resamples of the test set with replacement.

    As the authors' helper: std with ddof 0. Their draws were unseeded; ours come from
    ``np.random.default_rng(seed)`` as one (n_boot, n) index matrix.
    """
    correct = np.argmax(np.asarray(logits), axis=1) == np.asarray(labels)
    draws = np.random.default_rng(seed).integers(0, len(correct), size=(n_boot, len(correct)))
    accuracies = correct[draws].mean(axis=1)
    return float(accuracies.mean()), float(accuracies.std())


def bootstrap_from_run(run_dir, n_boot=1000, seed=0):
    """Plain test accuracy and bootstrap std from a run directory's ``test_outputs.npz``."""
    with np.load(Path(run_dir) / rundir.TEST_OUTPUTS) as outputs:
        logits, labels = outputs["logits"], outputs["labels"]
    return accuracy(logits, labels), bootstrap_std(logits, labels, n_boot, seed)[1]


def detection_auc(scores, is_corrupted):
    """ROC AUC of ``scores`` (higher = more likely mislabeled) against the corruption mask; NaN without both classes."""
    is_corrupted = np.asarray(is_corrupted, dtype=bool)
    if is_corrupted.all() or not is_corrupted.any():
        return float("nan")
    return float(roc_auc_score(is_corrupted, np.asarray(scores)))


def read_train_scores(run_dir):
    """A LIMIT run's per-example scores (``limit.methods.limit_train_scores``) as a dict of arrays."""
    with np.load(Path(run_dir) / rundir.TRAIN_SCORES) as scores:
        return {key: scores[key] for key in scores.files}
def detection_metrics(scores, is_corrupted):
    """ROC AUC, average precision and precision@k of ``scores`` (higher = more likely mislabeled), with
    k = the number of examples actually corrupted (precision@k then equals recall@k)."""
    is_corrupted = np.asarray(is_corrupted, dtype=bool)
    k = int(is_corrupted.sum())
    if k in (0, len(is_corrupted)):
        return {"roc_auc": float("nan"), "average_precision": float("nan"), "precision_at_k": float("nan"), "k": k}
    top_k = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return {"roc_auc": detection_auc(scores, is_corrupted),
            "average_precision": float(average_precision_score(is_corrupted, np.asarray(scores))),
            "precision_at_k": float(is_corrupted[top_k].mean()), "k": k}
