"""The paper's tables rendered from a run table (Markdown, LaTeX, CSV), our numbers next to the paper's.

A ``TableSpec`` names its rows (config variants, in the paper's order) and columns (data settings); a
config's datasets, noise models, rates, training-set sizes and methods therefore decide what a table holds.
Two layouts, as in the paper:
- "seeds" (MNIST, Tables 1, 4, 5): mean ± std (ddof 1) over seeds of the selected configuration's test accuracy;
- "bootstrap" (CIFAR, Clothing1M, Tables 2, 6, 7): the first seed's test accuracy, error bar = bootstrap std
  over the test set from that run's ``test_outputs.npz``.
The best cell of a column and every cell whose mean is within the best cell's std of it are bold.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from limit.registry import named_dataset
from limit.report.paper import (
    PAPER_DETECTION_AUC,
    PAPER_NUMBERS_DIR,
    PAPER_TABLES,
    all_paper_numbers,
    label,
    paper_numbers,
    variant_order,
)
from limit.report.selection import best_limit_run, normalise_runs, selected_runs
from limit.report.stats import bootstrap_from_run, detection_auc, read_train_scores
from limit.runs import rundir

MISSING = "—"
PAPER_TITLES = {
    "table1": "Table 1: MNIST, uniform label noise",
    "table2": "Table 2: CIFAR-10 (uniform and pair noise), CIFAR-100 (40% uniform), Clothing1M",
    "table4": "Table 4: MNIST, uniform label noise, p = 0.0 and 0.5",
    "table5": "Table 5: MNIST, uniform label noise, p = 0.8 and 0.89",
    "table6": "Table 6: CIFAR-10, uniform label noise",
    "table7": "Table 7: CIFAR-10, pair noise",
}
LAYOUT_NOTES = {
    "seeds": "Test accuracy (%), mean ± std over seeds of the configuration selected by mean validation accuracy",
    "bootstrap": "Test accuracy (%) of one run (first seed) of the configuration selected by validation accuracy; "
                 "± = std over 1000 bootstrap resamples of the test set",
}


@dataclass(frozen=True)
class Column:
    dataset: str
    noise: str
    rate: float  # NaN for real noise (Clothing1M)
    n: str  # "1000", "10000", "all"
    label: str
    decimals: int = 1


@dataclass(frozen=True)
class TableSpec:
    name: str  # file stem
    title: str
    layout: str  # "seeds" or "bootstrap"
    rows: tuple  # config variants (registry names for the paper's methods)
    columns: tuple
    experiments: tuple | None = None  # experiment blocks to read; None: all but Figure 1's
    compare_to_paper: bool = True  # False where the paper's numbers come from another setup (Figure 1's MLP)


def setting_key(dataset, noise, rate, n):
    """Hashable identity of a data setting; Clothing1M's rate is undefined. Rate 0 is noise-agnostic: the clean
    labels of a (cifar10, pair, 0.0) run fill the paper's (cifar10, uniform, 0.0) cells."""
    undefined = noise == "real" or rate is None or (isinstance(rate, float) and math.isnan(rate))
    if undefined:
        return dataset, noise, None, str(n)
    rate = round(float(rate), 6)
    return dataset, None if rate == 0 else noise, rate, str(n)


def make_columns(settings):
    """Columns for (dataset, noise, rate, n) tuples; labels name only what varies across the table."""
    settings = list(settings)
    many = {field: len({s[i] for s in settings}) > 1 for i, field in enumerate(["dataset", "noise", "rate", "n"])}
    columns = []
    for dataset, noise, rate, n in settings:
        show = [field for field, shown in (("dataset", many["dataset"]), ("noise", many["noise"]), ("rate", True),
                                           ("n", many["n"] or n != "all")) if shown]
        text = rundir.setting_text(dataset, noise, rate, n, style="column", show=show)
        rate = math.nan if rate is None else float(rate)
        columns.append(Column(dataset, noise, rate, n, text, named_dataset(dataset).decimals))
    return tuple(columns)


def _n_order(n):
    return (n == "all", int(n) if n.isdigit() else 0, n)


def _row_order(runs):
    return tuple(variant_order(dict(zip(runs["variant"], runs["method"]))))


