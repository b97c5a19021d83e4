"""Model selection over a run table.

The run table (``runs.csv``, written by ``limit aggregate``) has a ``selected`` column, decided once by
``limit select``, and a ``figure1`` column: the runs of the blocks that draw Figure 1 (MLP, clean validation),
which share data settings with Table 1 but are not table entries.
"""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from limit.registry import HPARAMS, LIMIT_METHODS
from limit.runs import rundir
from limit.tracking.uri import TRACKING_URI_HELP

SETTING = ["experiment", "dataset", "noise", "rate", "n", "variant"]
CONFIGURATION = SETTING + ["hparams"]


def normalise_runs(runs):
    """Types a run table read back from CSV may lose: ``n`` as str ("1000", "all"), ``seed`` int, ``rate`` float."""
    return runs.assign(n=runs["n"].astype(str), seed=runs["seed"].astype(int), rate=runs["rate"].astype(float))


def configurations(runs):
    """Runs aggregated over seeds: one row per (experiment, dataset, noise, rate, n, variant, hparams) with
    ``method``, the hyperparameter columns, ``test_acc_mean/std``, ``best_val_acc_mean/std`` (ddof 1), ``seeds``,
    and ``selected`` when the run table has that column."""
    runs = normalise_runs(runs)
    first = {c: (c, "first") for c in ["method", "clean_validation", *HPARAMS] if c in runs}
    selected = {rundir.SELECTED: (rundir.SELECTED, "any")} if rundir.SELECTED in runs else {}
    # dropna=False keeps Clothing1M, whose noise rate is undefined (NaN).
    return runs.groupby(CONFIGURATION, dropna=False, sort=True).agg(
        **first, **{rundir.TEST_ACC_MEAN: (rundir.TEST_ACC, "mean"), rundir.TEST_ACC_STD: (rundir.TEST_ACC, "std"),
                    rundir.BEST_VAL_ACC_MEAN: (rundir.BEST_VAL_ACC, "mean"),
                    rundir.BEST_VAL_ACC_STD: (rundir.BEST_VAL_ACC, "std"), rundir.SEEDS: ("seed", "count")},
        **selected).reset_index()


def select_configurations(runs):
    """The selection (``limit select``): ``configurations`` with ``selected`` marking, per data setting and
    variant, the configuration with the highest mean validation accuracy (first hparams label on ties)."""
    configs = configurations(runs.drop(columns=rundir.SELECTED, errors="ignore"))
    scored = configs.dropna(subset=[rundir.BEST_VAL_ACC_MEAN])  # a setting whose runs all lack validation: no pick
    best = scored.groupby(SETTING, dropna=False, sort=False)[rundir.BEST_VAL_ACC_MEAN].idxmax()
    configs[rundir.SELECTED] = configs.index.isin(best.to_numpy())
    return configs


def selected_runs(runs, experiments=None):
    """Runs of the selected configuration per (dataset, noise, rate, n, variant), across experiment blocks.

    ``experiments``: the blocks to use; default every block except Figure 1's. When several blocks ran the
    same setting, the one whose selected configuration has the higher mean validation accuracy wins.
    Sorted by seed, so the first row of a group is its first seed.
    """
    runs = normalise_runs(runs)
    runs = runs[~runs[rundir.FIGURE1]] if experiments is None else runs[runs["experiment"].isin(experiments)]
    configs = configurations(runs[runs[rundir.SELECTED]])
    configs = configs.sort_values(rundir.BEST_VAL_ACC_MEAN, ascending=False, kind="stable")
    winners = configs.drop_duplicates(["dataset", "noise", "rate", "n", "variant"])[CONFIGURATION]
    return runs.merge(winners, on=CONFIGURATION).sort_values(["variant", "seed"], kind="stable").reset_index(drop=True)


def best_limit_run(runs, dataset, noise, rate, n):
    """First-seed run of the best selected LIMIT configuration (highest mean validation accuracy) at a setting,
    or None. This is "the best LIMIT instance" of Figures A1/A2 and the detection AUC."""
    chosen = selected_runs(runs)
    chosen = chosen[(chosen["dataset"] == dataset) & (chosen["noise"] == noise) & (chosen["n"] == str(n))
                    & np.isclose(chosen["rate"], rate, equal_nan=True) & chosen["method"].isin(LIMIT_METHODS)]
    if chosen.empty:
        return None
    mean_val = chosen.groupby("variant")[rundir.BEST_VAL_ACC].transform("mean")
    best_variant = chosen.loc[mean_val.idxmax(), "variant"]
    return chosen[chosen["variant"] == best_variant].iloc[0]


