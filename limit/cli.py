"""Command line: ``limit COMMAND ...`` (or ``python -m limit``); every workflow rule calls one of these.

Each command imports what it needs when it runs, so that ``--help`` answers at once.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

from limit import rundir
from limit.registry import BN_INIT, DATASETS, HPARAMS, METHODS, TRAINING_DEFAULTS


def cmd_prepare(args):
    if args.dataset == "clothing1m":
        from limit.clothing1m import check_clothing1m_dir
        check_clothing1m_dir(args.data_dir)
    else:
        from limit.data import prepare_dataset
        prepare_dataset(args.dataset, args.data_dir, download=args.download)
    print(f"{args.dataset}: files present in {args.data_dir}")


def _n_arg(value):
    return None if value in (None, "all") else int(value)


def cmd_corrupt(args):
    from limit import data as D
    info = D.dataset_info(args.dataset)
    if args.dataset == "clothing1m":
        from limit.clothing1m import clothing1m_labels
        arrays = clothing1m_labels(args.data_dir)
    else:
        train_labels = D.load_arrays(args.dataset, args.data_dir).train_y.numpy()
        arrays = D.make_noisy_labels(train_labels, info.num_classes, args.dataset, args.noise, args.rate, args.seed,
                                     n=_n_arg(args.n), val_size=args.val_size)
    meta = {"dataset": args.dataset, "noise": args.noise, "rate": args.rate, "n": args.n, "seed": args.seed,
            "val_size": args.val_size}
    meta = D.write_labels_file(args.out, arrays, meta)
    print(f"{args.out}: {len(arrays['train_idx'])} train ({arrays['is_corrupted'].mean():.3f} corrupted), "
          f"{len(arrays['val_idx'])} validation, sha256 {meta['sha256'][:12]}")


def cmd_train(args):
    from limit.tracking import Tracker
    from limit.train import train
    hparams = {k: getattr(args, k) for k in HPARAMS if getattr(args, k) is not None}
    config = {"dataset": args.dataset, "data_dir": args.data_dir, "labels": args.labels, "method": args.method,
              "arch": args.arch, "hparams": hparams, "epochs": args.epochs, "patience": args.patience,
              "batch_size": args.batch_size, "seed": args.seed, "clean_validation": args.clean_validation,
              "init_from": args.init_from, "device": args.device, "eval_test_each_epoch": not args.no_test_curve,
              "test_curve_size": args.test_curve_size,
              "imagenet_weights": args.imagenet_weights, "num_workers": args.num_workers, "bn_init": args.bn_init,
              "run": {"experiment": args.experiment, "variant": args.variant or args.method}}
    tracker = None
    if not args.no_tracking:
        experiment_id = args.experiment_id
        if args.experiments_file:  # written by `limit mlflow-init` before any job starts
            experiment_id = rundir.read_json(args.experiments_file)["experiments"][args.experiment]
        tracker = Tracker(args.out, args.tracking_uri, experiment_id)
    metrics = train(config, args.out, tracker)
    print(json.dumps(metrics))


def _run_table(run_dirs):
    import pandas as pd
    return pd.DataFrame([rundir.read_run(d) for d in run_dirs])


def cmd_select(args):
    """Pick the hyperparameters with the best mean validation accuracy over seeds."""
    from limit.evaluate import select_configurations
    from limit.tracking import tag_selected
    runs = _run_table(args.run_dirs)
    configs = select_configurations(runs)
    chosen = configs[configs["selected"]].iloc[0]
    result = {"selected": chosen["hparams"],
              "configurations": json.loads(configs.to_json(orient="records")),
              "run_dirs": sorted(runs.loc[runs["hparams"] == chosen["hparams"], "run_dir"]),
              "all_run_dirs": sorted(runs["run_dir"])}
    rundir.write_json(args.out, result)
    if not args.no_tracking:
        tag_selected(runs["run_dir"], set(result["run_dirs"]), args.tracking_uri)
    print(f"{args.out}: {chosen['hparams']} (mean validation accuracy {chosen['best_val_acc_mean']:.4f} "
          f"over {chosen['seeds']} seeds)")


def cmd_aggregate(args):
    """All runs in one table, with a ``selected`` column from the decisions of `select`, for the report stage."""
    from limit.evaluate import configurations, normalise_runs
    # The selection files list their groups' runs: the command line stays short for 5,000 runs.
    selections = [rundir.read_json(path) for path in args.selections]
    runs = normalise_runs(_run_table([d for s in selections for d in s["all_run_dirs"]]))
    runs["selected"] = runs["run_dir"].isin({d for s in selections for d in s["run_dirs"]})
    runs["figure1"] = runs["experiment"].isin(args.figure1_experiments)
    runs = runs.sort_values("run_id")
    rundir.write_text(args.out_runs, runs.to_csv(index=False))
    rundir.write_text(args.out_selected, configurations(runs).to_csv(index=False))
    print(f"{args.out_runs}: {len(runs)} runs, {int(runs['selected'].sum())} in selected configurations")


def cmd_report(args):
    from limit.report import render_report
    written = render_report(args.runs, args.tables, args.figures, args.data_dir)
    print(f"{len(written)} table and figure files in {args.tables} and {args.figures}")


def cmd_mlflow_sync(args):
    from limit.tracking import sync_run
    total = 0
    for run_dir in args.run_dirs:
        added = sync_run(run_dir, args.tracking_uri)
        total += added
        print(f"{run_dir}: {added} epochs added")
    print(f"synced {len(args.run_dirs)} runs, {total} epochs added")


def cmd_mlflow_init(args):
    """Create the store and the experiments before any job starts (MLflow races otherwise)."""
    from limit.tracking import _client, get_or_create_experiment, tracking_uri
    uri = tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    ids = {name: get_or_create_experiment(client, name, uri) for name in args.experiments}
    rundir.write_json(args.out, {"tracking_uri": uri, "experiments": ids})
    print(json.dumps(ids))


def cmd_bench(args):
    from limit.bench import main
    main(args)


def build_parser():
    p = argparse.ArgumentParser(prog="limit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="check (or download) a dataset's files")
    s.add_argument("--dataset", required=True, help=f"one of {sorted(DATASETS)}")
    s.add_argument("--data-dir", default="data", help="dataset directory (default: data)")
    s.add_argument("--download", action="store_true", help="download missing files (needs internet)")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("corrupt", help="split and corrupt the labels of one data setting into a labels file")
    s.add_argument("--dataset", required=True)
    s.add_argument("--data-dir", default="data")
    s.add_argument("--noise", required=True, help="uniform, symmetric, pair (CIFAR-10) or asymmetric-mnist")
    s.add_argument("--rate", type=float, required=True, help="noise rate p in [0, 1)")
    s.add_argument("--n", default="all", help="training-set size: an integer or 'all' (default)")
    s.add_argument("--seed", type=int, required=True, help="seed of the split and of the noise")
    s.add_argument("--val-size", type=int, default=None, help="keep only this many validation examples")
    s.add_argument("--out", required=True, help="labels file to write (.npz)")
    s.set_defaults(func=cmd_corrupt)

    s = sub.add_parser("train", help="train one run (exactly as the workflow does)",
                       description="Train one run into --out; started again with the same command, a killed run "
                                   "resumes from its last complete epoch.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--data-dir", default="data")
    s.add_argument("--labels", required=True, help="labels file written by `limit corrupt`")
    s.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    s.add_argument("--arch", default=TRAINING_DEFAULTS["arch"],
                   help="cnn (MNIST-style), mlp (Figure 1), resnet34 (CIFAR), resnet50")
    for name, (default, meaning) in HPARAMS.items():
        s.add_argument(f"--{name.replace('_', '-')}", type=float, help=f"{meaning} (default {default:g})")
    s.add_argument("--epochs", type=int, default=TRAINING_DEFAULTS["epochs"])
    s.add_argument("--patience", type=int, default=TRAINING_DEFAULTS["patience"],
                   help="early-stopping patience in epochs")
    s.add_argument("--batch-size", type=int, default=TRAINING_DEFAULTS["batch_size"])
    s.add_argument("--seed", type=int, default=TRAINING_DEFAULTS["seed"],
                   help="seed of initialisation, shuffling and sampling")
    s.add_argument("--clean-validation", action="store_true", help="select on clean validation labels (Figure 1)")
    s.add_argument("--init-from", help="CE run directory (FW, DMI, +init)")
    s.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    s.add_argument("--no-test-curve", action="store_true", help="skip the clean test accuracy of every epoch")
    s.add_argument("--test-curve-size", type=int, help="log every epoch's test accuracy on the first N test "
                                                       "examples only (the final test accuracy uses all)")
    s.add_argument("--bn-init", choices=BN_INIT, default=TRAINING_DEFAULTS["bn_init"],
                   help="authors: BatchNorm statistics warmed on noise as the authors' network builder leaves them "
                        "(reproduces the paper, docs/reproduction.md); standard: PyTorch's (0, 1)")
    s.add_argument("--imagenet-weights", help="ResNet-50 only: path to a torchvision ImageNet state dict")
    s.add_argument("--num-workers", type=int, default=TRAINING_DEFAULTS["num_workers"],
                   help="Clothing1M image-decoding workers")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///results/mlflow.db)")
    s.add_argument("--experiment", default="manual",
                   help="the config's experiment block, also the MLflow experiment (default: manual)")
    s.add_argument("--variant", help="the block's method variant (default: the method)")
    s.add_argument("--experiment-id", help="MLflow experiment id (pass it: creating experiments races)")
    s.add_argument("--experiments-file", help="JSON of experiment ids from `limit mlflow-init`")
    s.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("select", help="select the hyperparameters of one setting and method variant")
    s.add_argument("run_dirs", nargs="+", help="every run (all seeds, all hyperparameters) of the group")
    s.add_argument("--out", required=True, help="JSON file with the selection")
    s.add_argument("--tracking-uri")
    s.add_argument("--no-tracking", action="store_true", help="do not tag the selected runs in MLflow")
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("aggregate", help="one table of all runs, selected configurations marked")
    s.add_argument("--selections", nargs="+", required=True, help="JSON files written by `select`")
    s.add_argument("--out-runs", required=True, help="CSV of every run")
    s.add_argument("--out-selected", required=True, help="CSV of every configuration, aggregated over seeds")
    s.add_argument("--figure1-experiments", nargs="*", default=(),
                   help="experiment blocks that draw Figure 1 (kept out of the tables and the other figures)")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("report", help="render the tables and figures from the run table")
    s.add_argument("--runs", required=True, help="CSV written by `aggregate`")
    s.add_argument("--tables", required=True, help="output directory of the tables")
    s.add_argument("--figures", required=True, help="output directory of the figures")
    s.add_argument("--data-dir", default="data", help="dataset directory (images of Figure 4)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("mlflow-sync", help="put run directories into MLflow (idempotent)")
    s.add_argument("run_dirs", nargs="+")
    s.add_argument("--tracking-uri")
    s.set_defaults(func=cmd_mlflow_sync)

    s = sub.add_parser("mlflow-init", help="create the MLflow store and experiments")
    s.add_argument("--tracking-uri")
    s.add_argument("--experiments", nargs="+", required=True)
    s.add_argument("--out", required=True, help="JSON file of experiment ids")
    s.set_defaults(func=cmd_mlflow_init)

    s = sub.add_parser("bench", help="images/s of training steps on this device")
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default", RuntimeWarning)
    try:
        args.func(args)
    except (ValueError, rundir.TrainingError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