def setting_table_spec(name, dataset, noise, rates, ns, variants, experiments=None, layout=None, title=None,
                       compare_to_paper=True):
    """A table over one dataset and noise model: columns = rates x ns (in the given order), rows = variants."""
    layout = layout or named_dataset(dataset).table_layout
    title = title or f"{named_dataset(dataset).label}, {noise} label noise"
    columns = make_columns([(dataset, noise, rate, str(n)) for rate in rates for n in ns])
    return TableSpec(name, title, layout, tuple(variants), columns, experiments, compare_to_paper)


def paper_table_spec(table):
    """The layout of one of the paper's tables (rows and columns in its order), read from its numbers."""
    numbers = paper_numbers(table)
    settings = {}  # one column per setting, as the paper names it
    for key in zip(numbers["dataset"], numbers["noise"], numbers["rate"], numbers["n"]):
        settings.setdefault(setting_key(*key), (key[0], key[1], None if key[1] == "real" else key[2], key[3]))
    layout = "seeds" if table in ("table1", "table4", "table5") else "bootstrap"
    return TableSpec(table, PAPER_TITLES[table], layout, tuple(numbers["method"].unique()),
                     make_columns(settings.values()))


def _spec_cells(spec):
    return {(row, setting_key(c.dataset, c.noise, c.rate, c.n)) for row in spec.rows for c in spec.columns}


def _run_cells(runs):
    return {(r.variant, setting_key(r.dataset, r.noise, r.rate, r.n)) for r in runs.itertuples()}


def default_table_specs(runs):
    """Specs for the tables a run table can fill.

    - each paper table with at least one of its cells run (its rows and columns as in the paper);
    - per (dataset, noise) with runs that no paper table shows (e.g. Fashion-MNIST, other rates or variants):
      a table of all its rates x sizes x variants;
    - the Figure-1 block's test accuracies, as its own table (no paper column: the paper's MNIST numbers are
      of the CNN, not of Figure 1's MLP).
    """
    runs = normalise_runs(runs)
    table_runs = runs[~runs[rundir.FIGURE1]]
    run_cells = _run_cells(table_runs)
    specs, covered = [], set()
    for table in PAPER_TABLES:
        spec = paper_table_spec(table)
        if _spec_cells(spec) & run_cells:
            specs.append(spec)
            covered |= _spec_cells(spec)
    figure1_blocks = [((name,), block, f"{name}_") for name, block in runs[runs[rundir.FIGURE1]].groupby("experiment")]
    for experiments, block_runs, prefix in [(None, table_runs, ""), *figure1_blocks]:
        for (dataset, noise), block in block_runs.groupby(["dataset", "noise"], sort=True):
            if experiments is None and not _run_cells(block) - covered:
                continue
            rates = sorted(block["rate"].unique())
            ns = sorted(block["n"].unique(), key=_n_order)
            specs.append(setting_table_spec(f"{prefix}{dataset}_{noise}", dataset, noise, rates, ns,
                                            _row_order(block), experiments, compare_to_paper=experiments is None))
    return specs


def table_cells(runs, spec):
    """One row per (row, column) of the spec: ours (percent), the paper's, their difference, and the bold mark."""
    chosen = selected_runs(runs, spec.experiments)
    chosen["key"] = [setting_key(*k) for k in zip(chosen["dataset"], chosen["noise"], chosen["rate"], chosen["n"])]
    groups = dict(list(chosen.groupby(["variant", "key"], sort=False)))
    paper = all_paper_numbers()
    paper_index = {(m, setting_key(d, no, r, n)): (mean, std)
                   for m, d, no, r, n, mean, std in paper.itertuples(index=False)}
    methods = dict(zip(runs["variant"], runs["method"]))
    records = []
    for row in spec.rows:
        for column in spec.columns:
            key = setting_key(column.dataset, column.noise, column.rate, column.n)
            ours = groups.get((row, key))
            mean = std = math.nan
            seeds, hparams_label, run_id = 0, "", ""
            if ours is not None:
                hparams_label = ours["hparams"].iloc[0]
                if spec.layout == "seeds":
                    mean, std = 100 * ours[rundir.TEST_ACC].mean(), 100 * ours[rundir.TEST_ACC].std()
                    seeds = len(ours)
                else:
                    first = ours.iloc[0]
                    mean, seeds, run_id = 100 * first[rundir.TEST_ACC], 1, first["run_id"]
                    std = 100 * _bootstrap_std_or_nan(first["run_dir"])
            paper_mean, paper_std = paper_index.get((row, key), (math.nan, math.nan))
            if not spec.compare_to_paper:
                paper_mean = paper_std = math.nan
            records.append(dict(table=spec.name, row=row, method_label=label(row, methods.get(row)),
                                column=column.label, dataset=column.dataset, noise=column.noise,
                                rate=column.rate, n=column.n,
                                hparams=hparams_label, run_id=run_id, seeds=seeds, ours_mean=mean, ours_std=std,
                                paper_mean=paper_mean, paper_std=paper_std, difference=mean - paper_mean))
    cells = pd.DataFrame.from_records(records)
    cells["bold"] = _bold_marks(cells)
    return cells


