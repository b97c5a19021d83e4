"""The paper's figures from a run table and run directories; each is saved as ``out_prefix``.png and .pdf.

Curves are smoothed with a 1-D Gaussian filter (sigma = 2 epochs, as the authors' plotting helper), the raw
curve drawn faintly behind.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from scipy.ndimage import gaussian_filter1d  # noqa: E402

from limit.evaluate import detection_auc, normalise_runs, read_train_scores, selected_runs  # noqa: E402
from limit.fano import fano_lower_bound, label_entropy  # noqa: E402
from limit.paper import label, math_label, setting_title, variant_order  # noqa: E402

SMOOTHING_SIGMA = 2  # epochs


def save_figure(fig, out_prefix):
    """Save as PNG and PDF, close, and return the two paths."""
    paths = [Path(f"{out_prefix}.png"), Path(f"{out_prefix}.pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _subplots(nrows, ncols, **kwargs):
    with sns.axes_style("whitegrid"):
        return plt.subplots(nrows, ncols, squeeze=False, layout="constrained", **kwargs)


def _run_name(run_dir):
    return "/".join(Path(run_dir).parts[-4:])


def smooth(values, sigma=SMOOTHING_SIGMA):
    return gaussian_filter1d(np.asarray(values, dtype=float), sigma, mode="nearest")


def plot_curve(ax, epochs, values, curve_label, color):
    """Raw curve (faint) with its smoothed version (labelled) on top."""
    ax.plot(epochs, values, color=color, alpha=0.25, linewidth=0.8)
    ax.plot(epochs, smooth(values), color=color, linewidth=1.6, label=curve_label)


def read_history(run_dir):
    return pd.read_csv(Path(run_dir) / "history.csv")


def _curve_label(run):
    name = math_label(label(run.variant, run.method))
    return name if run.hparams == "default" else f"{name} ({run.hparams})"


def _first_seeds(chosen):
    """First-seed run of each variant, in the paper's method order."""
    first = chosen.sort_values("seed", kind="stable").drop_duplicates("variant").set_index("variant", drop=False)
    return first.loc[variant_order(dict(zip(first["variant"], first["method"])))]


def _accuracy_panels(axes, runs, columns, titles, ylabel="accuracy"):
    colors = sns.color_palette("tab10" if len(runs) <= 10 else "husl", len(runs))
    for color, run in zip(colors, runs.itertuples()):
        history = read_history(run.run_dir)
        for ax, column in zip(axes, columns):
            plot_curve(ax, history["epoch"], history[column], _curve_label(run), color)
    for ax, title in zip(axes, titles):
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)


def _setting_runs(chosen, dataset, noise, rate, n):
    mask = (chosen["dataset"] == dataset) & (chosen["noise"] == noise) & (chosen["n"] == str(n)) & np.isclose(
        chosen["rate"], rate)
    if not mask.any():
        raise ValueError(f"no runs for {dataset} {noise} p={rate} n={n}")
    return chosen[mask]


def figure_fano(out_prefix, k=10, rates=(0.2, 0.4, 0.6, 0.8)):
    """Figure 2: the lower bound r0 on the training error rate vs I(w; y|x)/n, uniform noise; returns the curves."""
    curves = []
    for p in rates:
        info = np.linspace(0, label_entropy(p, k), 1000)
        curves.append(pd.DataFrame({"p": p, "info_per_example": info, "r0": fano_lower_bound(info, p, k)}))
    curves = pd.concat(curves, ignore_index=True)
    fig, axes = _subplots(1, 1, figsize=(5.5, 4))
    ax = axes[0, 0]
    for p, curve in curves.groupby("p"):
        ax.plot(curve["info_per_example"], curve["r0"], label=f"p = {p:g}")
    ax.set(xlabel="I(w; y | x) / n  (bits)", ylabel="$r_0$, lower bound on the training error rate",
           title=f"Fano bound, {k} classes, uniform label noise", ylim=(0, None))
    ax.legend()
    save_figure(fig, out_prefix)
    return curves


def figure_memorisation(runs, out_prefix, rate=0.8):
    """Figure 1: noisy-label training accuracy and clean validation accuracy of the Figure-1 blocks' selected
    configuration of each variant (first seed), with the 1 - p optimum of the training accuracy."""
    runs = normalise_runs(runs)
    block = runs[runs["figure1"] & np.isclose(runs["rate"], rate)]
    if block.empty:
        raise ValueError(f"no runs of a Figure-1 block at rate {rate}")
    first = _first_seeds(selected_runs(block, experiments=tuple(block["experiment"].unique())))
    fig, axes = _subplots(1, 2, figsize=(11, 4))
    _accuracy_panels(axes[0], first, ["train_acc", "val_acc"],
                     ["training accuracy (noisy labels)", "validation accuracy (clean labels)"])
    axes[0, 0].axhline(1 - rate, color="black", linestyle="--", linewidth=1,
                       label=f"optimum (1 − p = {1 - rate:.0%})")
    row = first.iloc[0]
    fig.suptitle(f"Memorisation vs. regularisation: {setting_title(row.dataset, row.noise, rate, row.n)}")
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].legend(fontsize=8)
    save_figure(fig, out_prefix)
    return first


