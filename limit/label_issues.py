"""``python -m limit find-label-issues``: rank every training example of a finished LIMIT run by how likely
its label is wrong.

The score is the paper's detector (Sec. 5, Fig. 4): ||mu - g_CE|| = ||y - s(q(x))||, the distance between the
label-free network q's prediction of the logit gradient and the cross-entropy gradient of the given label.
Two baselines from the run's classifier sit next to it: its cross-entropy loss on the given label and its
margin (the largest other class probability minus the given label's). All three are recomputed from
``best.pt``, so any finished LIMIT run works, old or new.
"""
import csv
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from limit import data as D
from limit import rundir
from limit.evaluate import detection_metrics
from limit.methods import Context
from limit.rundir import load_checkpoint
from limit.train import build_networks, limit_train_scores, load_run_data, pick_device, predict

CSV_COLUMNS = ["rank", "index", "path", "given_label", "predicted_label", "score", "ce_loss", "margin",
               "true_label", "is_corrupted"]


def load_models(run_dir, device):
    """A finished run's resolved config and its best-validation networks (q is None for non-LIMIT runs)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a finished run (no metrics.json)")
    cfg = rundir.read_json(run_dir / rundir.CONFIG)
    best = load_checkpoint(run_dir / "best.pt")
    classifier, q = build_networks(cfg, D.dataset_info(cfg["dataset"]).num_classes)
    classifier.load_state_dict(best["classifier"])
    if q is not None:
        q.load_state_dict(best["q"])
    return cfg, classifier.to(device), q.to(device) if q is not None else None


def loss_and_margin(logits, labels):
    """Per example: cross-entropy of the given label, and max other-class probability minus its probability."""
    probs = logits.softmax(1)
    given = probs.gather(1, labels[:, None]).squeeze(1)
    others = probs.scatter(1, labels[:, None], -1.0).max(1).values
    return F.cross_entropy(logits, labels, reduction="none"), others - given


def example_scores(run_dir, device="cpu"):
    """Per training example of a finished run: index into the dataset's training images, given/true/predicted
    label, CE loss, margin, and (LIMIT runs) the score ||mu - g_CE||."""
    device = pick_device(device)
    cfg, classifier, q = load_models(run_dir, device)
    run_data = load_run_data({**cfg, "device": str(device)}, device)
    logits = predict(classifier, run_data.train, cfg["batch_size"])
    ce_loss, margin = loss_and_margin(logits, run_data.train_noisy)
    scores = {"index": run_data.train_idx, "given_label": run_data.train_noisy.cpu().numpy(),
              "true_label": run_data.train_true.cpu().numpy(), "is_corrupted": run_data.is_corrupted.cpu().numpy(),
              "predicted_label": logits.argmax(1).cpu().numpy(),
              "ce_loss": ce_loss.cpu().numpy(), "margin": margin.cpu().numpy()}
    if q is not None:
        scores["score"] = limit_train_scores(Context(classifier, q), run_data, cfg["batch_size"])["grad_distance"]
    return cfg, run_data, scores


def class_names(dataset, num_classes):
    """Readable class names: an image cache's folder/label names, torchvision's for (Fashion-)MNIST, else numbers."""
    if dataset not in D.DATASETS:
        from limit.folder_data import cache_classes
        return cache_classes(dataset)
    import torchvision
    names = getattr(getattr(torchvision.datasets, D.DATASETS[dataset].torchvision_class, None), "classes", None)
    return list(names) if names and len(names) == num_classes else [str(k) for k in range(num_classes)]


def true_labels_known(labels_path):
    """Synthetic (or CIFAR-N) noise: the labels file knows which labels were changed."""
    _, meta = D.read_labels_file(labels_path)
    return meta.get("noise") != "given"


def plot_gallery(images, titles, path, caption):
    """The top suspects as a grid of images, each titled with its given and predicted class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(8, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        image = image.transpose(1, 2, 0)
        grey = image.shape[2] == 1
        ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def find_label_issues(run_dir, out_dir, top_k=24, device="cpu"):
    """Write ``label_issues.csv``, ``gallery.png`` and ``summary.json`` into ``out_dir``; return the summary."""
    cfg, run_data, scores = example_scores(run_dir, device)
    if "score" not in scores:
        raise ValueError(f"{run_dir} is a {cfg['method']!r} run; find-label-issues needs a LIMIT run (limit_*)")
    names = class_names(cfg["dataset"], run_data.num_classes)
    paths = None
    if cfg["dataset"] not in D.DATASETS:
        from limit.folder_data import read_cache
        paths = read_cache(cfg["dataset"]).train_paths
    order = np.argsort(-scores["score"], kind="stable")
    known = true_labels_known(cfg["labels"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(CSV_COLUMNS if known else CSV_COLUMNS[:-2])
    for rank, i in enumerate(order, 1):
        index = int(scores["index"][i])
        row = [rank, index, paths[index] if paths is not None else "", names[scores["given_label"][i]],
               names[scores["predicted_label"][i]], f"{scores['score'][i]:.6f}", f"{scores['ce_loss'][i]:.6f}",
               f"{scores['margin'][i]:.6f}"]
        writer.writerow(row + ([names[scores["true_label"][i]], int(scores["is_corrupted"][i])] if known else []))
    rundir.write_text(out / "label_issues.csv", table.getvalue())

    top = order[:top_k]
    images = run_data.train.x[torch.as_tensor(top, device=run_data.train.x.device)].cpu().numpy()
    titles = [f"#{r} given: {names[scores['given_label'][i]]}\npredicted: {names[scores['predicted_label'][i]]}"
              for r, i in enumerate(top, 1)]
    plot_gallery(images, titles, out / "gallery.png",
                 f"The {len(top)} training examples whose labels LIMIT finds most suspect "
                 r"(largest $\|\mu - g_{\mathrm{CE}}\|$)")
    summary = {"run_dir": str(run_dir), "examples": len(order), "top_k": len(top)}
    if known:
        summary["corrupted"] = int(scores["is_corrupted"].sum())
        summary["detection"] = {name: detection_metrics(scores[key], scores["is_corrupted"])
                                for name, key in [("limit", "score"), ("ce_loss", "ce_loss"), ("margin", "margin")]}
    rundir.write_json(out / "summary.json", summary)
    return summary


def print_summary(summary, out_dir, rows=10):
    """The short summary: where the files are, the top suspects, and detection quality when it is known."""
    print(f"{summary['examples']} training examples ranked by ‖μ − g_CE‖ in {out_dir}/label_issues.csv; "
          f"the top {summary['top_k']} in {out_dir}/gallery.png")
    with open(Path(out_dir) / "label_issues.csv", newline="") as f:
        for row, _ in zip(csv.DictReader(f), range(rows)):
            print(f"  #{row['rank']:>3} index {row['index']:>6}  given {row['given_label']} -> predicted "
                  f"{row['predicted_label']}  score {float(row['score']):.3f}  {row['path']}")
    if "detection" in summary:
        print(f"true labels known: {summary['corrupted']} of {summary['examples']} labels corrupted (k)")
        for name, m in summary["detection"].items():
            print(f"  {name:8s} ROC AUC {m['roc_auc']:.4f}  average precision {m['average_precision']:.4f}  "
                  f"precision@k {m['precision_at_k']:.4f}")
