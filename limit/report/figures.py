"""The paper's figures from a run table and run directories; each is saved as ``out_prefix``.png and .pdf, and
the data it draws as ``out_prefix``.csv (to check it, or to draw it again).

Accuracy curves (Figures 1, 3, A0) are the mean over seeds with a bootstrap 95% confidence band of that mean
(1000 resamples of the seeds, fixed seed: the figure is reproducible; no band with one seed); a dot marks each
seed's selected (best-validation) epoch, the checkpoint evaluated on the test set. Smoothing is off unless asked
for.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.ndimage import gaussian_filter1d  # noqa: E402

from limit.registry import HPARAMS  # noqa: E402
from limit.report.fano import fano_lower_bound, label_entropy  # noqa: E402
from limit.report.paper import configuration_label, math_label, number_text, variant_order  # noqa: E402
from limit.report.selection import normalise_runs, selected_runs  # noqa: E402
from limit.report.stats import detection_auc, read_train_scores  # noqa: E402
from limit.runs import rundir  # noqa: E402

BAND_PERCENTILES = (2.5, 97.5)  # the 95% bootstrap confidence interval of the mean over seeds
N_BOOT = 1000
BAND_SEED = 0
SMOOTHING_SIGMA = 2  # epochs, when smoothing is asked for (the authors' plotting helper used 2)
SELECTED_EPOCH = dict(marker="o", s=28, edgecolor="black", linewidth=0.6, zorder=4)


def save_figure(fig, out_prefix, data):
    """Save as PNG and PDF, and the data drawn (a frame) as CSV; close; return the three paths."""
    paths = [Path(f"{out_prefix}.png"), Path(f"{out_prefix}.pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    data.to_csv(f"{out_prefix}.csv", index=False)
    return [*paths, Path(f"{out_prefix}.csv")]


def _subplots(nrows, ncols, **kwargs):
    with sns.axes_style("whitegrid"):
        return plt.subplots(nrows, ncols, squeeze=False, layout="constrained", **kwargs)


def _run_name(run_dir):
    return "/".join(Path(run_dir).parts[-4:])


def smooth(values, sigma=SMOOTHING_SIGMA):
    return gaussian_filter1d(np.asarray(values, dtype=float), sigma, mode="nearest")


def read_history(run_dir):
    return pd.read_csv(Path(run_dir) / rundir.HISTORY)


def run_hparams(run):
    """The hyperparameters a run's grid set (name -> value)."""
    return {c: getattr(run, c) for c in HPARAMS if pd.notna(getattr(run, c, np.nan))}


def _curve_label(run):
    return math_label(configuration_label(run.variant, run.method, run_hparams(run)))


def _in_method_order(runs):
    """Runs sorted by variant in the paper's method order, then by seed."""
    order = variant_order(dict(zip(runs["variant"], runs["method"])))
    return runs.assign(_order=runs["variant"].map(order.index)).sort_values(["_order", "seed"], kind="stable")


def run_curves(runs, curve_labels, smoothing=None):
    """Every epoch of every run in one long frame: history columns, ``curve`` (its label), ``seed``,
    ``best_epoch`` (the run table's) and ``test_curve_size`` (the run's config.json); ``smoothing``: optional Gaussian
    sigma in epochs."""
    frames = []
    for run, curve in zip(runs.itertuples(), curve_labels):
        history = read_history(run.run_dir)
        if smoothing:
            for column in history.columns.drop(rundir.EPOCH):
                history[column] = smooth(history[column], smoothing)
        config = rundir.read_json(Path(run.run_dir) / rundir.CONFIG)
        frames.append(history.assign(curve=curve, seed=run.seed, **{rundir.BEST_EPOCH: int(run.best_epoch)},
                                     test_curve_size=config.get("test_curve_size")))
    return pd.concat(frames, ignore_index=True)


def mean_band(curves, column):
    """Per curve and epoch: the mean of ``column`` over seeds, the bootstrap 95% band of that mean (NaN with one
    seed; resamples of the seeds from a fixed seed) and the seeds."""
    rng = np.random.default_rng(BAND_SEED)
    rows = []
    for (curve, epoch), group in curves.dropna(subset=[column]).groupby(["curve", rundir.EPOCH], sort=False):
        values = group[column].to_numpy(float)
        low = high = np.nan
        if len(values) > 1:
            means = values[rng.integers(0, len(values), (N_BOOT, len(values)))].mean(axis=1)
            low, high = np.percentile(means, BAND_PERCENTILES)
        rows.append({"curve": curve, rundir.EPOCH: epoch, "value": values.mean(), "band_low": low, "band_high": high,
                     "seeds": " ".join(map(str, group["seed"]))})
    return pd.DataFrame(rows, columns=["curve", rundir.EPOCH, "value", "band_low", "band_high", "seeds"])


