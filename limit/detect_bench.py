"""``python -m limit detect-bench``: finding the corrupted labels, LIMIT against cleanlab and CE's loss.

On Fashion-MNIST (n training examples, noisy validation set) per noise setting and seed:

- (a) LIMIT: the score ||mu - g_CE|| of one LIMIT run;
- (b) cleanlab: ``cleanlab.filter.find_label_issues`` on K-fold out-of-sample predicted probabilities of CE models
  with the same architecture, each trained for the epochs that CE's validation selected; the full ranking
  (for ROC AUC, average precision and precision@k) is cleanlab's self-confidence label-quality score, the ranking
  ``find_label_issues`` uses for the examples it flags;
- (c) CE's loss: the loss of the given label under one CE run (the run that selects the folds' epochs).

Each method's wall time covers all the training it needs (cleanlab's includes the epoch-selection run, (c)).
Every training run is an ordinary resumable run directory and a finished setting's ``result.json`` is kept, so
a killed benchmark continues where it stopped; the wall times of a setting resumed midway cover only its rest.
"""
import json
import time
from pathlib import Path

import numpy as np

from limit import data as D
from limit.evaluate import detection_metrics
from limit.label_issues import example_scores, load_models
from limit.train import pick_device, predict, train

DATASET = "fashion_mnist"
# noise model:rate: two uniform rates and one asymmetric (class-dependent) noise.
SETTINGS = ["uniform:0.2", "uniform:0.5", "asymmetric-fashion-mnist:0.4"]
METHODS = {"limit": "LIMIT ‖μ − g_CE‖ (1 run)", "cleanlab": "cleanlab find_label_issues (CE run + 5 folds)",
           "ce_loss": "CE loss (1 run)"}


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def fold_labels(arrays, train_part):
    """The labels file content of a fold: a subset of the training split, the same validation split."""
    fold = dict(arrays)
    for key in ("train_idx", "train_true", "train_noisy", "is_corrupted"):
        fold[key] = arrays[key][train_part]
    return fold


def cross_validated_probabilities(arrays, labels_meta, base, out, folds, epochs, device):
    """Out-of-sample softmax probabilities of every training example from ``folds`` CE models."""
    from sklearn.model_selection import StratifiedKFold
    images = D.load_arrays(DATASET, base["data_dir"]).train_x
    noisy = arrays["train_noisy"]
    probs = np.zeros((len(noisy), D.dataset_info(DATASET).num_classes), dtype=np.float32)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=base["seed"])
    for fold, (train_part, held_out) in enumerate(splitter.split(np.zeros(len(noisy)), noisy)):
        labels = out / f"fold{fold}.npz"
        D.write_labels_file(labels, fold_labels(arrays, train_part), dict(labels_meta, fold=fold))
        run_dir = out / f"fold{fold}"
        train({**base, "method": "ce", "labels": str(labels), "epochs": epochs, "patience": epochs}, run_dir)
        cfg, classifier, _ = load_models(run_dir, device)
        split = D.InMemorySplit(images[arrays["train_idx"][held_out]], DATASET, device)
        probs[held_out] = predict(classifier, split, cfg["batch_size"]).softmax(1).cpu().numpy()
    return probs


def bench_setting(noise, rate, seed, args, out):
    """Run (a), (b), (c) on one data setting; return (and keep) their detection metrics and wall times."""
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    import cleanlab
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    train_y = D.load_arrays(DATASET, args.data_dir).train_y.numpy()
    arrays = D.make_noisy_labels(train_y, 10, DATASET, noise, rate, seed, n=args.n, val_size=args.val_size)
    meta = {"dataset": DATASET, "noise": noise, "rate": rate, "n": args.n, "seed": seed, "val_size": args.val_size}
    D.write_labels_file(out / "labels.npz", arrays, meta)
    base = {"dataset": DATASET, "data_dir": args.data_dir, "labels": str(out / "labels.npz"), "arch": "cnn",
            "epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size, "seed": seed,
            "device": args.device, "eval_test_each_epoch": False}
    is_corrupted = arrays["is_corrupted"]

    def run_and_score(name, config):
        train({**base, **config}, out / name)
        return example_scores(out / name, args.device)[2]

    ce, ce_seconds = timed(lambda: run_and_score("ce", {"method": "ce"}))
    limit, limit_seconds = timed(lambda: run_and_score(
        "limit", {"method": args.limit_method, "hparams": {"beta": args.beta}}))
    epochs = json.loads((out / "ce" / "metrics.json").read_text())["best_epoch"] + 1

    def cleanlab_ranking():
        probs = cross_validated_probabilities(arrays, meta, base, out, args.folds, epochs, device)
        flagged = cleanlab.filter.find_label_issues(arrays["train_noisy"], probs,
                                                    return_indices_ranked_by="self_confidence")
        quality = cleanlab.rank.get_label_quality_scores(arrays["train_noisy"], probs, method="self_confidence")
        return flagged, 1.0 - quality

    (flagged, cleanlab_scores), folds_seconds = timed(cleanlab_ranking)
    result = {
        "noise": noise, "rate": rate, "seed": seed, "n": args.n, "corrupted": int(is_corrupted.sum()),
        "fold_epochs": epochs, "device": str(device),
        "limit": {**detection_metrics(limit["score"], is_corrupted), "seconds": limit_seconds},
        "cleanlab": {**detection_metrics(cleanlab_scores, is_corrupted), "seconds": ce_seconds + folds_seconds,
                     "flagged": len(flagged), "flagged_precision": float(is_corrupted[flagged].mean()),
                     "flagged_recall": float(is_corrupted[flagged].sum() / max(is_corrupted.sum(), 1))},
        "ce_loss": {**detection_metrics(ce["ce_loss"], is_corrupted), "seconds": ce_seconds},
    }
    result_path.write_text(json.dumps(result, indent=2))
    return result


def setting_label(noise, rate):
    return f"{noise} p = {rate:g}"


def markdown_table(results):
    """One row per setting and method; each cell lists the seeds' values in seed order."""
    lines = ["| noise | method | ROC AUC (%) | average precision (%) | precision@k (%) | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for noise, rate in dict.fromkeys((r["noise"], r["rate"]) for r in results):
        rows = sorted((r for r in results if (r["noise"], r["rate"]) == (noise, rate)), key=lambda r: r["seed"])
        for method, label in METHODS.items():
            cell = lambda key, scale=100, fmt=".1f": " / ".join(f"{r[method][key] * scale:{fmt}}" for r in rows)
            lines.append(f"| {setting_label(noise, rate)} | {label} | {cell('roc_auc')} | "
                         f"{cell('average_precision')} | {cell('precision_at_k')} | {cell('seconds', 1, '.0f')} |")
    return "\n".join(lines)


def main(args):
    import torch
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = []
    for noise, _, rate in (setting.partition(":") for setting in args.settings or SETTINGS):
        rate = float(rate)
        for seed in args.seeds:
            result = bench_setting(noise, rate, seed, args, out / f"{noise}-{rate:g}" / f"seed{seed}")
            results.append(result)
            print(f"{setting_label(noise, rate)}, seed {seed} ({result['corrupted']} of {args.n} corrupted): " +
                  ", ".join(f"{m} AUC {result[m]['roc_auc']:.4f} AP {result[m]['average_precision']:.4f} "
                            f"P@k {result[m]['precision_at_k']:.4f} {result[m]['seconds']:.0f}s" for m in METHODS),
                  flush=True)
    table = markdown_table(results)
    (out / "detect_bench.md").write_text(table + "\n")
    (out / "detect_bench.json").write_text(json.dumps(results, indent=2))
    print(table)
