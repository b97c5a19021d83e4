"""``python -m limit find-label-issues``: rank every labelled example of a finished run (training and
validation split) by how likely its label is wrong.

Scores (``SCORES``; higher = more suspect), all from one run: the paper's ||mu - g_CE|| (LIMIT runs), the
classifier's cross-entropy loss and margin on the given label at the selected epoch (one pass over the data after
training), the same two averaged over the epochs up to the selected one (recorded during training:
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
from limit.methods import loss_and_margin
from limit.models import build_networks
from limit.registry import DEFAULT_SCORE, SCORES
from limit.report.stats import detection_metrics
from limit.runs import rundir
from limit.runtime import load_checkpoint, pick_device
from limit.train import train

SPLITS = ("train", "val")


def load_models(run_dir, device):
    """A finished run's resolved config and its best-validation networks (q is None for non-LIMIT runs)."""
    run_dir = Path(run_dir)
    if not (run_dir / rundir.METRICS).exists():
        raise FileNotFoundError(f"{run_dir} is not a finished run (no metrics.json)")
    cfg = rundir.read_json(run_dir / rundir.CONFIG)
    best = load_checkpoint(run_dir / rundir.BEST)
    classifier, q = build_networks(cfg, D.dataset_info(cfg["dataset"]).num_classes)
    classifier.load_state_dict(best["classifier"])
    if q is not None:
        q.load_state_dict(best["q"])
    return cfg, classifier.to(device), q.to(device) if q is not None else None


@torch.no_grad()
def selected_scores(classifier, q, split, labels, batch_size, num_classes):
    """One pass of the selected networks over a split: the position of each example it could read, its predicted
    label, CE loss, margin and ||mu - g_CE||."""
    classifier.eval()
    if q is not None:
        q.eval()
    out = {"position": [], "predicted_label": [], "ce_loss": [], "margin": [], "grad_distance": []}
    for idx, x in split.batches(batch_size):
        logits, y = classifier(x).float(), labels[idx]
        loss, margin = loss_and_margin(logits, y)
        out["position"].append(idx)
        out["predicted_label"].append(logits.argmax(1))
        out["ce_loss"].append(loss)
        out["margin"].append(margin)
        if q is not None:  # ||y - s(q(x))||: q's predicted logit gradient against the given label's
            out["grad_distance"].append((F.one_hot(y, num_classes).float() - q(x).float().softmax(1)).norm(dim=1))
    return {k: torch.cat(v).cpu().numpy() for k, v in out.items() if v}


def rank_fraction(values):
    """Average ranks over n (1 = the largest value), ties sharing their mean rank."""
    return rankdata(values) / len(values)


def within_split(values, split):
    """Each split's values replaced by their rank fractions within that split."""
    out = np.empty(len(values))
    for name in SPLITS:
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
    arrays, _ = D.read_labels_file(cfg["labels"])
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
    epoch_scores = Path(run_dir) / rundir.EPOCH_SCORES
    if epoch_scores.exists():  # runs trained before epoch scores existed have none
        with np.load(epoch_scores) as f:
            for score, kind in (("ce_loss_avg", "loss"), ("margin_avg", "margin")):
                scores[score] = np.concatenate([f[f"{name}_{kind}"][part["position"]]
                                                for name, part in zip(SPLITS, parts)])
    components = [name for name in SCORES if name in scores]
    scores["rank_average"] = np.mean([within_split(scores[name], scores["split"]) for name in components], axis=0)
    return cfg, run_data, scores


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
    _, meta = D.read_labels_file(labels_path)
    return meta.get("noise") != "given"


def image_paths(cfg, run_data):
    """Per split, each example's image file (own images and streamed datasets), or None (built-in arrays)."""
    if cfg["dataset"] not in D.DATASETS:
        from limit.datasets.images import read_cache
        paths = read_cache(cfg["dataset"]).train_paths
        val_idx = D.read_labels_file(cfg["labels"])[0]["val_idx"]
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


