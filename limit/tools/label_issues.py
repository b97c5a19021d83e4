"""``python -m limit find-label-issues``: rank every labelled example of a finished run (training and
validation split) by how likely its label is wrong.

Scores (``SCORES``; higher = more suspect), all from one run: the posterior that an example's clean class differs
from its given label, under the noise transition estimated from the classifier's predictions on the training split
(``methods.noise_transition``), the paper's ||mu - g_CE|| (LIMIT runs), the classifier's cross-entropy loss and
margin on the given label at the selected epoch (one pass over the data after training), the same two averaged
over the epochs up to the selected one (recorded during training:
``epoch_scores.npz``), and a rank average of the others. The validation examples were never trained on, so their
losses are larger: every score is turned into its rank fraction within its own split (1 = the most suspect of the
split) before the two splits are merged into one ranking. A random train/validation split gives both the same
share of wrong labels, so a rank fraction means the same in both.
"""
import csv
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from limit import data as D
from limit import labels as L
from limit.methods import loss_and_margin, mislabel_posterior, noise_transition
from limit.models import build_networks
from limit.registry import DEFAULT_SCORE, SCORES
from limit.report.stats import detection_metrics
from limit.runs import rundir
from limit.runtime import load_checkpoint, pick_device
from limit.train import train

SPLITS = ("train", "val")


def finished_metrics(run_dir):
    """A finished run's metrics.json (written last)."""
    path = Path(run_dir) / rundir.METRICS
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a finished run (no {rundir.METRICS})")
    return rundir.read_json(path)


def select_run(run_dirs):
    """Of several runs (a β grid of one data setting and seed), the one with the best noisy validation accuracy
    (the first of equals), as the paper selects β; and every run's accuracy."""
    accuracy = {str(d): finished_metrics(d)[rundir.BEST_VAL_ACC] for d in run_dirs}
    return max(accuracy, key=lambda d: -np.inf if accuracy[d] is None else accuracy[d]), accuracy


def load_models(run_dir, device):
    """A finished run's resolved config and its best-validation networks (q is None for non-LIMIT runs)."""
    run_dir = Path(run_dir)
    finished_metrics(run_dir)
    cfg = rundir.read_json(run_dir / rundir.CONFIG)
    best = load_checkpoint(run_dir / rundir.BEST)
    classifier, q = build_networks(cfg, D.dataset_info(cfg["dataset"]).num_classes)
    classifier.load_state_dict(best["classifier"])
    if q is not None:
        q.load_state_dict(best["q"])
    return cfg, classifier.to(device), q.to(device) if q is not None else None


@torch.no_grad()
def selected_scores(classifier, q, split, labels, batch_size, num_classes):
    """One pass of the selected networks over a split: the position of each example it could read, its
    probabilities, predicted label, CE loss, margin and ||mu - g_CE||."""
    classifier.eval()
    if q is not None:
        q.eval()
    out = {"position": [], "probs": [], "predicted_label": [], "ce_loss": [], "margin": [], "grad_distance": []}
    for idx, x in split.batches(batch_size):
        logits, y = classifier(x).float(), labels[idx]
        loss, margin = loss_and_margin(logits, y)
        out["position"].append(idx)
        out["probs"].append(logits.softmax(1))
        out["predicted_label"].append(logits.argmax(1))
        out["ce_loss"].append(loss)
        out["margin"].append(margin)
        if q is not None:  # ||y - s(q(x))||: q's predicted logit gradient against the given label's
            out["grad_distance"].append((F.one_hot(y, num_classes).float() - q(x).float().softmax(1)).norm(dim=1))
    return {k: torch.cat(v).cpu().numpy() for k, v in out.items() if v}


def class_noise_scores(probs, given, split):
    """Scores for class-dependent noise from the classifier's probabilities of every example: the posterior that
    its clean class differs from its given label, under the noise transition estimated on the training split."""
    train_part = split == "train"
    transition = noise_transition(probs[train_part], given[train_part])
    return {"mislabel_posterior": mislabel_posterior(probs, given, transition)}


def rank_fraction(values):
    """Average ranks over n (1 = the largest value), ties sharing their mean rank."""
    return rankdata(values) / len(values)


def within_split(values, split):
    """Each split's values replaced by their rank fractions within that split."""
    out = np.empty(len(values))
    for name in np.unique(split):
        mask = split == name
        if mask.any():
            out[mask] = rank_fraction(values[mask])
    return out


