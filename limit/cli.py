"""Command line: ``limit COMMAND ...`` (or ``python -m limit``); every workflow rule calls one of these.

Each command imports what it needs when it runs, so that ``--help`` answers at once.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

from limit.runs import rundir
from limit.registry import (BN_INIT, DATASETS, HPARAMS, METHODS, PRECISIONS, TRAINING_DEFAULTS, dataset_name,
                            method_hparams, method_name)


TRACKING_URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db)"


def cmd_prepare(args):
    if args.dataset == "clothing1m":
        from limit.datasets.clothing1m import check_clothing1m_dir
        check_clothing1m_dir(args.data_dir)
    else:
        from limit.data import prepare_dataset
        prepare_dataset(args.dataset, args.data_dir, download=args.download)
    print(f"{args.dataset}: files present in {args.data_dir}")


def cmd_import_images(args):
    from limit.datasets.images import import_images
    info = import_images(args.source, args.out, test=args.test, classes=args.classes, size=args.size,
                         channels=args.channels, mean=args.mean, std=args.std)
    print(f"{args.out}: {info['num_train']} training and {info['num_test']} test images, {len(info['classes'])} "
          f"classes, {info['channels']} x {info['size']} x {info['size']}, mean {info['mean']}, std {info['std']}; "
          f"train with --dataset {args.out}")


def _n_arg(value):
    return None if value in (None, "all") else int(value)


def _count(text):
    """argparse type of --n: a positive integer or 'all'."""
    if text != "all" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return text


def _method(text):
    """argparse type of --method: a registry name, also in the tables' spelling (LIMIT_L)."""
    try:
        return method_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _option(name):
    return f"--{name.replace('_', '-')}"


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def cmd_corrupt(args):
    from limit import data as D
    info = D.dataset_info(args.dataset)
    if args.dataset == "clothing1m":
        from limit.datasets.clothing1m import clothing1m_labels
        arrays = clothing1m_labels(args.data_dir)
    else:
        from limit.noise import HUMAN_NOISE
        train_labels = D.load_arrays(args.dataset, args.data_dir).train_y.numpy()
        human = None
        if args.noise in HUMAN_NOISE:
            from limit.datasets.cifar_n import human_labels
            human = human_labels(args.data_dir, args.dataset, args.noise, train_labels)
        arrays = D.make_noisy_labels(train_labels, info.num_classes, args.dataset, args.noise, args.rate, args.seed,
                                     n=_n_arg(args.n), val_size=args.val_size, human_labels=human)
    meta = {"dataset": dataset_name(args.dataset), "noise": args.noise, "rate": args.rate, "n": args.n,
            "seed": args.seed, "val_size": args.val_size}
    meta = D.write_labels_file(args.out, arrays, meta)
    print(f"{args.out}: {len(arrays['train_idx'])} train ({arrays['is_corrupted'].mean():.3f} corrupted), "
          f"{len(arrays['val_idx'])} validation, sha256 {meta['sha256'][:12]}")


def cmd_train(args):
    from limit.tracking.client import Tracker
    from limit.train import train
    hparams = {k: getattr(args, k) for k in HPARAMS if getattr(args, k) is not None}
    own = method_hparams(args.method)
    unused = [k for k in hparams if k not in own]
    if unused:
        raise ValueError(f"{_option(unused[0])}: not a hyperparameter of {args.method!r} (its hyperparameters: "
                         f"{', '.join(map(_option, own))})")
    config = {"dataset": args.dataset, "data_dir": args.data_dir, "labels": args.labels, "method": args.method,
              "arch": args.arch, "hparams": hparams, "epochs": args.epochs, "patience": args.patience,
              "batch_size": args.batch_size, "seed": args.seed, "clean_validation": args.clean_validation,
              "init_from": args.init_from, "device": args.device, "eval_test_each_epoch": not args.no_test_curve,
              "test_curve_size": args.test_curve_size,
              "imagenet_weights": args.imagenet_weights, "num_workers": args.num_workers, "bn_init": args.bn_init,
              "precision": args.precision, "deterministic": not args.nondeterministic,
              "checkpoint_every": args.checkpoint_every, "test_curve_every": args.test_curve_every,
              "decode": args.decode, "log_checkpoints": not args.no_checkpoint_artifacts,
              "keep_state": args.keep_state,
              "run": {"experiment": args.experiment, "variant": args.variant or args.method}}
    tracker = None if args.no_tracking else Tracker(args.out, args.tracking_uri)
    metrics = train(config, args.out, tracker)
    print(json.dumps(metrics))


