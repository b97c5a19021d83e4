"""``python -m limit detect-bench``: finding the corrupted labels, LIMIT against cleanlab and CE's loss.

On Fashion-MNIST (n training examples, n/5 noisy validation examples) per noise setting and seed, every model
under one budget rule: at most ``--epochs`` epochs, early stopping on noisy validation accuracy with the paper's
patience scaled to the budget (100 of 400 epochs: a quarter), the best-validation checkpoint.

- (a) LIMIT: one run per beta of a small grid, the run with the best noisy validation accuracy selected (the
  paper's protocol); its scores (``limit.registry.SCORES``), ranked by ``DEFAULT_SCORE``; on a planted setting
  (K wrong labels in N images) the small-data rule instead (``SMALL_DATA``: fold runs, each ranking the examples it
  holds out), with the count of planted labels in the top 20 of all N;
- (b) cleanlab: ``cleanlab.filter.find_label_issues`` on K-fold out-of-sample predicted probabilities of CE models
  with the same architecture and budget rule; the full ranking (for ROC AUC, average precision and precision@k) is
  cleanlab's self-confidence label-quality score, the ranking ``find_label_issues`` uses for what it flags;
- (c) CE's loss: the loss of the given label under one CE run's selected checkpoint.

Each method's wall time covers all the training it needs and its scoring; LIMIT's counts the whole beta grid
(its selected run's alone is reported too). Detection is measured on the n training examples, which every method
ranks. Every training run is an ordinary resumable run directory and a finished setting's ``result.json`` is
kept, so a killed benchmark continues where it stopped (the wall times of a setting resumed midway cover only
its rest). ``--dev`` runs the development settings on which the default score was chosen, and the rule; the
full table also holds the asymmetric one.
"""
import json
import math
import time
from pathlib import Path

import numpy as np

from limit import data as D
from limit import labels as L
from limit.models import predict
from limit.registry import DEFAULT_SCORE, SCORES
from limit.report.stats import detection_metrics
from limit.runs import rundir
from limit.runtime import pick_device
from limit.tools.label_issues import (
    example_scores,
    finished_metrics,
    held_out_scores,
    load_models,
    train_folds,
    within_split,
)
from limit.train import train

DATASET = "fashion_mnist"
# noise model:rate:n. Three noises in the medium regime (n = 5,000), two in the small one (n = 1,000), and
# planted:K:N: K wrong labels planted in N labelled images (training and validation split), the small-data rule.
SETTINGS = ["uniform:0.2:5000", "uniform:0.5:5000", "asymmetric-fashion-mnist:0.4:5000",
            "uniform:0.5:1000", "asymmetric-fashion-mnist:0.4:1000", "planted:10:300"]
SEEDS = [42, 43]
# Where the default score was chosen (the uniform one first); the table also shows the asymmetric one.
DEV_SETTINGS, DEV_SEED = ["uniform:0.3:5000", "asymmetric-fashion-mnist:0.4:1000"], 41
# A few hundred images: LIMIT in folds, each run ranking the examples it holds out, by its loss (docs/label-issues.md).
SMALL_DATA = {"folds": 5, "beta": 1, "batch_size": 32, "score": "ce_loss"}
TOP = 20  # planted settings: how many planted labels rank in the top 20 of all labelled images
QUICK = {"settings": ["uniform:0.5:300"], "seeds": [7], "epochs": 4, "folds": 2, "betas": [1, 10]}
FULL = {"settings": SETTINGS, "seeds": SEEDS, "epochs": 20, "folds": 5, "betas": [1, 10]}
METHODS = {"limit": "LIMIT, {score} (β grid, 1 selected run; planted: {small})",
           "cleanlab": "cleanlab find_label_issues ({folds} folds)", "ce_loss": "CE loss (1 run)"}


def timed(fn, *args):
    t0 = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t0


def fold_labels(arrays, train_part):
    """The labels file content of a fold: a subset of the training split, the same validation split."""
    fold = dict(arrays)
    for key in ("train_idx", "train_true", "train_noisy", "is_corrupted"):
        fold[key] = arrays[key][train_part]
    return fold