def example_scores(run_dir, device="cpu"):
    """Per labelled example of a finished run (training examples first, then validation; an image the split cannot
    read has no prediction and is left out): split, index into the dataset's training images, given/true/predicted
    label, is_corrupted, and the raw value of every score the run has (see ``SCORES``; ``rank_average`` from
    within-split ranks)."""
    device = pick_device(device)
    cfg, classifier, q = load_models(run_dir, device)
    run_data = D.load_run_data({**cfg, "device": str(device)}, device)
    arrays, _ = L.read_labels_file(cfg["labels"])
    given = {"train": arrays["train_noisy"], "val": arrays["val_noisy"]}
    parts = []
    for name, split in zip(SPLITS, (run_data.train, run_data.val)):
        labels = torch.as_tensor(given[name], dtype=torch.int64, device=device)
        part = selected_scores(classifier, q, split, labels, cfg["batch_size"], run_data.num_classes)
        at = part["position"]
        part.update(split=np.full(len(at), name), index=arrays[f"{name}_idx"][at], given_label=given[name][at],
                    true_label=arrays[f"{name}_true"][at], is_corrupted=arrays[f"{name}_corrupted" if name == "val"
                                                                             else "is_corrupted"][at].astype(bool))
        parts.append(part)
    scores = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    scores.update(class_noise_scores(scores.pop("probs"), scores["given_label"], scores["split"]))
    epoch_scores = Path(run_dir) / rundir.EPOCH_SCORES
    if epoch_scores.exists():  # runs trained before epoch scores existed have none
        with np.load(epoch_scores) as f:
            for score, kind in (("ce_loss_avg", "loss"), ("margin_avg", "margin")):
                scores[score] = np.concatenate([f[f"{name}_{kind}"][part["position"]]
                                                for name, part in zip(SPLITS, parts)])
    components = [name for name in SCORES if name in scores]
    scores["rank_average"] = np.mean([within_split(scores[name], scores["split"]) for name in components], axis=0)
    return cfg, run_data, scores


def fold_labels(arrays, folds, seed):
    """Small data: every labelled example (training and validation split together) in one of ``folds`` seeded
    folds; fold k's labels hold it out as their validation split and train on the rest."""
    joined = {key: np.concatenate([arrays[f"train_{key}"], arrays[f"val_{key}"]]) for key in ("idx", "true", "noisy")}
    corrupted = np.concatenate([arrays["is_corrupted"], arrays["val_corrupted"]])
    fold = np.random.default_rng(seed).permutation(len(corrupted)) % folds
    parts = []
    for k in range(folds):
        held = fold == k
        part = {**arrays, "is_corrupted": corrupted[~held], "val_corrupted": corrupted[held]}
        for key, values in joined.items():
            part[f"train_{key}"], part[f"val_{key}"] = values[~held], values[held]
        parts.append(part)
    return parts


def train_folds(config, run, folds):
    """One run per fold (``run/fold<k>``, each resumable) from a training config; returns their directories."""
    arrays, meta = L.read_labels_file(config["labels"])
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(fold_labels(arrays, folds, config.get("seed", 42))):
        L.write_labels_file(run / f"fold{k}.npz", part, dict(meta, fold=k, folds=folds))
        train({**config, "labels": str(run / f"fold{k}.npz")}, run / f"fold{k}")
    return [run / f"fold{k}" for k in range(folds)]


def split_sources(cfg, run_data):
    """Per split of a run: the split (its images) and each example's image file, or None (built-in arrays)."""
    paths = image_paths(cfg, run_data)
    return {name: (split, paths[name] if paths else None) for name, split in zip(SPLITS, (run_data.train,
                                                                                          run_data.val))}