def plot_mean_curves(ax, curves, column, palette):
    """Mean over seeds per curve with its bootstrap band, and a dot at each seed's selected epoch on the mean.
    Returns what it drew: a ``mean`` row per curve and epoch, a ``selected epoch`` row per dot."""
    band = mean_band(curves, column)
    drawn = [band.assign(kind="mean")]
    for curve, color in palette.items():
        line = band[band["curve"] == curve]
        epochs = line[rundir.EPOCH]
        ax.plot(epochs, line["value"], color=color, linewidth=1.6)
        if line["band_low"].notna().any():
            ax.fill_between(epochs, line["band_low"], line["band_high"], color=color, alpha=0.2, linewidth=0)
        best = curves[curves["curve"] == curve].groupby(rundir.BEST_EPOCH)["seed"].unique()
        dots = line.set_index(rundir.EPOCH)["value"].reindex(best.index)
        ax.scatter(dots.index, dots, color=color, **SELECTED_EPOCH)
        drawn.append(pd.DataFrame({"curve": curve, rundir.EPOCH: dots.index, "value": dots.to_numpy(),
                                   "seeds": [" ".join(map(str, seeds)) for seeds in best], "kind": "selected epoch"}))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return pd.concat(drawn, ignore_index=True).assign(panel=column)


def curve_legend(ax, palette, curves, **kwargs):
    """One entry per curve (with "1 seed" where a curve has one seed among curves with more), plus the
    selected-epoch dot."""
    seeds = curves.groupby("curve")["seed"].nunique()
    mixed = seeds.max() > 1
    handles = [Line2D([], [], color=color, linewidth=1.6,
                      label=f"{curve} (1 seed)" if mixed and seeds[curve] == 1 else curve)
               for curve, color in palette.items()]
    handles.append(Line2D([], [], color="white", marker="o", markerfacecolor="grey", markeredgecolor="black",
                          label="selected epoch (best validation)"))
    ax.legend(handles=handles, fontsize=8, **kwargs)


def seeds_note(curves, smoothing=None):
    """What the curves are: which seeds, the band, the test subset, smoothing."""
    seeds = sorted(curves["seed"].unique())
    if curves.groupby("curve")["seed"].nunique().max() > 1:
        note = (f"mean over seeds {', '.join(map(str, seeds))}; band: bootstrap 95% CI of the mean "
                f"({N_BOOT} resamples)")
    else:
        note = f"1 seed ({', '.join(map(str, seeds))}), no band"
    if rundir.TEST_ACC in curves and curves[rundir.TEST_ACC].notna().any():
        sizes = curves["test_curve_size"].dropna().unique()
        note += (f"; test accuracy per epoch on the first {int(sizes[0]):,} test images" if len(sizes) == 1
                 else "; test accuracy per epoch on the full test set")
    if smoothing:
        note += f"; smoothed (Gaussian, σ = {smoothing:g} epochs)"
    return note


def _palette(curve_labels, name="tab10"):
    colors = sns.color_palette(name if len(curve_labels) <= 10 else "husl", len(curve_labels))
    return dict(zip(curve_labels, colors))


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
    save_figure(fig, out_prefix, curves)
    return curves


def _accuracy_figure(runs, columns, titles, title, smoothing, figsize, legend_panel, **legend):
    """Panels of mean curves (one column of the history each) for the given runs, one curve per variant."""
    runs = _in_method_order(runs)
    labels = [_curve_label(run) for run in runs.itertuples()]
    curves = run_curves(runs, labels, smoothing)
    palette = _palette(list(dict.fromkeys(labels)))
    fig, axes = _subplots(1, len(columns), figsize=figsize)
    drawn = []
    for ax, column, panel_title in zip(axes[0], columns, titles):
        drawn.append(plot_mean_curves(ax, curves, column, palette))
        ax.set(title=panel_title, xlabel="epoch", ylabel="accuracy")
    fig.suptitle(f"{title}\n{seeds_note(curves[['curve', 'seed', 'test_curve_size'] + columns], smoothing)}",
                 fontsize=10)
    curve_legend(axes[0, legend_panel], palette, curves, **legend)
    return fig, axes, runs, pd.concat(drawn, ignore_index=True)


