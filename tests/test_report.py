"""Report library: paper numbers, Fano bound, bootstrap, selection, tables and figures (seconds, CPU)."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from limit.report import fano, figures, paper, selection, stats, tables

# The paper's tables, transcribed independently of limit/report/paper_numbers/*.csv
SPEC = Path(__file__).resolve().parent / "data" / "paper_tables.md"
SPEC_ROWS = {"CE": "ce", "CE + GN": "ce_gn", "CE + LN": "ce_ln", "MAE": "mae", "FW": "fw", "DMI": "dmi",
             "Soft reg. (11)": "soft_reg", "LIMIT_G + S": "limit_g_s", "LIMIT_L + S": "limit_l_s",
             "LIMIT_G − S": "limit_g", "LIMIT_L − S": "limit_l", "LIMIT_G": "limit_g", "LIMIT_L": "limit_l",
             "LIMIT_G + init": "limit_g_init", "LIMIT_L + init": "limit_l_init"}


def _mnist(rates, ns):
    return [("mnist", "uniform", r, n) for r in rates for n in ns]


# Spec section 9 heading -> (paper table, its columns as (dataset, noise, rate, n)).
SPEC_TABLES = {
    "9.1 Table 1": ("table1", _mnist([0.0, 0.5, 0.8], ["1000", "all"])),
    "9.2 Table 4": ("table4", _mnist([0.0, 0.5], ["1000", "10000", "all"])),
    "9.3 Table 5": ("table5", _mnist([0.8, 0.89], ["1000", "10000", "all"])),
    "9.4 Table 2": ("table2", [("cifar10", "uniform", r, "all") for r in [0.0, 0.2, 0.4, 0.6, 0.8]]
                    + [("cifar10", "pair", r, "all") for r in [0.1, 0.2, 0.3, 0.4]]
                    + [("cifar100", "uniform", 0.4, "all"), ("clothing1m", "real", None, "all")]),
    "9.5 Table 6": ("table6", [("cifar10", "uniform", r, "all") for r in [0.0, 0.2, 0.4, 0.6, 0.8]]),
    "9.6 Table 7": ("table7", [("cifar10", "pair", r, "all") for r in [0.0, 0.1, 0.2, 0.3, 0.4]]),
}


def _spec_table(text, heading):
    """Header cells and body rows of the first Markdown table after a spec heading."""
    lines = text[text.index(f"### {heading}"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    cells = _table_rows(lines[start:end])
    return cells[0], cells[2:]


def _table_rows(lines):
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]


@pytest.fixture(scope="module")
def spec_text():
    return SPEC.read_text()


# ----------------------------------------------------------------------------------------------- paper numbers

@pytest.mark.parametrize("heading", list(SPEC_TABLES))
def test_paper_numbers_match_spec(spec_text, heading):
    table, columns = SPEC_TABLES[heading]
    header, rows = _spec_table(spec_text, heading)
    assert len(header) == len(columns) + 1
    for text, (dataset, _, rate, n) in zip(header[1:], columns):
        assert [float(x) for x in re.findall(r"\d\.\d+", text)] == ([] if rate is None else [rate]), text
        assert {"1000": "1e3", "10000": "1e4", "all": "All"}[n] in text or dataset != "mnist", text
    numbers = paper.paper_numbers(table)
    assert len(numbers) == len(rows) * len(columns)
    indexed = {(r.method, r.dataset, r.noise, None if math.isnan(r.rate) else r.rate, r.n): r
               for r in numbers.itertuples()}
    for row in rows:
        method = SPEC_ROWS[row[0]]
        for cell, column in zip(row[1:], columns):
            number = indexed[(method, *column)]
            mean, _, std = cell.partition("±")
            assert number.mean == pytest.approx(float(mean)), (table, method, column)
            if std.strip():
                assert number.std == pytest.approx(float(std)), (table, method, column)
            else:
                assert math.isnan(number.std), (table, method, column)


def test_table1_is_columns_of_tables_4_and_5():
    keys = ["method", "dataset", "noise", "rate", "n"]
    table1 = paper.paper_numbers("table1")
    supplement = pd.concat([paper.paper_numbers("table4"), paper.paper_numbers("table5")])
    merged = table1.merge(supplement, on=keys, suffixes=("", "_supplement"))
    assert len(merged) == len(table1) == 66
    assert (merged["mean"] == merged["mean_supplement"]).all()
    assert table1["std"].isna().all()
    assert set(table1["method"]) <= set(paper.METHOD_LABELS)


def test_table2_cifar10_is_tables_6_and_7():
    keys = ["method", "dataset", "noise", "rate", "n"]
    table2 = paper.paper_numbers("table2")
    cifar10 = table2[table2["dataset"] == "cifar10"]
    supplement = pd.concat([paper.paper_numbers("table6"), paper.paper_numbers("table7")])
    merged = cifar10.merge(supplement, on=keys, suffixes=("", "_supplement"))
    assert len(merged) == len(cifar10) == 8 * 9
    assert (merged["mean"] == merged["mean_supplement"]).all()
    clothing = table2[table2["dataset"] == "clothing1m"]
    assert clothing["rate"].isna().all() and (clothing["noise"] == "real").all()
    assert clothing.set_index("method").loc["limit_g_init", "mean"] == 71.39


# ------------------------------------------------------------------------------------------------------- Fano

FANO_REFERENCE = {  # spec section 10, I/n = 0, .25, .5, 1, 1.5, 2 bits
    0.8: [0.800, 0.656, 0.558, 0.4051, 0.283, 0.181],
    0.6: [0.600, 0.512, 0.437, 0.309, 0.203, 0.114],
    0.4: [0.400, 0.337, 0.279, 0.178, 0.093, 0.024],
    0.2: [0.200, 0.154, 0.111, 0.038],
}


@pytest.mark.parametrize("p", sorted(FANO_REFERENCE))
def test_fano_reference_values(p):
    info = [0, 0.25, 0.5, 1.0, 1.5, 2.0][:len(FANO_REFERENCE[p])]
    assert fano.fano_lower_bound(info, p, 10) == pytest.approx(FANO_REFERENCE[p], abs=0.002)


def test_fano_exact_points():
    assert fano.fano_lower_bound(1.0, 0.8, 10) == pytest.approx(0.4051, abs=1e-4)
    for p in [0.1, 0.2, 0.4, 0.6, 0.8, 0.89]:
        assert fano.fano_lower_bound(0.0, p, 10) == pytest.approx(p, abs=1e-9)  # Remark 3: tight at I = 0
    assert [round(fano.label_entropy(p, 10), 4) for p in [0.2, 0.4, 0.6, 0.8]] == [1.3559, 2.2389, 2.8729, 3.2579]
    # the bound vanishes once I/n covers H(y|x)
    assert fano.fano_lower_bound(fano.label_entropy(0.4, 10), 0.4, 10) == 0.0
    curve = fano.fano_lower_bound(np.linspace(0, 3, 50), 0.8, 10)
    assert curve.shape == (50,) and np.all(np.diff(curve) <= 0)


def test_figure_fano(tmp_path, saved):
    curves = figures.figure_fano(tmp_path / "fig2")
    assert len(curves) == 4000
    at_zero = curves[curves["info_per_example"] == 0].set_index("p")["r0"]
    assert at_zero.to_numpy() == pytest.approx([0.2, 0.4, 0.6, 0.8])
    [ax] = _assert_figure(tmp_path / "fig2", saved).axes
    assert legend_labels(ax) == ["p = 0.2", "p = 0.4", "p = 0.6", "p = 0.8"]
    for line, (_, curve) in zip(ax.get_lines(), curves.groupby("p"), strict=True):  # a line a rate, as computed
        assert np.array_equal(line.get_ydata(), curve["r0"])
        assert np.array_equal(line.get_xdata(), curve["info_per_example"])


# ------------------------------------------------------------------------------------------------- evaluation

def _logits_with_accuracy(n, acc, k=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    predicted = np.where(np.arange(n) < round(acc * n), labels, (labels + 1) % k)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    logits[np.arange(n), predicted] += 20
    return logits, labels


def test_accuracy_and_bootstrap_by_hand():
    logits, labels = _logits_with_accuracy(500, 0.8)
    assert stats.accuracy(logits, labels) == pytest.approx(0.8)
    rng = np.random.default_rng(7)
    correct = logits.argmax(1) == labels
    by_hand = []
    for _ in range(200):
        draw = rng.integers(0, 500, size=500)
        by_hand.append(sum(correct[i] for i in draw) / 500)
    mean, std = stats.bootstrap_std(logits, labels, n_boot=200, seed=7)
    assert mean == pytest.approx(np.mean(by_hand), abs=1e-12)
    assert std == pytest.approx(np.sqrt(np.mean((np.array(by_hand) - np.mean(by_hand)) ** 2)), abs=1e-12)


def test_bootstrap_std_matches_binomial():
    logits, labels = _logits_with_accuracy(10_000, 0.927)
    mean, std = stats.bootstrap_std(logits, labels)
    assert mean == pytest.approx(0.927, abs=0.001)
    assert std == pytest.approx(np.sqrt(0.927 * 0.073 / 10_000), rel=0.1)  # 0.26 points, spec 7.3


def test_detection_auc_hand_case():
    # positives {0.8, 0.4}, negatives {0.1, 0.5}: 3 of the 4 pairs are ordered -> 0.75
    assert stats.detection_auc([0.8, 0.4, 0.1, 0.5], [True, True, False, False]) == pytest.approx(0.75)
    assert math.isnan(stats.detection_auc([0.1, 0.2], [False, False]))


# --------------------------------------------------------------------------------------- synthetic run table

def _history(epochs, final_train, final_test, seed):
    rng = np.random.default_rng(seed)
    epoch = np.arange(epochs)
    ramp = 1 - np.exp(-epoch / 5)
    return pd.DataFrame({
        "epoch": epoch, "train_loss": 2 - ramp, "train_acc": final_train * ramp + rng.normal(0, 0.01, epochs),
        "train_acc_true": ramp, "train_acc_corrupted": 0.1 * ramp, "val_acc": final_test * ramp,
        "test_acc": final_test * ramp + rng.normal(0, 0.01, epochs), "q_loss": 1 - ramp, "mu_sq_norm": ramp,
        "epoch_seconds": 1.0, "images_per_second": 1000.0})


def _write_run(run_dir, test_acc, val_acc, limit, seed, n_test=400):
    run_dir.mkdir(parents=True)
    history = _history(30, 0.2 if limit else 0.9, test_acc, seed)
    history.to_csv(run_dir / "history.csv", index=False)
    (run_dir / "config.json").write_text(json.dumps(dict(seed=seed, test_curve_size=200)))
    (run_dir / "metrics.json").write_text(json.dumps(dict(
        best_epoch=29, best_val_acc=val_acc, test_acc=test_acc, epochs_run=30, wall_seconds=3.0)))
    logits, labels = _logits_with_accuracy(n_test, test_acc, seed=seed)
    np.savez(run_dir / "test_outputs.npz", logits=logits, labels=labels)
    if limit:
        rng = np.random.default_rng(seed)
        n = 120
        true_label = rng.integers(0, 10, n)
        is_corrupted = np.arange(n) % 5 != 0  # 80% noise
        noisy = np.where(is_corrupted, (true_label + rng.integers(1, 10, n)) % 10, true_label)
        np.savez(run_dir / "train_scores.npz", mu_norm=rng.uniform(0, 1, n),
                 grad_distance=np.where(is_corrupted, 1.2, 0.3) + rng.normal(0, 0.2, n),
                 is_corrupted=is_corrupted, noisy_label=noisy, true_label=true_label,
                 predicted=true_label, train_idx=rng.permutation(200)[:n])


# (experiment, dataset, noise, rate, n, variant, method, hparams, beta, dropout, [(test_acc, best_val_acc) per seed])
RUNS = [
    ("main", "mnist", "uniform", 0.8, "1000", "ce", "ce", "default", None, None,
     [(0.30, 0.20), (0.32, 0.21), (0.34, 0.22)]),
    ("main", "mnist", "uniform", 0.8, "1000", "limit_l", "limit_l", "beta=1", 1.0, None,
     [(0.40, 0.50), (0.41, 0.50), (0.42, 0.80)]),  # best single val, worse mean val: not selected
    ("main", "mnist", "uniform", 0.8, "1000", "limit_l", "limit_l", "beta=10", 10.0, None,
     [(0.36, 0.62), (0.37, 0.62), (0.38, 0.63)]),
    ("main", "mnist", "uniform", 0.8, "all", "ce", "ce", "default", None, None,
     [(0.872, 0.3), (0.874, 0.3), (0.876, 0.3)]),
    ("main", "mnist", "uniform", 0.8, "all", "limit_l", "limit_l", "beta=3", 3.0, None,
     [(0.975, 0.25), (0.977, 0.26), (0.979, 0.25)]),
    ("main", "mnist", "uniform", 0.8, "all", "limit_l", "limit_l", "beta=30", 30.0, None,
     [(0.965, 0.24), (0.966, 0.24), (0.967, 0.24)]),
    ("main", "mnist", "uniform", 0.5, "all", "ce", "ce", "default", None, None, [(0.971, 0.5), (0.973, 0.5)]),
    ("main", "cifar10", "uniform", 0.4, "all", "ce", "ce", "default", None, None, [(0.81, 0.5)]),
    ("main", "cifar10", "uniform", 0.4, "all", "limit_g_init", "limit_g_init", "beta=3", 3.0, None,
     [(0.905, 0.55)]),
    ("main", "fashion_mnist", "uniform", 0.5, "all", "ce", "ce", "default", None, None,
     [(0.80, 0.4), (0.82, 0.4)]),
    ("main", "fashion_mnist", "uniform", 0.5, "all", "limit_l", "limit_l", "beta=10", 10.0, None,
     [(0.85, 0.45), (0.87, 0.45)]),
    ("figure1", "mnist", "uniform", 0.8, "all", "ce", "ce", "default", None, None, [(0.6, 0.6)]),
    ("figure1", "mnist", "uniform", 0.8, "all", "ce_dropout", "ce", "dropout=0.25", None, 0.25, [(0.62, 0.62)]),
    ("figure1", "mnist", "uniform", 0.8, "all", "ce_dropout", "ce", "dropout=0.5", None, 0.5, [(0.7, 0.7)]),
    ("figure1", "mnist", "uniform", 0.8, "all", "limit_l", "limit_l", "beta=10", 10.0, None, [(0.95, 0.95)]),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    records = []
    for experiment, dataset, noise, rate, n, variant, method, hparams, beta, dropout, results in RUNS:
        for seed, (test_acc, val_acc) in zip([42, 43, 44], results):
            run_id = f"{experiment}/{dataset}-{noise}-{rate}-{n}/{variant}/{hparams}/seed{seed}"
            run_dir = root / run_id
            _write_run(run_dir, test_acc, val_acc, method.startswith("limit"), seed)
            records.append(dict(
                run_id=run_id, experiment=experiment, dataset=dataset, noise=noise, rate=rate, n=n, seed=seed,
                variant=variant, method=method, hparams=hparams, beta=beta, lamb=None, sigma=None, lr=None,
                dropout=dropout, weight_decay=None, clean_validation=experiment == "figure1",
                run_dir=str(run_dir), best_val_acc=val_acc, test_acc=test_acc, best_epoch=29, epochs_run=30,
                wall_seconds=3.0))
    frame = selection.normalise_runs(pd.DataFrame.from_records(records))
    # as `limit aggregate` writes it: the select stage's decisions, and the Figure-1 block marked
    chosen = selection.select_configurations(frame).loc[lambda c: c["selected"], selection.CONFIGURATION]
    frame = frame.merge(chosen.assign(selected=True), on=selection.CONFIGURATION, how="left")  # NaN rates match
    frame["selected"] = frame["selected"].fillna(False).astype(bool)
    frame["figure1"] = frame["experiment"] == "figure1"
    # as the workflow reads it back: n comes back as object strings, hyper-parameters as floats
    frame.to_csv(root / "runs.csv", index=False)
    return pd.read_csv(root / "runs.csv")


# -------------------------------------------------------------------------------------------------- selection

def test_select_configurations_picks_best_mean_validation(runs):
    configs = selection.select_configurations(runs)
    setting = configs[(configs["experiment"] == "main") & (configs["dataset"] == "mnist") & (configs["rate"] == 0.8)
                      & (configs["n"] == "1000") & (configs["variant"] == "limit_l")].set_index("hparams")
    assert list(setting.index) == ["beta=1", "beta=10"]
    assert setting.loc["beta=10", "selected"] and not setting.loc["beta=1", "selected"]
    assert setting.loc["beta=10", "test_acc_mean"] == pytest.approx(0.37)
    assert setting.loc["beta=10", "test_acc_std"] == pytest.approx(0.01)  # ddof 1
    assert setting.loc["beta=1", "best_val_acc_mean"] == pytest.approx(0.6)
    assert setting.loc["beta=10", "seeds"] == 3
    # one selected configuration per (experiment, setting, variant)
    per_setting = configs.groupby(selection.SETTING, dropna=False)["selected"].sum()
    assert (per_setting == 1).all()
    # figure1's ce_dropout: 0.5 has the better validation accuracy
    fig1 = configs[(configs["experiment"] == "figure1") & configs["selected"]].set_index("variant")
    assert fig1.loc["ce_dropout", "hparams"] == "dropout=0.5"


def test_select_configurations_with_nan_rate():
    base = dict(experiment="main", dataset="clothing1m", noise="real", rate=np.nan, n="all", variant="dmi",
                method="dmi", run_dir="", test_acc=0.7)
    runs = pd.DataFrame([dict(base, run_id="a", seed=42, hparams="lr=0.001", best_val_acc=0.70),
                         dict(base, run_id="b", seed=42, hparams="lr=0.0001", best_val_acc=0.72)])
    configs = selection.select_configurations(runs).set_index("hparams")
    assert list(configs["selected"].loc[["lr=0.001", "lr=0.0001"]]) == [False, True]


def test_configurations_carry_the_run_tables_selection(runs):
    configs = selection.configurations(runs)
    assert configs["selected"].dtype == bool
    chosen = configs[configs["selected"] & (configs["experiment"] == "main") & (configs["dataset"] == "mnist")
                     & (configs["variant"] == "limit_l")]
    assert sorted(chosen["hparams"]) == ["beta=10", "beta=3"] and list(chosen["seeds"]) == [3, 3]
    # the report reads the decisions: a run table whose selection differs changes what is shown
    setting = (runs["variant"] == "limit_l") & (runs["rate"] == 0.8) & (runs["n"] == "1000")
    flipped = runs.assign(selected=runs["selected"] ^ setting)
    shown = selection.selected_runs(flipped)
    assert set(shown[(shown["variant"] == "limit_l") & (shown["n"] == "1000")]["hparams"]) == {"beta=1"}


# ----------------------------------------------------------------------------------------------------- tables

def test_render_mnist_table(runs, tmp_path):
    spec = tables.setting_table_spec("t", "mnist", "uniform", [0.5, 0.8], ["1000", "all"], ["ce", "dmi", "limit_l"])
    cells = tables.render_table(runs, spec, tmp_path / "t")
    md = (tmp_path / "t.md").read_text()
    rows = _table_rows(md.splitlines())
    header, body = rows[0], {r[0]: r[1:] for r in rows[2:]}
    assert header == ["Method", "p=0.5, n=1e3", "paper", "Δ", "p=0.5, n=All", "paper", "Δ",
                      "p=0.8, n=1e3", "paper", "Δ", "p=0.8, n=All", "paper", "Δ"]
    assert list(body) == ["CE", "DMI", "LIMIT_L − S"]
    # p=0.8, n=1e3: CE 32.0 ± 2.0 vs the paper's 27.0 ± 3.8; LIMIT_L (beta=10 selected) 37.0 ± 1.0 is the best
    assert body["CE"][6:9] == ["32.0 ± 2.0", "27.0 ± 3.8", "+5.0"]
    assert body["LIMIT_L − S"][6:9] == ["**37.0 ± 1.0**", "35.9 ± 4.3", "+1.1"]
    # p=0.8, all: LIMIT 97.7 ± 0.2 vs CE 87.4; paper 97.7 -> difference 0.0
    assert body["LIMIT_L − S"][9:12] == ["**97.7 ± 0.2**", "97.7 ± 0.2", "+0.0"]
    assert body["CE"][9] == "87.4 ± 0.2"
    # not run: DMI everywhere, LIMIT at p=0.5; the paper's number still shown
    assert body["DMI"][6:9] == ["—", "30.3 ± 5.1", "—"]
    assert body["LIMIT_L − S"][3:6] == ["—", "99.0 ± 0.1", "—"]
    # the only run cell of a column is bold
    assert body["CE"][3] == "**97.2 ± 0.1**"
    tex = (tmp_path / "t.tex").read_text()
    assert "\\textbf{37.0 $\\pm$ 1.0}" in tex and "LIMIT$_L$ $-$ S" in tex
    assert "\\multicolumn{3}{c}{p=0.8, n=1e3}" in tex
    csv = pd.read_csv(tmp_path / "t.csv")
    assert len(csv) == len(cells) == 12
    best = csv[(csv["row"] == "limit_l") & (csv["rate"] == 0.8) & (csv["n"].astype(str) == "1000")].iloc[0]
    assert best["hparams"] == "beta=10" and best["seeds"] == 3 and best["bold"]


def test_bold_within_error_bar():
    cells = pd.DataFrame({"column": ["a"] * 3, "ours_mean": [95.7, 95.6, 95.0], "ours_std": [0.2, 0.3, 0.2]})
    assert list(tables._bold_marks(cells)) == [True, True, False]


def test_render_bootstrap_table(runs, tmp_path):
    cells = tables.render_table(runs, tables.paper_table_spec("table6"), tmp_path / "t6")
    body = {r[0]: r[1:] for r in _table_rows((tmp_path / "t6.md").read_text().splitlines())[2:]}
    assert list(body) == ["CE", "MAE", "FW", "DMI", "LIMIT_G − S", "LIMIT_L − S", "LIMIT_G + init",
                          "LIMIT_L + init"]
    ce = cells[(cells["row"] == "ce") & (cells["rate"] == 0.4)].iloc[0]
    run_dir = runs[(runs["dataset"] == "cifar10") & (runs["variant"] == "ce")]["run_dir"].iloc[0]
    with np.load(Path(run_dir) / "test_outputs.npz") as outputs:
        expected_std = 100 * stats.bootstrap_std(outputs["logits"], outputs["labels"])[1]
    assert ce["ours_std"] == pytest.approx(expected_std)
    assert ce["ours_std"] == pytest.approx(100 * np.sqrt(0.81 * 0.19 / 400), rel=0.15)
    assert body["CE"][6:9] == [f"81.0 ± {expected_std:.1f}", "81.0 ± 0.4", "+0.0"]
    assert body["LIMIT_G + init"][6].startswith("**90.5 ± ")
    # MAE has no run here: every column shows the paper's number between two dashes, in column order
    assert body["MAE"] == ["—", "84.4 ± 0.4", "—", "—", "85.4 ± 0.4", "—", "—", "64.6 ± 0.5", "—",
                           "—", "15.4 ± 0.4", "—", "—", "12.0 ± 0.3", "—"]


def test_default_table_specs(runs, tmp_path):
    specs = {spec.name: spec for spec in tables.default_table_specs(runs)}
    assert set(specs) == {"table1", "table2", "table4", "table5", "table6", "fashion_mnist_uniform",
                          "figure1_mnist_uniform"}
    assert specs["table5"].layout == "seeds" and specs["table2"].layout == "bootstrap"
    assert [c.label for c in specs["table2"].columns][-2:] == ["CIFAR-100 uniform p=0.4", "Clothing1M"]
    fashion = specs["fashion_mnist_uniform"]
    assert fashion.rows == ("ce", "limit_l") and fashion.layout == "seeds"
    tables.render_table(runs, fashion, tmp_path / "fashion")
    rows = _table_rows((tmp_path / "fashion.md").read_text().splitlines())
    assert rows[0] == ["Method", "p=0.5"]  # no paper numbers for Fashion-MNIST
    assert rows[2] == ["CE", "81.0 ± 1.4"] and rows[3] == ["LIMIT_L − S", "**86.0 ± 1.4**"]
    figure1 = specs["figure1_mnist_uniform"]
    assert figure1.rows == ("ce", "ce_dropout", "limit_l") and figure1.experiments == ("figure1",)
    cells = tables.render_table(runs, figure1, tmp_path / "fig1")
    assert list(cells["method_label"]) == ["CE", "CE + dropout", "LIMIT_L − S"]
    assert _table_rows((tmp_path / "fig1.md").read_text().splitlines())[0] == ["Method", "p=0.8"]  # MLP: no paper
    assert cells.set_index("row").loc["ce_dropout", "ours_mean"] == pytest.approx(70.0)


# (dataset, noise, rate, n, variant): one run each, every kind of column of the paper's tables
TINY_RUNS = [("cifar10", "pair", 0.0, "all", "ce"), ("cifar10", "pair", 0.0, "all", "limit_g"),
             ("cifar10", "pair", 0.2, "all", "ce"), ("cifar10", "uniform", 0.4, "all", "fw"),
             ("cifar100", "uniform", 0.4, "all", "ce"), ("clothing1m", "real", float("nan"), "all", "dmi"),
             ("mnist", "uniform", 0.0, "1000", "ce"), ("mnist", "uniform", 0.89, "all", "limit_l")]


def test_no_table_cell_with_a_run_prints_missing(tmp_path):
    records = []
    for i, (dataset, noise, rate, n, variant) in enumerate(TINY_RUNS):
        run_dir = tmp_path / "runs" / str(i)
        _write_run(run_dir, 0.5 + i / 100, 0.5, False, 42)
        records.append(dict(run_id=str(i), experiment="main", dataset=dataset, noise=noise, rate=rate, n=n, seed=42,
                            variant=variant, method=variant, hparams="default", run_dir=str(run_dir),
                            best_val_acc=0.5, test_acc=0.5 + i / 100, best_epoch=29, selected=True,
                            figure1=False))
    runs = pd.DataFrame.from_records(records)
    specs = tables.default_table_specs(runs)
    # the clean CIFAR-10 column of Tables 2 and 6 and Table 7's p = 0 column come from the pair p = 0 runs
    assert {s.name for s in specs} == {"table1", "table2", "table4", "table5", "table6", "table7"}
    filled = 0
    for spec in specs:
        tables.render_table(runs, spec, tmp_path / spec.name)
        rows = _table_rows((tmp_path / f"{spec.name}.md").read_text().splitlines())
        header, body = rows[0], {r[0]: r for r in rows[2:]}
        for run in runs.itertuples():
            run_key = tables.setting_key(run.dataset, run.noise, run.rate, run.n)
            for column in spec.columns:
                if (run.variant in spec.rows and run_key == tables.setting_key(column.dataset, column.noise,
                                                                               column.rate, column.n)):
                    text = body[paper.label(run.variant)][header.index(column.label)]
                    assert text != tables.MISSING and text.strip("*").startswith(f"{100 * run.test_acc:.1f}"), \
                        (spec.name, column.label, run.variant, text)
                    filled += 1
    # table2: clean (ce, limit_g), pair 0.2, uniform 0.4, CIFAR-100, Clothing1M; table6: clean (ce, limit_g), 0.4;
    # table7: p = 0 (ce, limit_g), 0.2; tables 1 and 4: MNIST p = 0, n = 1000; table5: p = 0.89
    assert filled == 6 + 3 + 3 + 1 + 1 + 1


def test_architecture_table_is_the_model(tmp_path):
    from limit.models import architecture_rows, mnist_cnn
    rows = tables.render_architecture_table(tmp_path / "table3")
    assert rows.to_dict("records") == architecture_rows(mnist_cnn())
    assert list(rows["layer"]) == ["Conv"] * 4 + ["FC", "FC"]
    assert rows["parameters"].iloc[0] == ("32 filters, 4 × 4 kernels, stride 2, padding 1, batch normalization, "
                                          "ReLU")
    assert rows["parameters"].iloc[3].startswith("256 filters, 3 × 3 kernels, stride 1, padding 0")
    assert list(rows["parameters"].iloc[4:]) == ["128 units, ReLU", "10 units, linear activation"]
    assert list(rows["output"]) == ["32 × 14 × 14", "32 × 7 × 7", "64 × 3 × 3", "256 × 1 × 1", "128", "10"]
    assert rows["weights"].sum() == 218_122
    for suffix in [".md", ".tex", ".csv"]:
        assert (tmp_path / f"table3{suffix}").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------- figures

@pytest.fixture
def saved(monkeypatch):
    """Every matplotlib figure saved while the test runs: {path: figure}, to look into what was drawn."""
    from matplotlib.figure import Figure
    figs, savefig = {}, Figure.savefig

    def record(fig, path, *args, **kwargs):
        figs[str(path)] = fig
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figs


def _assert_figure(prefix, saved):
    """One figure saved as PNG and PDF, and the data it draws as CSV; returns the figure."""
    fig = saved[f"{prefix}.png"]
    assert saved[f"{prefix}.pdf"] is fig
    for suffix in [".png", ".pdf"]:
        path = Path(f"{prefix}{suffix}")
        assert path.exists() and path.stat().st_size > 1000, path
    assert len(pd.read_csv(f"{prefix}.csv")) > 0  # the data it draws
    return fig


def legend_labels(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def curves_drawn(ax):
    """The mean curves of a panel: (colour, number of points) per line, and the selected-epoch dots."""
    lines = [(line.get_color(), len(line.get_xdata())) for line in ax.get_lines()]
    return lines, sum(len(c.get_offsets()) for c in ax.collections if c.get_offsets().size)


def test_figure_memorisation(runs, tmp_path, saved):
    shown = figures.figure_memorisation(runs, tmp_path / "fig1", rate=0.8)
    assert list(shown["variant"]) == ["ce", "ce_dropout", "limit_l"]
    assert shown.set_index("variant").loc["ce_dropout", "hparams"] == "dropout=0.5"
    train_panel, val_panel = _assert_figure(tmp_path / "fig1", saved).axes
    epochs = [len(pd.read_csv(Path(d) / "history.csv")) for d in shown["run_dir"]]
    # a curve a variant, one point an epoch, and one dot a selected epoch; the optimum 1 - p across the first
    for panel, extra in ((train_panel, 1), (val_panel, 0)):
        lines, dots = curves_drawn(panel)
        assert [n for _, n in lines][:3] == epochs and len(lines) == 3 + extra and dots == 3
    assert list(train_panel.get_lines()[-1].get_ydata()) == [pytest.approx(0.2)] * 2
    assert legend_labels(val_panel) == ["CE", "CE + dropout 0.5", "LIMIT$_L$ (β = 10)",
                                        "selected epoch (best validation)"]


def test_figure_curves_use_every_seed_of_the_selected_configuration(runs, tmp_path, saved):
    shown = figures.figure_curves(runs, tmp_path / "fig3", "mnist", "uniform", 0.8, "all")
    # the figure1 block's MLP runs are not mixed in; all three seeds of each selected configuration
    assert list(shown["variant"]) == ["ce"] * 3 + ["limit_l"] * 3 and list(shown["seed"]) == [42, 43, 44] * 2
    assert set(shown[shown["variant"] == "limit_l"]["hparams"]) == {"beta=3"}
    panels = _assert_figure(tmp_path / "fig3", saved).axes
    assert [ax.get_title() for ax in panels] == ["training accuracy (noisy labels)", "test accuracy (clean labels)"]
    for ax in panels:
        lines, dots = curves_drawn(ax)
        assert len(lines) == 2 and len({colour for colour, _ in lines}) == 2  # one curve a method, three seeds each
        assert len(ax.collections) >= 2 + 2  # a band and the selected-epoch dots of each curve
    assert legend_labels(panels[1]) == ["CE", "LIMIT$_L$ (β = 3)", "selected epoch (best validation)"]


def test_mean_curve_has_bootstrap_band_selected_epoch_and_integer_ticks(runs):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection, PolyCollection
    chosen = selection.selected_runs(runs)
    block = chosen[(chosen["dataset"] == "mnist") & (chosen["n"] == "all") & (chosen["rate"] == 0.8)]
    block = block.assign(best_epoch=[3, 5, 5, 7, 7, 7])  # ce: seeds at epochs 3, 5, 5; limit_l: all at 7
    labels = [figures._curve_label(r) for r in block.itertuples()]
    assert sorted(set(labels)) == ["CE", "LIMIT$_L$ (β = 3)"]
    curves = figures.run_curves(block, labels)
    palette = figures._palette(list(dict.fromkeys(labels)))
    fig, ax = plt.subplots()
    figures.plot_mean_curves(ax, curves, "test_acc", palette)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one 95% band per curve (three seeds each)
    dots = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    mean = curves.groupby(["curve", "epoch"])["test_acc"].mean()
    assert [d[:, 0].tolist() for d in dots] == [[3, 5], [7]]
    assert list(dots[0][:, 1]) == pytest.approx(list(mean.loc["CE"].loc[[3, 5]]))
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    plt.close(fig)
    assert figures.seeds_note(curves) == ("mean over seeds 42, 43, 44; band: bootstrap 95% CI of the mean (1000 "
                                          "resamples); test accuracy per epoch on the first 200 test images")
    one_seed = curves[curves["seed"] == 42]
    assert figures.seeds_note(one_seed, smoothing=2).startswith("1 seed (42), no band")
    assert figures.seeds_note(one_seed, smoothing=2).endswith("smoothed (Gaussian, σ = 2 epochs)")


def test_a_figures_data_are_its_means_bands_and_selected_epochs(tmp_path):
    """On a run table built here: LIMIT_L with two seeds (a band), CE with one (no band)."""
    records = []
    for variant, seeds in (("ce", [1]), ("limit_l", [1, 2])):
        for seed in seeds:
            run_dir = tmp_path / "runs" / variant / str(seed)
            _write_run(run_dir, 0.5, 0.5, variant == "limit_l", seed)
            records.append(dict(
                run_id=f"{variant}/{seed}", experiment="main", dataset="mnist", noise="uniform", rate=0.8, n="all",
                seed=seed, variant=variant, method=variant, hparams="default" if variant == "ce" else "beta=3",
                beta=None if variant == "ce" else 3.0, lamb=None, sigma=None, lr=None, dropout=None,
                weight_decay=None, clean_validation=False, run_dir=str(run_dir), best_val_acc=0.5, test_acc=0.5,
                best_epoch=10 + seed, epochs_run=30, selected=True, figure1=False))
    runs = pd.DataFrame(records)
    figures.figure_curves(runs, tmp_path / "fig3", "mnist", "uniform", 0.8, "all")
    data = pd.read_csv(tmp_path / "fig3.csv")
    history = {(r.variant, r.seed): pd.read_csv(Path(r.run_dir) / "history.csv") for r in runs.itertuples()}
    for panel in ("train_acc", "test_acc"):
        drawn = data[data["panel"] == panel]
        limit = drawn[(drawn["kind"] == "mean") & (drawn["curve"] == "LIMIT$_L$ (β = 3)")]
        a, b = history["limit_l", 1][panel].to_numpy(), history["limit_l", 2][panel].to_numpy()
        assert limit["value"].to_numpy() == pytest.approx((a + b) / 2)
        # two seeds: every resampled mean is a, b or their mean, so the 95% band runs from the smaller to the larger
        assert limit["band_low"].to_numpy() == pytest.approx(np.minimum(a, b))
        assert limit["band_high"].to_numpy() == pytest.approx(np.maximum(a, b))
        assert set(limit["seeds"]) == {"1 2"}
        ce = drawn[(drawn["kind"] == "mean") & (drawn["curve"] == "CE")]
        assert ce["value"].to_numpy() == pytest.approx(history["ce", 1][panel].to_numpy())
        assert ce["band_low"].isna().all() and ce["band_high"].isna().all()  # one seed: no band
        dots = drawn[drawn["kind"] == "selected epoch"].set_index(["curve", "epoch"])
        assert list(dots.index) == [("CE", 11), ("LIMIT$_L$ (β = 3)", 11), ("LIMIT$_L$ (β = 3)", 12)]
        assert dots["value"].to_numpy() == pytest.approx([history["ce", 1][panel][11], (a[11] + b[11]) / 2,
                                                          (a[12] + b[12]) / 2])
        assert list(dots["seeds"].astype(str)) == ["1", "1", "2"]


def test_figure_beta(runs, tmp_path, saved):
    shown = figures.figure_beta(runs, tmp_path / "figA0", "mnist", "uniform", 0.8, "1000")
    assert sorted(set(shown["hparams"])) == ["beta=1", "beta=10"]
    assert set(shown[shown["selected"]]["hparams"]) == {"beta=10"}
    panels = _assert_figure(tmp_path / "figA0", saved).axes
    variants = list(dict.fromkeys(shown.sort_values("variant")["variant"]))
    assert len(panels) == 2 * len(variants)  # training and test accuracy, a row a variant
    for row, variant in enumerate(sorted(variants, key=["limit_g", "limit_l"].index)):
        betas = sorted(shown[shown["variant"] == variant]["beta"].unique())
        legend = legend_labels(panels[2 * row + 1])
        assert len(legend) == len(betas) + 1 and legend[-1] == "selected epoch (best validation)"
        for ax in panels[2 * row:2 * row + 2]:
            assert len(ax.get_lines()) == len(betas)  # a curve a β
    assert "β = 10 (selected)" in legend_labels(panels[-1]) and "β = 1" in legend_labels(panels[-1])


def test_legend_labels_are_typeset():
    assert paper.configuration_label("limit_l", "limit_l", {"beta": 10.0}) == "LIMIT_L (β = 10)"
    assert paper.configuration_label("ce_dropout", "ce", {"dropout": 0.5}) == "CE + dropout 0.5"
    assert paper.configuration_label("dmi", "dmi", {"lr": 1e-4}) == "DMI (lr = 1e-4)"
    assert paper.configuration_label("ce_weight_decay", "ce", {"weight_decay": 0.003}) == "CE + weight decay 0.003"
    label = paper.configuration_label("limit_g_s", "limit_g_s", {"beta": 1, "lamb": 1e-5})
    assert label == "LIMIT_G + S (β = 1, λ = 1e-5)"
    assert paper.configuration_label("ce", "ce", {}) == "CE"


def test_figure_histograms_and_detection_table(runs, tmp_path, saved):
    run = selection.best_limit_run(runs, "mnist", "uniform", 0.8, "all")
    assert run["hparams"] == "beta=3" and run["seed"] == 42
    auc = figures.figure_histograms(run["run_dir"], tmp_path / "figA2")
    with np.load(Path(run["run_dir"]) / "train_scores.npz") as scores:
        assert auc == pytest.approx(stats.detection_auc(scores["grad_distance"], scores["is_corrupted"]))
    assert 0.95 < auc <= 1.0
    panels = _assert_figure(tmp_path / "figA2", saved).axes
    assert len(panels) == 2 and f"ROC AUC {100 * auc:.2f}%" in panels[1].get_title()
    for ax in panels:  # a step histogram for each label group, and its legend
        assert len(ax.collections) == 2 and legend_labels(ax) == ["correct label", "incorrect label"]
    table = tables.detection_table(runs, tmp_path / "auc").set_index(["dataset", "n"])
    assert table.loc[("mnist", "all"), "paper_auc"] == "99.87"
    assert table.loc[("mnist", "all"), "auc"] == pytest.approx(100 * auc)
    assert table.loc[("cifar10", "all"), "variant"] == "limit_g_init"
    md = (tmp_path / "auc.md").read_text()
    assert f"| {100 * auc:.2f} | 99.87 |" in md and "| > 99 |" in md


def test_figure_top_examples(runs, tmp_path, saved):
    run = selection.best_limit_run(runs, "mnist", "uniform", 0.8, "all")
    images = np.random.default_rng(0).integers(0, 256, size=(200, 1, 28, 28), dtype=np.uint8)
    shown = figures.figure_top_examples(run["run_dir"], images, tmp_path / "figA3", per_class=3)
    with np.load(Path(run["run_dir"]) / "train_scores.npz") as scores:
        given, distance = scores["noisy_label"], scores["grad_distance"]
    for label, group in shown.groupby("noisy_label"):
        assert len(group) == min(3, (given == label).sum())
        assert group["grad_distance"].min() >= np.sort(distance[given == label])[::-1][len(group) - 1] - 1e-12
    fig = _assert_figure(tmp_path / "figA3", saved)
    images_shown = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    assert len(images_shown) == len(shown)  # an image an example, its own pixels, in order
    for drawn, idx in zip(images_shown, shown["train_idx"], strict=True):
        assert np.array_equal(drawn, images[idx, 0])
    colour = np.random.default_rng(1).integers(0, 256, size=(200, 3, 32, 32), dtype=np.uint8)
    shown = figures.figure_top_examples(run["run_dir"], colour, tmp_path / "figA3c", per_class=2,
                                        class_names=[f"class {i}" for i in range(10)])
    axes = [ax for ax in _assert_figure(tmp_path / "figA3c", saved).axes if ax.get_images()]
    assert [ax.get_title().splitlines()[0] for ax in axes] == [f"given: class {c}" for c in shown["noisy_label"]]
    assert np.array_equal(axes[0].get_images()[0].get_array(), colour[shown["train_idx"].iloc[0]].transpose(1, 2, 0))


def test_smoothing_sigma():
    """A Gaussian of σ = 2 epochs (the authors' helper, reference.md): an impulse becomes its normal density."""
    values = np.r_[np.zeros(20), np.ones(20)]
    smoothed = figures.smooth(values)
    assert smoothed[0] == pytest.approx(0) and smoothed[-1] == pytest.approx(1)
    assert 0 < smoothed[19] < 0.5 < smoothed[20] < 1
    impulse = figures.smooth(np.eye(1, 41, 20)[0])
    assert impulse.sum() == pytest.approx(1)
    assert impulse[18:23] == pytest.approx(np.exp(-np.arange(-2, 3) ** 2 / 8) / (2 * np.sqrt(2 * np.pi)), abs=1e-4)


def test_limit_labels_get_mathtext_subscripts_and_other_labels_stay():
    assert paper.math_label(paper.METHOD_LABELS["limit_g"]) == "LIMIT$_G$ − S"
    assert paper.math_label("LIMIT_L + init") == "LIMIT$_L$ + init"
    assert paper.math_label("CE + GN") == "CE + GN"