def held_out_scores(fold_dirs, device):
    """Every labelled example scored by the fold run that held it out (its validation split), the split named
    after the fold; the first fold's config; the sources of the folds' validation splits."""
    parts, sources, configs = [], {}, []
    for k, run_dir in enumerate(fold_dirs):
        cfg, run_data, scores = example_scores(run_dir, device)
        held = scores["split"] == "val"
        parts.append({**{name: values[held] for name, values in scores.items()},
                      "split": np.full(held.sum(), f"fold{k}")})
        sources[f"fold{k}"] = split_sources(cfg, run_data)["val"]
        configs.append(cfg)
    return configs[0], {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, sources


def class_names(dataset, num_classes):
    """Readable class names: an image cache's folder/label names, torchvision's for (Fashion-)MNIST, else numbers."""
    if dataset not in D.DATASETS:
        from limit.datasets.images import cache_classes
        return cache_classes(dataset)
    import torchvision
    names = getattr(getattr(torchvision.datasets, D.DATASETS[dataset].torchvision_class, None), "classes", None)
    return list(names) if names and len(names) == num_classes else [str(k) for k in range(num_classes)]


def true_labels_known(labels_path):
    """Synthetic (or CIFAR-N) noise: the labels file knows which labels were changed."""
    _, meta = L.read_labels_file(labels_path)
    return meta.get("noise") != "given"


def image_paths(cfg, run_data):
    """Per split, each example's image file (own images and streamed datasets), or None (built-in arrays)."""
    if cfg["dataset"] not in D.DATASETS:
        from limit.datasets.images import read_cache
        paths = read_cache(cfg["dataset"]).train_paths
        val_idx = L.read_labels_file(cfg["labels"])[0]["val_idx"]
        return {name: [paths[i] for i in idx] for name, idx in (("train", run_data.train_idx), ("val", val_idx))}
    if hasattr(run_data.train, "paths"):  # streamed from disk (Clothing1M): relative to the release
        return {name: [str(split.root / p) for p in split.paths]
                for name, split in zip(SPLITS, (run_data.train, run_data.val))}
    return None


def tile_image(split, position, path, side=112):
    """uint8 (C, H, W): from memory when the split holds its images, else read from disk and shrunk to ``side``."""
    if hasattr(split, "x"):
        return split.x[position].cpu().numpy()
    from PIL import Image
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side))
        return np.asarray(image).transpose(2, 0, 1)