def _run_table(run_dirs):
    import pandas as pd
    return pd.DataFrame([rundir.read_run(d) for d in run_dirs])


def cmd_select(args):
    """Pick the hyperparameters with the best mean noisy-validation accuracy over seeds."""
    import pandas as pd
    from limit.report.selection import select_configurations
    from limit.tracking.client import tag_selected
    runs = _run_table(args.run_dirs)
    configs = select_configurations(runs)
    chosen = configs[configs["selected"]].iloc[0]
    result = {"selected": chosen["hparams"],
              "configurations": json.loads(configs.to_json(orient="records")),
              "run_dirs": sorted(runs.loc[runs["hparams"] == chosen["hparams"], "run_dir"]),
              "all_run_dirs": sorted(runs["run_dir"])}
    rundir.write_json(args.out, result)
    if not args.no_tracking:
        hparams = {f"selected.{k}": rundir.fmt(chosen[k]) for k in HPARAMS if k in chosen and pd.notna(chosen[k])}
        summary = {"tags": {"selected_hparams": chosen["hparams"], **hparams},
                   "metrics": {k: float(chosen[k]) for k in ("test_acc_mean", "test_acc_std", "best_val_acc_mean", "seeds")}}
        tag_selected(runs["run_dir"], set(result["run_dirs"]), summary, args.tracking_uri)
    print(f"{args.out}: {chosen['hparams']} (mean validation accuracy {chosen['best_val_acc_mean']:.4f} "
          f"over {chosen['seeds']} seeds)")


def cmd_aggregate(args):
    """All runs in one table, with a ``selected`` column from the decisions of `select`, for the report stage."""
    from limit.report.selection import configurations, normalise_runs
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
    from limit.report.render import render_report
    written = render_report(args.runs, args.tables, args.figures, args.data_dir)
    print(f"{len(written)} table and figure files in {args.tables} and {args.figures}")


def cmd_mlflow_sync(args):
    from limit.tracking.client import sync_run
    total = 0
    for run_dir in args.run_dirs:
        added = sync_run(run_dir, args.tracking_uri)
        total += added
        print(f"{run_dir}: {added} epochs added")
    print(f"synced {len(args.run_dirs)} runs, {total} epochs added")


def cmd_mlflow_init(args):
    """Create the store, the experiments and the groups' parent runs before any job starts (MLflow races
    otherwise)."""
    from limit.tracking.client import _client, get_or_create_experiment, get_or_create_parent
    from limit.tracking.uri import tracking_uri
    uri = tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    experiments = sorted({group.split("/", 1)[0] for group in args.groups})
    ids = {name: get_or_create_experiment(client, name, uri) for name in experiments}
    for group in args.groups:
        get_or_create_parent(client, ids[group.split("/", 1)[0]], group)
    print(f"{json.dumps(ids)}; {len(args.groups)} parent runs")


def cmd_train_pack(args):
    """Train several runs at the same time in one job; each RUN is the argument string of `train`."""
    import shlex
    from limit.runs.pack import member_name, run_pack
    parser = build_parser()
    for run in args.runs:  # bad arguments stop the pack before any member starts
        parser.parse_args(["train", *shlex.split(run)])
    failed = run_pack(args.runs, args.threads)
    if failed:
        raise rundir.TrainingError(f"{len(failed)} of {len(args.runs)} packed runs failed: {', '.join(failed)}")
    if args.out:
        rundir.write_json(args.out, {"run_dirs": [member_name(run) for run in args.runs]})
    print(f"{len(args.runs)} packed runs finished")


def cmd_cost(args):
    from limit.tools.cost import main
    main(args)


def cmd_plan(args):
    from limit.runs.plan import main
    main(args)


def cmd_bench(args):
    from limit.tools.bench import main
    main(args)


def cmd_find_label_issues(args):
    from limit.tools.label_issues import find_label_issues, print_summary
    if args.config:  # train the LIMIT run first (resumes if it was killed)
        import yaml
        from limit.train import train
        train({"data_dir": "data", **yaml.safe_load(Path(args.config).read_text())}, args.run)
    summary = find_label_issues(args.run, args.out, top_k=args.top_k, device=args.device, score=args.score)
    print_summary(summary, args.out)


def cmd_detect_bench(args):
    from limit.tools.detect_bench import main
    main(args)