def figure_memorisation(runs, out_prefix, rate=0.8, smoothing=None):
    """Figure 1: noisy-label training accuracy and clean validation accuracy of the Figure-1 block's selected
    configuration of each variant (mean over seeds), with the 1 - p optimum of the training accuracy."""
    runs = normalise_runs(runs)
    block = runs[runs[rundir.FIGURE1] & np.isclose(runs["rate"], rate)]
    if block.empty:
        raise ValueError(f"no runs of a Figure-1 block at rate {rate}")
    chosen = selected_runs(block, experiments=tuple(block["experiment"].unique()))
    row = chosen.iloc[0]
    setting = rundir.setting_text(row.dataset, row.noise, rate, row.n, style="title")
    fig, axes, shown, drawn = _accuracy_figure(
        chosen, [rundir.TRAIN_ACC, rundir.VAL_ACC],
        ["training accuracy (noisy labels)", "validation accuracy (clean labels)"],
        f"Memorisation vs. regularisation: {setting}", smoothing, (11, 4.2), 1, loc="lower right")
    axes[0, 0].axhline(1 - rate, color="black", linestyle="--", linewidth=1)
    axes[0, 0].annotate(f"optimum 1 − p = {1 - rate:.0%}", (0, 1 - rate), xytext=(2, 3),
                        textcoords="offset points", fontsize=8)
    optimum = pd.DataFrame([{"panel": rundir.TRAIN_ACC, "kind": "optimum 1 - p", "value": 1 - rate}])
    save_figure(fig, out_prefix, pd.concat([drawn, optimum], ignore_index=True))
    return shown


def figure_curves(runs, out_prefix, dataset="mnist", noise="uniform", rate=0.8, n="all", smoothing=None):
    """Figure 3: training and test accuracy per epoch of each method's selected configuration (mean over
    seeds)."""
    chosen = _setting_runs(selected_runs(runs), dataset, noise, rate, n)
    setting = rundir.setting_text(dataset, noise, rate, n, style="title")
    fig, axes, shown, drawn = _accuracy_figure(
        chosen, [rundir.TRAIN_ACC, rundir.TEST_ACC],
        ["training accuracy (noisy labels)", "test accuracy (clean labels)"],
        f"Training and test accuracy: {setting}", smoothing, (12, 4.5), 1,
        loc="center left", bbox_to_anchor=(1.02, 0.5))
    save_figure(fig, out_prefix, drawn)
    return shown


def figure_beta(runs, out_prefix, dataset="mnist", noise="uniform", rate=0.8, n="all", variants=("limit_g", "limit_l"),
                smoothing=None):
    """Figure A0: LIMIT's training and test accuracy per epoch for every β (mean over seeds); one row of
    panels per variant; the β selected on validation is marked in the legend."""
    runs = normalise_runs(runs)  # its ``selected`` column: the decisions of `limit select`
    runs = _setting_runs(runs[~runs[rundir.FIGURE1]], dataset, noise, rate, n)
    runs = runs[runs["variant"].isin(variants)]
    shown = [v for v in variants if v in set(runs["variant"])]
    if not shown:
        raise ValueError(f"none of the variants {variants} ran at {dataset} {noise} p={rate} n={n}")
    fig, axes = _subplots(len(shown), 2, figsize=(11, 3.8 * len(shown)))
    notes, drawn = [], []
    for panels, variant in zip(axes, shown):
        block = runs[runs["variant"] == variant].sort_values(["beta", "seed"], kind="stable")
        labels = [f"β = {number_text(run.beta)}" + (" (selected)" if run.selected else "")
                  if np.isfinite(run.beta) else run.hparams for run in block.itertuples()]
        curves = run_curves(block, labels, smoothing)
        palette = _palette(list(dict.fromkeys(labels)), "viridis")
        name = math_label(configuration_label(variant, None, {}))
        for ax, column, what in zip(panels, [rundir.TRAIN_ACC, rundir.TEST_ACC],
                                    ["training accuracy (noisy labels)", "test accuracy (clean labels)"]):
            drawn.append(plot_mean_curves(ax, curves, column, palette).assign(variant=variant))
            ax.set(title=f"{name}: {what}", xlabel="epoch", ylabel="accuracy")
        curve_legend(panels[1], palette, curves, loc="center left", bbox_to_anchor=(1.02, 0.5))
        notes.append(seeds_note(curves, smoothing))
    fig.suptitle(f"Effect of β: {rundir.setting_text(dataset, noise, rate, n, style='title')}\n"
                 + "; ".join(dict.fromkeys(notes)), fontsize=10)
    save_figure(fig, out_prefix, pd.concat(drawn, ignore_index=True))
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
    save_figure(fig, out_prefix, frame)
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
    save_figure(fig, out_prefix, examples)
    return examples