def plot_gallery(tiles, path, caption):
    """The top suspects as a grid of images titled with file name, score, given and predicted class; tiles
    whose prediction differs from the given label get a red frame and a red title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(6, len(tiles))
    rows = -(-len(tiles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.5 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, title, differs) in zip(axes.flat, tiles):
        image = image.transpose(1, 2, 0)
        grey = image.shape[2] == 1
        ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        color = "red" if differs else "0.6"
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(3 if differs else 1)
        ax.set_title(title, fontsize=6.5, color="red" if differs else "black")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def find_label_issues(run_dirs, out_dir, top_k=24, device="cpu", score=None, held_out=False):
    """Write ``label_issues.csv``, ``gallery.png`` and ``summary.json`` into ``out_dir``; return the summary.
    ``run_dirs``: one run, or the runs of a β grid (one data setting and seed): ``select_run`` picks the one
    ranked; with ``held_out``, fold runs (``train_folds``), each ranking the examples it held out."""
    run_dir, accuracy = select_run(run_dirs)
    if held_out:
        run_dir = str(Path(run_dirs[0]).parent)
        cfg, scores, sources = held_out_scores(run_dirs, device)
    else:
        cfg, run_data, scores = example_scores(run_dir, device)
        sources = split_sources(cfg, run_data)
    score = score or DEFAULT_SCORE
    if score not in scores:
        have = [name for name in SCORES if name in scores]
        raise ValueError(f"run {run_dir} ({cfg['method']}) has no score {score!r}; it has {', '.join(have)} "
                         f"(--score NAME)")
    names = class_names(cfg["dataset"], D.dataset_info(cfg["dataset"]).num_classes)
    split = scores["split"]
    ranked = within_split(scores[score], split)  # what the two splits are merged by
    order = np.lexsort((-scores[score], -ranked))
    known = true_labels_known(cfg["labels"])
    columns = ["rank", "split", "index", "path", "given_label", "predicted_label", "score",
               *(name for name in SCORES if name in scores), *(["true_label", "is_corrupted"] if known else [])]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(columns)
    path_of = lambda i: sources[split[i]][1][scores["position"][i]] if sources[split[i]][1] else ""
    for rank, i in enumerate(order, 1):
        row = [rank, split[i], int(scores["index"][i]), path_of(i), names[scores["given_label"][i]],
               names[scores["predicted_label"][i]], f"{ranked[i]:.6f}",
               *(f"{scores[name][i]:.9g}" for name in SCORES if name in scores)]  # float32 exactly
        writer.writerow(row + ([names[scores["true_label"][i]] if scores["true_label"][i] >= 0 else "",
                                int(scores["is_corrupted"][i])] if known else []))
    rundir.write_text(out / "label_issues.csv", table.getvalue())

    tiles = []
    for rank, i in enumerate(order[:top_k], 1):
        file = Path(path_of(i)).name or f"{split[i]} image {scores['index'][i]}"
        given, predicted = scores["given_label"][i], scores["predicted_label"][i]
        title = (f"#{rank} {file}\n{score} {scores[score][i]:.3g} ({split[i]})\n"
                 f"given: {names[given]}\npredicted: {names[predicted]}")
        tiles.append((tile_image(sources[split[i]][0], scores["position"][i], path_of(i)), title,
                      given != predicted))
    plot_gallery(tiles, out / "gallery.png",
                 f"The {len(tiles)} labelled examples most suspect by {SCORES[score]}, run "
                 f"{rundir.identity(cfg)['hparams']} (red: the classifier predicts another class)")
    summary = {"run_dir": run_dir, "hparams": rundir.identity(cfg)["hparams"], "val_acc": accuracy.get(run_dir),
               "runs_val_acc": accuracy, "score": score, "examples": len(order),
               "train_examples": int((split == "train").sum()), "val_examples": int((split == "val").sum()),
               "folds": len(run_dirs) if held_out else 0, "top_k": len(tiles)}
    if known:
        summary["corrupted"] = int(scores["is_corrupted"].sum())
        summary["detection"] = {name: detection_metrics(within_split(scores[name], split), scores["is_corrupted"])
                                for name in SCORES if name in scores}
    rundir.write_json(out / "summary.json", summary)
    return summary


def print_summary(summary, out_dir, rows=10):
    """The short summary: which run ranks, where the files are, the top suspects, and detection quality when it is
    known."""
    runs = summary["runs_val_acc"]
    if summary["folds"]:
        print(f"ranked by {summary['folds']} fold runs in {summary['run_dir']} ({summary['hparams']}), each "
              f"example by the run that held it out")
    else:
        print(f"ranked with {summary['run_dir']} ({summary['hparams']}" +
              (f": the best noisy validation accuracy, {summary['val_acc']:.4f}, of {len(runs)} runs: " +
               ", ".join(f"{d} {acc:.4f}" for d, acc in runs.items()) if len(runs) > 1 else "") + ")")
    splits = ("each held out by a fold run" if summary["folds"] else
              f"{summary['train_examples']} training, {summary['val_examples']} validation")
    print(f"{summary['examples']} labelled examples ({splits}) ranked by {SCORES[summary['score']]} "
          f"({summary['score']}) in {out_dir}/label_issues.csv; the top {summary['top_k']} in {out_dir}/gallery.png")
    with open(Path(out_dir) / "label_issues.csv", newline="") as f:
        for row, _ in zip(csv.DictReader(f), range(rows)):
            print(f"  #{row['rank']:>3} {row['split']:5s} index {row['index']:>6}  given {row['given_label']} -> "
                  f"predicted {row['predicted_label']}  {summary['score']} {float(row[summary['score']]):.3f}  "
                  f"{row['path']}")
    if "detection" in summary:
        print(f"true labels known: {summary['corrupted']} of {summary['examples']} labels corrupted (k)")
        for name, m in summary["detection"].items():
            print(f"  {name:13s} ROC AUC {m['roc_auc']:.4f}  average precision {m['average_precision']:.4f}  "
                  f"precision@k {m['precision_at_k']:.4f}")


def add_find_label_issues_arguments(parser):
    parser.description = ("Writes label_issues.csv (every training and validation example ranked by --score, with "
                          "every score of the run), gallery.png (the top-k suspects) and summary.json into --out, "
                          "and prints a short summary.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a finished run directory, LIMIT or CE (or where to train one with --config); several "
                             "runs (a beta grid of one data setting and seed): the one with the best noisy "
                             "validation accuracy is ranked")
    parser.add_argument("--score", choices=list(SCORES), default=DEFAULT_SCORE,
                        help="what to rank by (docs/label-issues.md): " +
                             ", ".join(f"{k} = {v}" for k, v in SCORES.items()))
    parser.add_argument("--config", help="YAML/JSON training config (the keys of a run's config.json) to train the "
                                         "run first")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="small data (docs/label-issues.md): train K runs from --config into RUN/fold<k>, each "
                             "holding out a K-th of the labelled examples as its validation split, and rank every "
                             "example by the run that held it out")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--top-k", type=int, default=24, help="examples in the gallery")
    parser.add_argument("--device", default="cpu", help="cpu, cuda ...")


def run_find_label_issues(args):
    if args.config and len(args.runs) > 1:
        raise ValueError("--config trains one run: give one run directory")
    if args.folds is not None and (not args.config or args.folds < 2):
        raise ValueError("--folds K trains K >= 2 runs from a training config: give --config")
    if args.config:  # train the LIMIT run(s) first (resumes if killed)
        import yaml
        config = {"data_dir": "data", **yaml.safe_load(Path(args.config).read_text())}
        if args.folds:
            args.runs = train_folds(config, args.runs[0], args.folds)
        else:
            train(config, args.runs[0])
    summary = find_label_issues(args.runs, args.out, top_k=args.top_k, device=args.device, score=args.score,
                                held_out=bool(args.folds))
    print_summary(summary, args.out)