def _bootstrap_std_or_nan(run_dir):
    try:
        return bootstrap_from_run(run_dir)[1]
    except FileNotFoundError:
        return math.nan


def _bold_marks(cells):
    """Per column: the best mean, and every mean within the best cell's std of it (the paper's bold)."""
    bold = pd.Series(False, index=cells.index)
    for _, column in cells.groupby("column", sort=False):
        if column["ours_mean"].notna().any():
            best = column.loc[column["ours_mean"].idxmax()]
            margin = 0.0 if math.isnan(best["ours_std"]) else best["ours_std"]
            bold[column.index] = column["ours_mean"] >= best["ours_mean"] - margin - 1e-9
    return bold


def _format(mean, std, decimals):
    if math.isnan(mean):
        return MISSING
    return f"{mean:.{decimals}f}" if math.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _cell_texts(cells, spec, with_paper):
    """Row label -> list of (text, bold) per shown cell: ours, then the paper's and Δ when shown."""
    decimals = {c.label: c.decimals for c in spec.columns}
    rows = {}
    for cell in cells.itertuples():
        d = decimals[cell.column]
        texts = [(_format(cell.ours_mean, cell.ours_std, d), cell.bold)]
        if with_paper:
            difference = MISSING if math.isnan(cell.difference) else f"{cell.difference:+.{d}f}"
            texts += [(_format(cell.paper_mean, cell.paper_std, d), False), (difference, False)]
        rows.setdefault(cell.method_label, []).extend(texts)
    return rows


def _notes(spec, with_paper):
    notes = [LAYOUT_NOTES[spec.layout] + ".", "Bold: the best of the column and every mean within its std.",
             f"{MISSING}: not run."]
    if with_paper:
        notes.insert(1, "paper: the paper's number; Δ = ours − paper (percentage points).")
    return " ".join(notes)