class Formatter(argparse.HelpFormatter):
    """Help that shows an option's default, where it has one that its help does not already give."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Bad arguments: one line ``error: ...`` and exit status 2, as every other bad input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=Formatter, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser():
    p = Parser(prog="limit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="check (or download) a dataset's files")
    s.add_argument("--dataset", required=True, help=f"one of {sorted(DATASETS)}")
    s.add_argument("--data-dir", default="data", help="dataset directory (default: data)")
    s.add_argument("--download", action="store_true", help="download missing files (needs internet)")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("import-images", help="check your own images and decode them once into a dataset cache",
                       description="SOURCE is an ImageFolder tree (root/<class>/<image>) or a CSV with the columns "
                                   "path,label (paths relative to the CSV). The cache directory --out is then a "
                                   "dataset: `corrupt --dataset OUT --noise given --rate 0`, `train --dataset OUT`.")
    s.add_argument("source", help="ImageFolder root or CSV file of the training images")
    s.add_argument("--test", help="optional test images (same layout and classes); without them, runs report "
                                  "accuracy on the validation split")
    s.add_argument("--classes", nargs="+", help="the class list, in label order (default: sorted names)")
    s.add_argument("--size", type=int, help="resize every image to SIZE x SIZE (default: all must share one size)")
    s.add_argument("--channels", type=int, choices=(1, 3), help="1 (greyscale) or 3 (RGB); default: 1 if every "
                                                                "image is greyscale")
    s.add_argument("--mean", type=float, nargs="+", help="per-channel mean on the 0-1 scale (default: computed "
                                                         "over the training images)")
    s.add_argument("--std", type=float, nargs="+", help="per-channel std (default: computed likewise)")
    s.add_argument("--out", required=True, help="cache directory to write")
    s.set_defaults(func=cmd_import_images)

    s = sub.add_parser("corrupt", help="split and corrupt the labels of one data setting into a labels file")
    s.add_argument("--dataset", required=True, help="a dataset name or an image cache (import-images)")
    s.add_argument("--data-dir", default="data", help="dataset directory (also holds the CIFAR-N label files)")
    s.add_argument("--noise", required=True, help="given (labels as they are), uniform, symmetric, pair (CIFAR-10), "
                                                  "asymmetric-mnist, asymmetric-fashion-mnist, human-aggre, "
                                                  "human-worst, human-random1..3 (CIFAR-10N), human (CIFAR-100N)")
    s.add_argument("--rate", type=float, required=True, help="noise rate p in [0, 1)")
    s.add_argument("--n", type=_count, default="all", help="training-set size: an integer or 'all' (default)")
    s.add_argument("--seed", type=int, required=True, help="seed of the split and of the noise")
    s.add_argument("--val-size", type=_positive_int, default=None, help="keep only this many validation examples")
    s.add_argument("--out", required=True, help="labels file to write (.npz)")
    s.set_defaults(func=cmd_corrupt)

    s = sub.add_parser("train", help="train one run (exactly as the workflow does)",
                       description="Train one run into --out; started again with the same command, a killed run "
                                   "resumes from its last complete epoch.")
    s.add_argument("--dataset", required=True,
                   help=f"one of {', '.join(DATASETS)}, or an image cache written by `limit import-images`")
    s.add_argument("--data-dir", default="data", help="dataset directory")
    s.add_argument("--labels", required=True, help="labels file written by `limit corrupt`")
    s.add_argument("--method", required=True, type=_method,
                   help=f"one of {', '.join(METHODS)} (any case: LIMIT_L is limit_l)")
    s.add_argument("--arch", default=TRAINING_DEFAULTS["arch"],
                   help="cnn (MNIST-style), mlp (Figure 1), resnet34 (CIFAR), resnet50")
    for name, (default, meaning) in HPARAMS.items():
        s.add_argument(_option(name), type=float, help=f"{meaning} (default {default:g})")
    s.add_argument("--epochs", type=int, default=TRAINING_DEFAULTS["epochs"],
                   help="most epochs to train (the paper's MNIST setting; the workflow's configs set their own)")
    s.add_argument("--patience", type=int, default=TRAINING_DEFAULTS["patience"],
                   help="early-stopping patience in epochs")
    s.add_argument("--batch-size", type=int, default=TRAINING_DEFAULTS["batch_size"], help="training batch size")
    s.add_argument("--seed", type=int, default=TRAINING_DEFAULTS["seed"],
                   help="seed of initialisation, shuffling and sampling")
    s.add_argument("--clean-validation", action="store_true", help="select on clean validation labels (Figure 1)")
    s.add_argument("--init-from", help="CE run directory (FW, DMI, +init)")
    s.add_argument("--device", default="auto",
                   help="auto (CUDA if torch sees a GPU or this Slurm job holds one), cpu, cuda, cuda:1 ...; "
                        "cuda without a working GPU stops at once")
    s.add_argument("--no-test-curve", action="store_true", help="skip the clean test accuracy of every epoch")
    s.add_argument("--test-curve-size", type=_positive_int, help="log every epoch's test accuracy on the first N test "
                                                       "examples only (the final test accuracy uses all)")
    s.add_argument("--bn-init", choices=BN_INIT, default=TRAINING_DEFAULTS["bn_init"],
                   help="authors: BatchNorm statistics warmed on noise as the authors' network builder leaves them "
                        "(reproduces the paper, docs/reproduction.md); standard: PyTorch's (0, 1)")
    s.add_argument("--imagenet-weights", help="ResNet-50 only: path to a torchvision ImageNet state dict")
    s.add_argument("--num-workers", type=int, default=TRAINING_DEFAULTS["num_workers"],
                   help="Clothing1M image-decoding workers")
    s.add_argument("--decode", choices=["pil", "torchvision"], default=TRAINING_DEFAULTS["decode"],
                   help="Clothing1M JPEG decoding: PIL in the workers, or torchvision.io.decode_jpeg "
                        "(on the GPU when training on one)")
    s.add_argument("--precision", choices=PRECISIONS, default=TRAINING_DEFAULTS["precision"],
                   help="bf16: the networks under bfloat16 autocast, channels_last; losses in float32")
    s.add_argument("--checkpoint-every", default=str(TRAINING_DEFAULTS["checkpoint_every"]), metavar="N|Nmin",
                   help="write state.pt every N epochs or every N minutes (e.g. 30min); default every epoch")
    s.add_argument("--test-curve-every", type=int, default=TRAINING_DEFAULTS["test_curve_every"], metavar="N",
                   help="log the clean test accuracy every N epochs (default 1)")
    s.add_argument("--nondeterministic", action="store_true",
                   help="allow nondeterministic (faster) GPU kernels; a resumed run may then differ")
    s.add_argument("--keep-state", action="store_true",
                   help="keep state.pt and state.prev.pt once the run finished (removed by default)")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--tracking-uri", help="MLflow tracking URI without a password (default: $MLFLOW_TRACKING_URI, "
                                          "else sqlite:///results/mlflow.db)")
    s.add_argument("--experiment", default="manual",
                   help="the config's experiment block, also the MLflow experiment (default: manual)")
    s.add_argument("--variant", help="the block's method variant (default: the method)")
    s.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    s.add_argument("--no-checkpoint-artifacts", action="store_true",
                   help="do not log best.pt and train_scores.npz to MLflow (large checkpoints)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("train-pack", help="train several runs at the same time in one job (one GPU)",
                       description="Train several runs at the same time, each in its own `train` process; "
                                   "started again with the same command, every member resumes.")
    s.add_argument("runs", nargs="+", metavar="RUN", help="the arguments of one `python -m limit train`, quoted")
    s.add_argument("--threads", type=int, default=1, help="CPU threads of each run (default 1)")
    s.add_argument("--out", help="JSON file listing the run directories, written once every run has finished")
    s.set_defaults(func=cmd_train_pack)

    s = sub.add_parser("select", help="select the hyperparameters of one setting and method variant")
    s.add_argument("run_dirs", nargs="+", help="every run (all seeds, all hyperparameters) of the group")
    s.add_argument("--out", required=True, help="JSON file with the selection")
    s.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
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
    s.add_argument("run_dirs", nargs="+", help="run directories (results/runs/...)")
    s.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    s.set_defaults(func=cmd_mlflow_sync)

    s = sub.add_parser("mlflow-init", help="create the MLflow store, experiments and parent runs")
    s.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    s.add_argument("--groups", nargs="+", required=True, help="selection groups (experiment/setting/variant): "
                                                              "one parent run each, in its experiment")
    s.set_defaults(func=cmd_mlflow_init)

    s = sub.add_parser("plan", help="what a config asks for and what is left of it, on one screen",
                       description="Runs and finished runs per experiment block, then the jobs a dry run "
                                   "(snakemake -n --quiet rules) would start, per rule. Run it from the "
                                   "repository.")
    s.add_argument("--configfile", required=True, help="workflow config, e.g. config/paper.yaml")
    s.add_argument("snakemake_args", nargs=argparse.REMAINDER, metavar="...",
                   help="more Snakemake options, e.g. --profile slurm")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("cost", help="device-hours of a config's grid on this device, packed and unpacked",
                       description="Times a few real training steps of every architecture, method family and "
                                   "batch size of the config on this device and prints device-hours per block.")
    s.add_argument("--configfile", required=True, help="workflow config, e.g. config/paper.yaml")
    s.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda ...")
    s.add_argument("--runs", help="runs.csv of a previous run: its mean epochs per variant replace the estimate")
    s.set_defaults(func=cmd_cost)

    s = sub.add_parser("bench", help="images/s of training steps on this device")
    s.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    s.add_argument("--batch-size", type=int, default=256, help="batch size of the steps")
    s.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda ...")
    s.add_argument("--pack", type=int, metavar="K", help="images/s of K runs packed against K separate runs")
    s.add_argument("--threads", type=int, default=1, help="with --pack: CPU threads per run (default 1)")
    s.add_argument("--separate", type=int, metavar="N",
                   help="with --pack: time N of the runs one after another for the separate rate (default K)")
    s.add_argument("--no-turns", action="store_true", help="with --pack: skip K models taking turns in one process")
    s.set_defaults(func=cmd_bench)

    from limit.registry import DEFAULT_SCORE, SCORES
    s = sub.add_parser("find-label-issues", help="rank the labelled examples of a run by how likely their "
                                                 "labels are wrong",
                       description="Writes label_issues.csv (every training and validation example ranked by "
                                   "--score, with every score of the run), gallery.png (the top-k suspects) and "
                                   "summary.json into --out, and prints a short summary.")
    s.add_argument("run", help="a finished run directory, LIMIT or CE (or where to train one with --config)")
    s.add_argument("--score", choices=list(SCORES), default=DEFAULT_SCORE,
                   help=f"what to rank by (default {DEFAULT_SCORE}; docs/label-issues.md): " +
                        ", ".join(f"{k} = {v}" for k, v in SCORES.items()))
    s.add_argument("--config", help="YAML/JSON training config (the keys of a run's config.json) to train the run "
                                    "first")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--top-k", type=int, default=24, help="examples in the gallery (default 24)")
    s.add_argument("--device", default="cpu", help="cpu, cuda ...")
    s.set_defaults(func=cmd_find_label_issues)

    s = sub.add_parser("detect-bench", help="mislabel detection on Fashion-MNIST: LIMIT vs cleanlab vs CE loss",
                       description="The benchmark of docs/label-issues.md; its table is in the README.")
    s.add_argument("--out", default="results/detect_bench", help="output directory (runs, tables)")
    s.add_argument("--data-dir", default="data", help="dataset directory")
    s.add_argument("--settings", nargs="+", metavar="NOISE:RATE:N",
                   help="noise settings and training-set sizes (default: the five of docs/label-issues.md)")
    s.add_argument("--seeds", type=int, nargs="+", help="seeds of the split and noise (default 42 43)")
    s.add_argument("--epochs", type=int, help="epoch budget of every model (default 20)")
    s.add_argument("--patience", type=int, help="early-stopping patience (default: a quarter of --epochs, as "
                                                "the paper's 100 of 400)")
    s.add_argument("--batch-size", type=int, default=256, help="training batch size")
    s.add_argument("--folds", type=int, help="cleanlab's cross-validation folds (default 5)")
    s.add_argument("--limit-method", default="limit_l", help="LIMIT variant (default limit_l)")
    s.add_argument("--betas", type=float, nargs="+", help="LIMIT's beta grid (default 1 10)")
    s.add_argument("--quick", action="store_true", help="a small version (n = 300, 4 epochs, 2 folds, one seed)")
    s.add_argument("--dev", action="store_true", help="only the development setting the default score was "
                                                      "chosen on (uniform 0.3, n = 5000, seed 41), and the rule")
    s.add_argument("--threads", type=int, default=1, help="CPU threads of torch (default 1)")
    s.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda ...")
    s.set_defaults(func=cmd_detect_bench)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from limit.tracking.uri import check_no_password, redact
    warnings.simplefilter("default", RuntimeWarning)
    try:
        check_no_password(getattr(args, "tracking_uri", None), "--tracking-uri")
        args.func(args)
    except (ValueError, rundir.TrainingError, FileNotFoundError) as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    return 0