def figure_curves(runs, out_prefix, dataset="mnist", noise="uniform", rate=0.8, n="all"):
    """Figure 3: training and test accuracy per epoch of each method's selected configuration (first seed)."""
    first = _first_seeds(_setting_runs(selected_runs(runs), dataset, noise, rate, n))
    fig, axes = _subplots(1, 2, figsize=(12, 4.5))
    _accuracy_panels(axes[0], first, ["train_acc", "test_acc"],
                     ["training accuracy (noisy labels)", "test accuracy (clean labels)"])
    fig.suptitle(f"Training and test accuracy: {setting_title(dataset, noise, rate, n)}")
    axes[0, 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    save_figure(fig, out_prefix)
    return first


def figure_beta(runs, out_prefix, dataset="mnist", noise="uniform", rate=0.8, n="all", variants=("limit_g", "limit_l")):
    """Figure A0: LIMIT's training and test accuracy per epoch for every beta run (first seed each);
    one row of panels per variant."""
    runs = normalise_runs(runs)
    runs = _setting_runs(runs[~runs["figure1"]], dataset, noise, rate, n)
    runs = runs[runs["variant"].isin(variants)]
    shown = [v for v in variants if v in set(runs["variant"])]
    if not shown:
        raise ValueError(f"none of the variants {variants} ran at {dataset} {noise} p={rate} n={n}")
    fig, axes = _subplots(len(shown), 2, figsize=(11, 3.8 * len(shown)))
    for panels, variant in zip(axes, shown):
        block = runs[runs["variant"] == variant].sort_values(["beta", "seed"], kind="stable")
        first = block.drop_duplicates("hparams")
        colors = sns.color_palette("viridis", len(first))
        for color, run in zip(colors, first.itertuples()):
            history = read_history(run.run_dir)
            curve_label = f"β = {run.beta:g}" if np.isfinite(run.beta) else run.hparams
            plot_curve(panels[0], history["epoch"], history["train_acc"], curve_label, color)
            plot_curve(panels[1], history["epoch"], history["test_acc"], curve_label, color)
        name = math_label(label(variant))
        panels[0].set(title=f"{name}: training accuracy (noisy labels)", xlabel="epoch", ylabel="accuracy")
        panels[1].set(title=f"{name}: test accuracy", xlabel="epoch", ylabel="accuracy")
        panels[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Effect of β: {setting_title(dataset, noise, rate, n)}")
    save_figure(fig, out_prefix)
    return runs


def figure_histograms(run_dir, out_prefix, title=None):
    """Figures A1/A2: histograms of ‖μ‖ and ‖μ − g_CE‖ of training examples with correct vs incorrect labels.

    Returns the ROC AUC of ‖μ − g_CE‖ as a detector of incorrect labels (NaN when no label was corrupted).
    """
    scores = read_train_scores(run_dir)
    auc = detection_auc(scores["grad_distance"], scores["is_corrupted"])
    frame = pd.DataFrame({"mu_norm": scores["mu_norm"], "grad_distance": scores["grad_distance"],
                          "label": np.where(scores["is_corrupted"], "incorrect label", "correct label")})
    fig, axes = _subplots(1, 2, figsize=(11, 4))
    for ax, column, xlabel in [(axes[0, 0], "mu_norm", "‖μ‖, norm of the predicted gradient"),
                               (axes[0, 1], "grad_distance", "‖μ − g$_{CE}$‖, distance to the CE gradient")]:
        sns.histplot(frame, x=column, hue="label", hue_order=["correct label", "incorrect label"], bins=50,
                     stat="density", common_norm=False, element="step", ax=ax)
        ax.set(xlabel=xlabel, ylabel="density (per label group)")
    axes[0, 0].set_title("Figure A1: predicted-gradient norm")
    axes[0, 1].set_title(f"Figure A2: gradient distance (ROC AUC {100 * auc:.2f}%)")
    fig.suptitle(title or f"Training set, gradient predictions of {_run_name(run_dir)}")
    save_figure(fig, out_prefix)
    return auc


def figure_top_examples(run_dir, images, out_prefix, per_class=8, class_names=None, title=None):
    """Figures 4/A3: per given (noisy) label, the training examples with the largest ‖μ − g_CE‖.

    ``images``: uint8 array (N, C, H, W) of the official training set, indexed by the run's ``train_idx``;
    ``class_names``: optional names indexed by class. Returns the shown examples.
    """
    scores = read_train_scores(run_dir)
    names = dict(enumerate(class_names or []))
    shown = []
    for given in np.unique(scores["noisy_label"]):
        members = np.flatnonzero(scores["noisy_label"] == given)
        shown += list(members[np.argsort(-scores["grad_distance"][members], kind="stable")[:per_class]])
    examples = pd.DataFrame({key: scores[key][shown] for key in
                             ["train_idx", "noisy_label", "predicted", "true_label", "grad_distance"]})
    classes = list(examples["noisy_label"].unique())
    height = 1.7 * len(classes) + 0.5
    fig, axes = plt.subplots(len(classes), per_class, squeeze=False, figsize=(max(1.4 * per_class, 6), height))
    # fixed margins: constrained layout is slow on a grid of ~100 images
    fig.subplots_adjust(top=1 - 0.6 / height, bottom=0.02, hspace=0.45, wspace=0.1)
    for ax in axes.ravel():
        ax.axis("off")
    for row, given in enumerate(classes):
        for col, example in enumerate(examples[examples["noisy_label"] == given].itertuples()):
            image = images[example.train_idx]
            ax = axes[row, col]
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(image.transpose(1, 2, 0))
            ax.set_title(f"given: {names.get(int(given), given)}\npred: "
                         f"{names.get(int(example.predicted), example.predicted)}", fontsize=7)
    fig.suptitle(title or f"Largest ‖μ − g$_{{CE}}$‖ per given label, {_run_name(run_dir)}", fontsize=10,
                 y=1 - 0.1 / height)
    save_figure(fig, out_prefix)
    return examples