def to_markdown(cells, spec):
    with_paper = bool(cells["paper_mean"].notna().any())
    header = ["Method"]
    for column in spec.columns:
        header += [column.label, "paper", "Δ"] if with_paper else [column.label]
    lines = [f"### {spec.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row_label, texts in _cell_texts(cells, spec, with_paper).items():
        shown = [f"**{text}**" if bold else text for text, bold in texts]
        lines.append("| " + " | ".join([row_label, *shown]) + " |")
    return "\n".join(lines + ["", _notes(spec, with_paper), ""])


def latex_escape(text):
    """Escape LaTeX specials and typeset LIMIT_X, ±, −, ×, Δ and — ."""
    for char in "&%#_":
        text = text.replace(char, "\\" + char)
    for plain, typeset in [("LIMIT\\_G", "LIMIT$_G$"), ("LIMIT\\_L", "LIMIT$_L$"), ("±", "$\\pm$"),
                           ("−", "$-$"), ("×", "$\\times$"), ("Δ", "$\\Delta$"), ("—", "---")]:
        text = text.replace(plain, typeset)
    return text


def to_latex(cells, spec):
    with_paper = bool(cells["paper_mean"].notna().any())
    width = 3 if with_paper else 1
    lines = ["\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{latex_escape(spec.title + '. ' + _notes(spec, with_paper))}}}",
             f"\\begin{{tabular}}{{l{'c' * width * len(spec.columns)}}}", "\\toprule"]
    if with_paper:
        groups = [f"\\multicolumn{{3}}{{c}}{{{latex_escape(c.label)}}}" for c in spec.columns]
        rules = [f"\\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(spec.columns))]
        lines += ["Method & " + " & ".join(groups) + " \\\\", "".join(rules),
                  " & " + " & ".join(["ours & paper & $\\Delta$"] * len(spec.columns)) + " \\\\"]
    else:
        lines.append("Method & " + " & ".join(latex_escape(c.label) for c in spec.columns) + " \\\\")
    lines.append("\\midrule")
    for row_label, texts in _cell_texts(cells, spec, with_paper).items():
        shown = [f"\\textbf{{{latex_escape(text)}}}" if bold else latex_escape(text) for text, bold in texts]
        lines.append(" & ".join([latex_escape(row_label), *shown]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def render_table(runs, spec, out_prefix):
    """Write ``out_prefix``.md, .tex and .csv (one row per cell) for a table spec; return the cells."""
    cells = table_cells(runs, spec)
    out_prefix = str(out_prefix)
    with open(out_prefix + ".md", "w") as f:
        f.write(to_markdown(cells, spec))
    with open(out_prefix + ".tex", "w") as f:
        f.write(to_latex(cells, spec))
    cells.to_csv(out_prefix + ".csv", index=False)
    return cells


def detection_table(runs, out_prefix):
    """ROC AUC (%) of the gradient distance as a mislabeled-label detector, with the best LIMIT instance of each
    noisy setting that saved ``train_scores.npz``, next to the paper's value. Writes .md and .csv."""
    chosen = selected_runs(runs)
    settings = chosen[chosen["rate"].fillna(1.0) > 0][["dataset", "noise", "rate", "n"]].drop_duplicates()
    records = []
    for setting in settings.itertuples(index=False):
        run = best_limit_run(runs, *setting)
        if run is None or not (Path(run.run_dir) / rundir.TRAIN_SCORES).exists():
            continue
        scores = read_train_scores(run.run_dir)
        key = (setting.dataset, setting.noise, round(setting.rate, 6), setting.n)
        records.append(dict(**setting._asdict(), variant=run.variant, hparams=run.hparams, run_id=run.run_id,
                            run_dir=run.run_dir,
                            auc=100 * detection_auc(scores["grad_distance"], scores["is_corrupted"]),
                            paper_auc=PAPER_DETECTION_AUC.get(key, "—")))
    table = pd.DataFrame.from_records(records, columns=["dataset", "noise", "rate", "n", "variant", "hparams",
                                                        "run_id", "run_dir", "auc", "paper_auc"])
    table.to_csv(f"{out_prefix}.csv", index=False)
    lines = ["### Mislabeled-example detection: ROC AUC (%) of ‖μ − g_CE‖ (best LIMIT instance per setting)", "",
             "| Setting | LIMIT run | ours | paper |", "|---|---|---|---|"]
    for row in table.itertuples():
        setting = rundir.setting_text(row.dataset, row.noise, row.rate, row.n, style="title")
        ours = "—" if math.isnan(row.auc) else f"{row.auc:.2f}"
        lines.append(f"| {setting} | {label(row.variant)} ({row.hparams}) | {ours} | {row.paper_auc} |")
    Path(f"{out_prefix}.md").write_text("\n".join(lines) + "\n")
    return table


def render_architecture_table(path_prefix):
    """Paper Table 3 (the MNIST CNN, as ``limit.models.mnist_cnn`` builds it: a test checks the rows against it):
    writes .md, .tex, .csv; returns the rows."""
    rows = pd.read_csv(PAPER_NUMBERS_DIR / "table3.csv")
    path_prefix = str(path_prefix)
    rows.to_csv(path_prefix + ".csv", index=False)
    total = int(rows["weights"].sum())
    title = "Table 3: the architecture of the MNIST classifiers (input 1 × 28 × 28)"
    md = [f"### {title}", "", "| Layer type | Parameters | Output | # weights |", "|---|---|---|---|"]
    md += [f"| {r.layer} | {r.parameters} | {r.output} | {r.weights:,} |" for r in rows.itertuples()]
    md += [f"| Total | | | {total:,} |", "", "As limit.models.mnist_cnn builds it.", ""]
    with open(path_prefix + ".md", "w") as f:
        f.write("\n".join(md))
    tex = ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(title)}}}",
           "\\begin{tabular}{llrr}", "\\toprule", "Layer type & Parameters & Output & \\# weights \\\\", "\\midrule"]
    tex += [f"{r.layer} & {latex_escape(r.parameters)} & {latex_escape(r.output)} & {r.weights:,} \\\\"
            for r in rows.itertuples()]
    tex += ["\\midrule", f"Total & & & {total:,} \\\\", "\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    with open(path_prefix + ".tex", "w") as f:
        f.write("\n".join(tex))
    return rows