def run_table(run_dirs):
    """The run-table rows of finished run directories."""
    return pd.DataFrame([rundir.read_run(d) for d in run_dirs])


def add_select_arguments(parser):
    parser.add_argument("run_dirs", nargs="+", help="every run (all seeds, all hyperparameters) of the groups")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="JSON file with the selection of the runs' one group")
    where.add_argument("--out-dir", help="a JSON file per group of the runs: OUT_DIR/<group>.json (e.g. "
                                         "main/fashion_mnist/uniform-0.5/n1000/limit_l.json)")
    parser.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    parser.add_argument("--no-tracking", action="store_true", help="do not tag the selected runs in MLflow")


def run_select(args):
    """Pick, per group (data setting and method variant), the hyperparameters with the best mean noisy-validation
    accuracy over seeds."""
    runs = run_table(args.run_dirs)
    # a Series, not a list: pandas takes a one-item list for a list of groupers, and its keys for 1-tuples
    groups = pd.Series([rundir.group_key(*(row[c] for c in SETTING)) for row in runs.to_dict("records")],
                       index=runs.index)
    if args.out and groups.nunique() > 1:
        raise ValueError(f"--out takes the runs of one group, these are of {groups.nunique()}: give --out-dir")
    for group, runs_of_group in runs.groupby(groups, sort=True):
        select_group(runs_of_group, args.out or os.path.join(args.out_dir, f"{group}.json"), args)


def select_group(runs, out, args):
    """Write the selection of one group's runs into ``out``, and tag them in MLflow unless ``--no-tracking``."""
    configs = select_configurations(runs)
    chosen = configs[configs[rundir.SELECTED]].iloc[0]
    result = {"selected": chosen["hparams"],
              "configurations": json.loads(configs.to_json(orient="records")),
              "run_dirs": sorted(runs.loc[runs["hparams"] == chosen["hparams"], "run_dir"]),
              "all_run_dirs": sorted(runs["run_dir"])}
    rundir.write_json(out, result)
    if not args.no_tracking:
        from limit.tracking.client import tag_selection
        tag_selection(runs["run_dir"], set(result["run_dirs"]), chosen, args.tracking_uri)
    print(f"{out}: {chosen['hparams']} (mean validation accuracy {chosen[rundir.BEST_VAL_ACC_MEAN]:.4f} "
          f"over {chosen[rundir.SEEDS]} seeds)")


def add_aggregate_arguments(parser):
    parser.add_argument("--selections", nargs="+", required=True,
                        help="JSON files written by `select`, or folders of them (its --out-dir)")
    parser.add_argument("--out-runs", required=True, help="CSV of every run")
    parser.add_argument("--out-selected", required=True, help="CSV of every configuration, aggregated over seeds")
    parser.add_argument("--figure1-experiments", nargs="*", default=(),
                        help="experiment blocks that draw Figure 1 (kept out of the tables and the other figures)")


def run_aggregate(args):
    """All runs in one table, with a ``selected`` column from the decisions of `select`, for the report stage."""
    # The selection files list their groups' runs: the command line stays short for 5,000 runs.
    paths = [p for s in map(Path, args.selections) for p in (sorted(s.rglob("*.json")) if s.is_dir() else [s])]
    selections = [rundir.read_json(path) for path in paths]
    runs = normalise_runs(run_table([d for s in selections for d in s["all_run_dirs"]]))
    runs[rundir.SELECTED] = runs["run_dir"].isin({d for s in selections for d in s["run_dirs"]})
    runs[rundir.FIGURE1] = runs["experiment"].isin(args.figure1_experiments)
    runs = runs.sort_values("run_id")
    rundir.write_text(args.out_runs, runs.to_csv(index=False))
    rundir.write_text(args.out_selected, configurations(runs).to_csv(index=False))
    print(f"{args.out_runs}: {len(runs)} runs, {int(runs[rundir.SELECTED].sum())} in selected configurations")
