"""The report stage: every table and figure the run table can fill (``python -m limit report``)."""
import html
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from limit.registry import named_dataset
from limit.report import figures, tables
from limit.report.paper import configuration_label, math_label
from limit.report.selection import best_limit_run, normalise_runs, selected_runs
from limit.runs import rundir


def markdown_table_to_html(markdown):
    """A pipe table (as ``limit.report.tables.to_markdown`` writes it) as an HTML page, for Snakemake's report."""
    lines = [line for line in markdown.splitlines() if line.strip()]
    out = ["<html><body>"]
    table_lines = [line for line in lines if line.startswith("|")]
    for line in lines:
        if not line.startswith("|"):
            out.append(f"<p>{html.escape(line.lstrip('# '))}</p>")
    out.append("<table border='1' cellpadding='4' style='border-collapse:collapse'>")
    for i, line in enumerate(table_lines):
        if set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        row = "".join(f"<{tag}>{_bold(html.escape(c))}</{tag}>" for c in cells)
        out.append(f"<tr>{row}</tr>")
    out.append("</table></body></html>")
    return "\n".join(out)


def _bold(text):
    return f"<b>{text[2:-2]}</b>" if text.startswith("**") and text.endswith("**") else text


def render_tables(runs, out_dir):
    """Paper-layout tables (Markdown, LaTeX, CSV, HTML), Table 3, the detection AUC table, all runs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for spec in tables.default_table_specs(runs):
        tables.render_table(runs, spec, out / spec.name)
    tables.render_architecture_table(out / "table3_architecture")
    tables.detection_table(runs, out / "detection_auc")
    for markdown in out.glob("*.md"):  # Snakemake's report shows HTML
        markdown.with_suffix(".html").write_text(markdown_table_to_html(markdown.read_text()))


def _noisiest_settings(runs):
    """Per (dataset, noise, n) outside the Figure-1 blocks: the highest noise rate (Figures 3 and A0)."""
    table_runs = runs[~runs[rundir.FIGURE1]]
    return (table_runs.groupby(["dataset", "noise", "n"], sort=True)["rate"].max().reset_index()
            .itertuples(index=False))


def render_figures(runs, out_dir, data_dir, jobs=1):
    """Figures 1, 2, 3, A0, A1/A2 and 4/A3 for whatever the run table holds; ``jobs`` figures at a time, each in
    its own process when more than one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(figures.figure_fano, out / "figure2_fano")]
    figure1 = runs[runs[rundir.FIGURE1]]
    if not figure1.empty:
        tasks.append((figures.figure_memorisation, runs, out / "figure1_memorisation", float(figure1["rate"].max())))
    settings = list(_noisiest_settings(runs))
    for i, (dataset, noise, n, rate) in enumerate(settings):
        name = rundir.setting_text(dataset, noise, rate, n, style="name")
        tasks.append((figures.figure_curves, runs, out / f"figure3_curves{'' if i == 0 else '_' + name}", dataset,
                      noise, rate, n))
        limit_variants = tuple(v for v in ("limit_g", "limit_l") if v in set(runs["variant"]))
        if limit_variants:
            tasks.append((figures.figure_beta, runs, out / f"figureA0_beta_{name}", dataset, noise, rate, n,
                          limit_variants))
    chosen = selected_runs(runs)
    for setting in chosen[["dataset", "noise", "rate", "n"]].drop_duplicates().itertuples(index=False):
        run = best_limit_run(runs, *setting)
        if run is None or not (Path(run.run_dir) / rundir.TRAIN_SCORES).exists():
            continue
        name = rundir.setting_text(*setting, style="name")
        title = math_label(f"{rundir.setting_text(*setting, style='title')}: "
                           f"{configuration_label(run.variant, run.method, figures.run_hparams(run))}, seed {run.seed}")
        if setting.rate > 0:
            tasks.append((figures.figure_histograms, run.run_dir, out / f"figureA1A2_histograms_{name}",
                          f"Training set, {title}"))
        elif not named_dataset(setting.dataset).streamed:
            tasks.append((_figure_top_examples, run.run_dir, data_dir, out / f"figure4_top_examples_{name}",
                          f"Largest ‖μ − g$_{{CE}}$‖ per given label: {title}"))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            for done in [pool.submit(*task) for task in tasks]:
                done.result()
    else:
        for function, *args in tasks:
            function(*args)


def _figure_top_examples(run_dir, data_dir, out_prefix, title):
    """Figure 4 / A3: the most suspicious labels of the original (uncorrupted) training set."""
    from limit.data import load_arrays
    dataset = rundir.read_json(Path(run_dir) / rundir.CONFIG)["dataset"]  # or an image cache
    arrays = load_arrays(dataset, data_dir)
    figures.figure_top_examples(run_dir, arrays.train_x.numpy(), out_prefix, class_names=arrays.classes, title=title)


def render_report(runs_csv, tables_dir, figures_dir, data_dir, jobs=1):
    """Render every table and figure beside ``tables_dir`` and ``figures_dir``, then swap them in: a report that
    fails, or is killed, leaves the previous ones as they were."""
    runs = normalise_runs(pd.read_csv(runs_csv))
    staged = {Path(d): Path(d).with_name(f".{Path(d).name}.new") for d in (tables_dir, figures_dir)}
    for new in staged.values():
        shutil.rmtree(new, ignore_errors=True)
    render_tables(runs, staged[Path(tables_dir)])
    render_figures(runs, staged[Path(figures_dir)], data_dir, jobs)
    for final, new in staged.items():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        new.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    return sorted(p.name for d in staged for p in d.iterdir())


def add_report_arguments(parser):
    parser.add_argument("--runs", required=True, help="CSV written by `aggregate`")
    parser.add_argument("--tables", required=True, help="output directory of the tables")
    parser.add_argument("--figures", required=True, help="output directory of the figures")
    parser.add_argument("--data-dir", default="data", help="dataset directory (images of Figure 4)")
    parser.add_argument("--jobs", type=int, default=1, help="figures rendered at a time, each in its own process")


def run_report(args):
    written = render_report(args.runs, args.tables, args.figures, args.data_dir, args.jobs)
    print(f"{len(written)} table and figure files in {args.tables} and {args.figures}")