def cross_validated_probabilities(arrays, labels_meta, base, out, folds, device):
    """Out-of-sample softmax probabilities of every training example from ``folds`` CE models."""
    from sklearn.model_selection import StratifiedKFold
    images = D.load_arrays(DATASET, base["data_dir"]).train_x
    noisy = arrays["train_noisy"]
    probs = np.zeros((len(noisy), D.dataset_info(DATASET).num_classes), dtype=np.float32)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=base["seed"])
    for fold, (train_part, held_out) in enumerate(splitter.split(np.zeros(len(noisy)), noisy)):
        labels = out / f"fold{fold}.npz"
        L.write_labels_file(labels, fold_labels(arrays, train_part), dict(labels_meta, fold=fold))
        run_dir = out / f"fold{fold}"
        train({**base, "method": "ce", "labels": str(labels)}, run_dir)
        cfg, classifier, _ = load_models(run_dir, device)
        split = D.InMemorySplit(images[arrays["train_idx"][held_out]], DATASET, device)
        idx, logits = predict(classifier, split, cfg["batch_size"])
        probs[held_out[idx.cpu().numpy()]] = logits.softmax(1).cpu().numpy()
    return probs


def selected_limit(base, args, out):
    """LIMIT's β grid, the run with the best noisy validation accuracy selected: its scores over the training
    examples, β, the grid's accuracies and times."""
    grid, grid_seconds = {}, {}
    for beta in args.betas:  # train the whole grid; only the selected run's scores are needed
        _, grid_seconds[beta] = timed(train, {**base, "method": args.limit_method, "hparams": {"beta": beta}},
                                      out / f"limit-beta{beta:g}")
        grid[beta] = finished_metrics(out / f"limit-beta{beta:g}")[rundir.BEST_VAL_ACC]
    beta = max(args.betas, key=lambda b: grid[b])  # noisy validation accuracy; the first of equals
    scores, scoring_seconds = timed(lambda: training_scores(out / f"limit-beta{beta:g}", args.device))
    return scores, {"score": DEFAULT_SCORE, "beta": beta, "val_acc": {f"{b:g}": v for b, v in grid.items()},
                    "seconds": sum(grid_seconds.values()) + scoring_seconds,
                    "selected_seconds": grid_seconds[beta] + scoring_seconds}


def training_scores(run_dir, device):
    """Every score of a finished run over its training examples (what every method ranks)."""
    scores = example_scores(run_dir, device)[2]
    train_part = scores["split"] == "train"
    return {name: scores[name][train_part] for name in SCORES if name in scores}


def cleanlab_ranking(given, probs):
    """cleanlab's flagged examples (most suspicious first) and a score per example, higher = more likely
    mislabeled: one minus its self-confidence label quality (the probability of the given label)."""
    import cleanlab
    flagged = cleanlab.filter.find_label_issues(given, probs, return_indices_ranked_by="self_confidence")
    return flagged, 1.0 - cleanlab.rank.get_label_quality_scores(given, probs, method="self_confidence")