def find_label_issues(run_dir, out_dir, top_k=24, device="cpu", score=None):
    """Write ``label_issues.csv``, ``gallery.png`` and ``summary.json`` into ``out_dir``; return the summary."""
    cfg, run_data, scores = example_scores(run_dir, device)
    score = score or DEFAULT_SCORE
    if score not in scores:
        have = [name for name in SCORES if name in scores]
        raise ValueError(f"run {run_dir} ({cfg['method']}) has no score {score!r}; it has {', '.join(have)} "
                         f"(--score NAME)")
    names = class_names(cfg["dataset"], run_data.num_classes)
    paths = image_paths(cfg, run_data)
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
    path_of = lambda i: paths[split[i]][scores["position"][i]] if paths is not None else ""
    for rank, i in enumerate(order, 1):
        row = [rank, split[i], int(scores["index"][i]), path_of(i), names[scores["given_label"][i]],
               names[scores["predicted_label"][i]], f"{ranked[i]:.6f}",
               *(f"{scores[name][i]:.9g}" for name in SCORES if name in scores)]  # float32 exactly
        writer.writerow(row + ([names[scores["true_label"][i]] if scores["true_label"][i] >= 0 else "",
                                int(scores["is_corrupted"][i])] if known else []))
    rundir.write_text(out / "label_issues.csv", table.getvalue())

    splits = {"train": run_data.train, "val": run_data.val}
    tiles = []
    for rank, i in enumerate(order[:top_k], 1):
        file = Path(path_of(i)).name or f"{split[i]} image {scores['index'][i]}"
        given, predicted = scores["given_label"][i], scores["predicted_label"][i]
        title = (f"#{rank} {file}\n{score} {scores[score][i]:.3g} ({split[i]})\n"
                 f"given: {names[given]}\npredicted: {names[predicted]}")
        tiles.append((tile_image(splits[split[i]], scores["position"][i], path_of(i)), title, given != predicted))
    plot_gallery(tiles, out / "gallery.png",
                 f"The {len(tiles)} labelled examples most suspect by {SCORES[score]} "
                 "(red: the classifier predicts another class)")
    summary = {"run_dir": str(run_dir), "score": score, "examples": len(order),
               "train_examples": int((split == "train").sum()), "val_examples": int((split == "val").sum()),
               "top_k": len(tiles)}
    if known:
        summary["corrupted"] = int(scores["is_corrupted"].sum())
        summary["detection"] = {name: detection_metrics(within_split(scores[name], split), scores["is_corrupted"])
                                for name in SCORES if name in scores}
    rundir.write_json(out / "summary.json", summary)
    return summary


def print_summary(summary, out_dir, rows=10):
    """The short summary: where the files are, the top suspects, and detection quality when it is known."""
    print(f"{summary['examples']} labelled examples ({summary['train_examples']} training, "
          f"{summary['val_examples']} validation) ranked by {SCORES[summary['score']]} ({summary['score']}) in "
          f"{out_dir}/label_issues.csv; the top {summary['top_k']} in {out_dir}/gallery.png")
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
    parser.add_argument("run", help="a finished run directory, LIMIT or CE (or where to train one with --config)")
    parser.add_argument("--score", choices=list(SCORES), default=DEFAULT_SCORE,
                        help="what to rank by (docs/label-issues.md): " +
                             ", ".join(f"{k} = {v}" for k, v in SCORES.items()))
    parser.add_argument("--config", help="YAML/JSON training config (the keys of a run's config.json) to train the "
                                         "run first")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--top-k", type=int, default=24, help="examples in the gallery")
    parser.add_argument("--device", default="cpu", help="cpu, cuda ...")


def run_find_label_issues(args):
    if args.config:  # train the LIMIT run first (resumes if it was killed)
        import yaml
        train({"data_dir": "data", **yaml.safe_load(Path(args.config).read_text())}, args.run)
    summary = find_label_issues(args.run, args.out, top_k=args.top_k, device=args.device, score=args.score)
    print_summary(summary, args.out)