def planted_labels(train_y, planted, n, seed):
    """n labelled images (a fifth for validation) with ``planted`` of them, in either split, given another class."""
    arrays = L.make_noisy_labels(train_y, 10, DATASET, "uniform", 0.0, seed, n=n - n // 5, val_size=n // 5)
    rng = np.random.default_rng(seed)
    for i in rng.choice(n, planted, replace=False):
        split, i = ("train", i) if i < n - n // 5 else ("val", i - (n - n // 5))
        arrays[f"{split}_noisy"][i] = (arrays[f"{split}_true"][i] + rng.integers(1, 10)) % 10
        arrays["is_corrupted" if split == "train" else "val_corrupted"][i] = True
    return arrays


def top_count(scores, score, top=TOP):
    """Wrong labels among the ``top`` most suspect of a ranking of all labelled examples by ``score``."""
    order = np.lexsort((-scores[score], -within_split(scores[score], scores["split"])))
    return int(scores["is_corrupted"][order[:top]].sum())


def small_data_limit(base, arrays, args, out):
    """LIMIT under the small-data rule: its scores over the training examples, the top count over all labelled
    ones, and the rule's total time."""
    config = {**base, "method": args.limit_method, "hparams": {"beta": SMALL_DATA["beta"]},
              "batch_size": SMALL_DATA["batch_size"]}
    (_, scores, _), seconds = timed(lambda: held_out_scores(train_folds(config, out / "limit-folds",
                                                                        SMALL_DATA["folds"]), args.device))
    position = {index: i for i, index in enumerate(scores["index"])}
    train_part = [position[index] for index in arrays["train_idx"]]
    return ({name: scores[name][train_part] for name in SCORES if name in scores},
            {"score": SMALL_DATA["score"], "top": top_count(scores, SMALL_DATA["score"]), "beta": SMALL_DATA["beta"],
             "val_acc": {}, "seconds": seconds, "selected_seconds": seconds})


def bench_setting(noise, rate, n, seed, args, out):
    """Run (a), (b), (c) on one data setting; return (and keep) their detection metrics and wall times."""
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    train_y = D.load_arrays(DATASET, args.data_dir).train_y.numpy()
    planted = noise == "planted"
    val_size = n // 5
    arrays = (planted_labels(train_y, int(rate), n, seed) if planted else
              L.make_noisy_labels(train_y, 10, DATASET, noise, rate, seed, n=n, val_size=val_size))
    meta = {"dataset": DATASET, "noise": noise, "rate": rate, "n": len(arrays["train_idx"]), "seed": seed,
            "val_size": val_size}
    L.write_labels_file(out / "labels.npz", arrays, meta)
    base = {"dataset": DATASET, "data_dir": args.data_dir, "labels": str(out / "labels.npz"), "arch": "cnn",
            "epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size, "seed": seed,
            "device": args.device, "test_curve": False}
    is_corrupted = arrays["is_corrupted"]
    metrics = lambda scores: {name: detection_metrics(values, is_corrupted) for name, values in scores.items()}

    def run_and_score(name, config):
        train({**base, **config}, out / name)
        return training_scores(out / name, args.device)

    ce, ce_seconds = timed(lambda: run_and_score("ce", {"method": "ce"}))
    if planted:
        limit, limit_facts = small_data_limit(base, arrays, args, out)
    else:
        limit, limit_facts = selected_limit(base, args, out)

    (flagged, cleanlab_scores), cleanlab_seconds = timed(lambda: cleanlab_ranking(
        arrays["train_noisy"], cross_validated_probabilities(arrays, meta, base, out, args.folds, device)))
    result = {
        "noise": noise, "rate": rate, "seed": seed, "n": n, "corrupted": int(is_corrupted.sum()),
        "device": str(device), "epochs": args.epochs, "patience": args.patience,
        "limit": {"scores": metrics(limit), **limit_facts},
        "cleanlab": {**detection_metrics(cleanlab_scores, is_corrupted), "seconds": cleanlab_seconds,
                     "flagged": len(flagged), "flagged_precision": float(is_corrupted[flagged].mean()),
                     "flagged_recall": float(is_corrupted[flagged].sum() / max(is_corrupted.sum(), 1))},
        "ce_loss": {**detection_metrics(ce["ce_loss"], is_corrupted), "seconds": ce_seconds},
        "ce_scores": metrics(ce),
    }
    if planted:
        result["ce_loss"]["top"] = top_count(example_scores(out / "ce", args.device)[2], "ce_loss")
    result_path.write_text(json.dumps(result, indent=2))
    return result


def method_metrics(result, method):
    """A method's metrics and wall time in a result; LIMIT's are those of the score it ranks by."""
    if method == "limit":
        score = result["limit"].get("score", DEFAULT_SCORE)  # results from before the small-data rule have none
        return {**result["limit"]["scores"][score], "seconds": result["limit"]["seconds"]}
    return result[method]


def goal_met(result):
    """LIMIT beats cleanlab's ROC AUC and average precision, at no more than cleanlab's wall time."""
    limit, cleanlab = method_metrics(result, "limit"), result["cleanlab"]
    return {"roc_auc": limit["roc_auc"] > cleanlab["roc_auc"],
            "average_precision": limit["average_precision"] > cleanlab["average_precision"],
            "time": limit["seconds"] <= cleanlab["seconds"]}


def by_setting(results):
    """(noise, rate, n) -> that setting's results in seed order, settings in the order they ran."""
    keys = dict.fromkeys((r["noise"], r["rate"], r["n"]) for r in results)
    return {key: sorted((r for r in results if (r["noise"], r["rate"], r["n"]) == key), key=lambda r: r["seed"])
            for key in keys}


def setting_title(noise, rate, n):
    if noise == "planted":
        return f"Fashion-MNIST, {rate:g} planted wrong labels in {n} images"
    return rundir.setting_text(DATASET, noise, rate, n, style="title")


def markdown_table(results, folds):
    """One row per setting and method; each cell lists the seeds' values in seed order; then the goal per cell
    (one cell = one setting and seed) and every LIMIT score of the selected run."""
    lines = ["| setting | method | ROC AUC (%) | average precision (%) | precision@k (%) | wall time (s) |",
             "|---|---|---|---|---|---|"]
    small = f"{SCORES[SMALL_DATA['score']]}, {SMALL_DATA['folds']} folds"
    labels = {m: label.format(score=SCORES[DEFAULT_SCORE], folds=folds, small=small) for m, label in METHODS.items()}
    groups = by_setting(results)
    titles = {key: setting_title(*key) for key in groups}
    for key, rows in groups.items():
        for method, label in labels.items():
            values = [method_metrics(r, method) for r in rows]

            def cell(k, scale=100, fmt=".1f", values=values):
                return " / ".join(f"{v[k] * scale:{fmt}}" for v in values)
            seconds = cell("seconds", 1, ".0f")
            if method == "limit":
                seconds += " (selected run: " + " / ".join(f"{r['limit']['selected_seconds']:.0f}" for r in rows) + ")"
            lines.append(f"| {titles[key]} | {label} | {cell('roc_auc')} | {cell('average_precision')} | "
                         f"{cell('precision_at_k')} | {seconds} |")
    lines += ["", "| setting | seed | selected β | LIMIT > cleanlab ROC AUC | LIMIT > cleanlab AP | LIMIT time ≤ "
              "cleanlab's | goal |", "|---|---|---|---|---|---|---|"]
    yes = lambda ok: "yes" if ok else "**no**"
    for key, rows in groups.items():
        for r in rows:
            met = goal_met(r)
            lines.append(f"| {titles[key]} | {r['seed']} | {r['limit']['beta']:g} | {yes(met['roc_auc'])} | "
                         f"{yes(met['average_precision'])} | {yes(met['time'])} | "
                         f"{'met' if all(met.values()) else '**missed**'} |")
    names = [name for name in SCORES if name in results[0]["limit"]["scores"]]
    lines += ["", "Every score of LIMIT's selected run, ROC AUC / average precision (%), seeds in order:", "",
              "| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, rows in groups.items():
        cells = [" / ".join(f"{100 * r['limit']['scores'][name]['roc_auc']:.1f}, "
                            f"{100 * r['limit']['scores'][name]['average_precision']:.1f}" for r in rows)
                 for name in names]
        lines.append(f"| {titles[key]} | " + " | ".join(cells) + " |")
    planted = {key: rows for key, rows in groups.items() if key[0] == "planted"}
    if planted:
        lines += ["", f"Planted wrong labels among the top {TOP} of all labelled images, seeds in order:", "",
                  "| setting | LIMIT (small-data rule) | CE loss (1 run) |", "|---|---|---|"]
        lines += [f"| {titles[key]} | " + " / ".join(str(r["limit"]["top"]) for r in rows) + " | " +
                  " / ".join(str(r["ce_loss"]["top"]) for r in rows) + " |" for key, rows in planted.items()]
    return "\n".join(lines)


def choose_default(results):
    """The rule for the default score, over LIMIT's scores on the development settings (the uniform one first):
    the largest ROC AUC + average precision summed over the settings, among the scores within one point of the
    uniform setting's best ROC AUC and average precision (class-dependent noise must not cost uniform noise)."""
    uniform, *_ = scores = [r["limit"]["scores"] for r in results]
    best = {m: max(v[m] for v in uniform.values()) for m in ("roc_auc", "average_precision")}
    keep = [name for name, v in uniform.items() if all(v[m] >= best[m] - 0.01 for m in best)]
    return max(keep, key=lambda name: sum(s[name]["roc_auc"] + s[name]["average_precision"] for s in scores))


def parse_setting(setting):
    noise, rate, n = setting.split(":")
    return noise, float(rate), int(n)


def add_detect_bench_arguments(parser):
    parser.description = "The benchmark of docs/label-issues.md, where its tables are."
    parser.add_argument("--out", default="results/detect_bench", help="output directory (runs, tables)")
    parser.add_argument("--data-dir", default="data", help="dataset directory")
    parser.add_argument("--settings", nargs="+", metavar="NOISE:RATE:N",
                        help="noise settings and training-set sizes (default: the five of docs/label-issues.md)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the split and noise (default 42 43)")
    parser.add_argument("--epochs", type=int, help="epoch budget of every model (default 20)")
    parser.add_argument("--patience", type=int, help="early-stopping patience (default: a quarter of --epochs, as "
                                                     "the paper's 100 of 400)")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size")
    parser.add_argument("--folds", type=int, help="cleanlab's cross-validation folds (default 5)")
    parser.add_argument("--limit-method", default="limit_l", help="LIMIT variant (default limit_l)")
    parser.add_argument("--betas", type=float, nargs="+", help="LIMIT's beta grid (default 1 10)")
    parser.add_argument("--quick", action="store_true", help="a small version (n = 300, 4 epochs, 2 folds, one seed)")
    parser.add_argument("--dev", action="store_true", help="only the development settings the default score was "
                                                           "chosen on (seed 41: uniform 0.3, n = 5000; asymmetric "
                                                           "0.4, n = 1000), and the rule")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch (default 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda ...")


def run_detect_bench(args):
    import torch
    torch.set_num_threads(args.threads)
    protocol = QUICK if args.quick else FULL
    cells = [] if args.quick or args.settings else [(DEV_SETTINGS[1], DEV_SEED)]  # the table's development cell
    for key, value in protocol.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.patience is None:
        args.patience = math.ceil(args.epochs / 4)  # the paper: patience 100 of 400 epochs
    cells = [(setting, seed) for setting in args.settings for seed in args.seeds] + cells
    if args.dev:
        cells = [(setting, DEV_SEED) for setting in DEV_SETTINGS]
    out = Path(args.out)
    results = []
    for setting, seed in cells:
        noise, rate, n = parse_setting(setting)
        result = bench_setting(noise, rate, n, seed, args, out / f"{noise}-{rate:g}-n{n}" / f"seed{seed}")
        results.append(result)
        title = setting_title(noise, rate, n)
        print(f"{title}, seed {seed} ({result['corrupted']} of {n} corrupted, β = {result['limit']['beta']:g}): " +
              ", ".join(f"{m} AUC {v['roc_auc']:.4f} AP {v['average_precision']:.4f} "
                        f"P@k {v['precision_at_k']:.4f} {v['seconds']:.0f}s"
                        for m, v in ((m, method_metrics(result, m)) for m in METHODS)), flush=True)
    if args.dev:
        for setting, result in zip(DEV_SETTINGS, results):
            print(f"LIMIT's scores, {setting}:")
            for name, m in result["limit"]["scores"].items():
                print(f"  {name:18s} ROC AUC {m['roc_auc']:.4f}  average precision {m['average_precision']:.4f}")
        print(f"default score by the rule (best ROC AUC + average precision over the settings, within a point of "
              f"the uniform one's best): {choose_default(results)}")
        return
    table = markdown_table(results, args.folds)
    (out / "detect_bench.md").write_text(table + "\n")
    (out / "detect_bench.json").write_text(json.dumps(results, indent=2))
    print(table)
