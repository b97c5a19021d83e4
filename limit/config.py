"""A run's training settings as one table, FIELDS: each field's name, default, help, command-line type, and whether
it is semantic (part of the run's fingerprint: another value computes another run).

From it come the ``limit train`` options and their parsing into a config (``add_arguments``, ``from_args``), the
defaults (``DEFAULTS``), the fingerprint's keys (``fingerprint``), the workflow's training arguments
(``limit.runs.grid.train_arguments``) and the config schema's defaults (a test compares them). A new setting is one
entry here and its use in the loop. Torch-free: the workflow and ``limit --help`` read it.
"""
import argparse
import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from limit.registry import (
    ARCH_SIZES,
    DATASETS,
    HPARAM_DEFAULTS,
    HPARAMS,
    METHODS,
    check_arch,
    dataset_info,
    get_method,
    hparam_problem,
    method_hparams,
    method_name,
    unknown_name,
)
from limit.runs import rundir
from limit.tracking.client import LIVE_INTERVAL
from limit.tracking.uri import TRACKING_URI_HELP


class TrainingError(RuntimeError):
    """A run that cannot go on: a non-finite loss, a bad or mismatched checkpoint, a CE run with no model. Here,
    torch-free: the command line catches it without loading torch."""

# "authors": BatchNorm statistics warmed on noise as the authors' network builder leaves them (docs/reproduction.md,
# limit.models.authors_bn_warmup); "standard": PyTorch's (0, 1).
BN_INIT = ("authors", "standard")
PRECISIONS = ("fp32", "bf16")  # bf16: the networks under autocast, losses in float32 (limit.runtime)
DECODERS = ("pil", "torchvision")
# How runs are trained together in one job (workflow only, not a run's setting): pack_in_process trains a pack's
# members one after another in one process instead of each in its own (limit.pack).
JOB_DEFAULTS = {"pack": 1, "pack_in_process": False}
_MINUTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:m|min|minutes?)\s*$")


def parse_checkpoint_every(value):
    """``5`` or ``"5"`` (epochs) or ``"30min"`` (minutes) -> ("epochs" | "minutes", number)."""
    text = str(value)
    match = _MINUTES.match(text)
    if match:
        return "minutes", float(match.group(1))
    if text.strip().isdigit() and int(text) >= 1:
        return "epochs", int(text)
    raise ValueError(f"checkpoint_every {value!r}: give a number of epochs (e.g. 5) or of minutes (e.g. 30min)")


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _method(text):
    """argparse type of --method: a registry name, also in the tables' spelling (LIMIT_L)."""
    try:
        return method_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _checkpoint_every(text):
    try:
        unit, number = parse_checkpoint_every(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return number if unit == "epochs" else text


@dataclass(frozen=True)
class Field:
    name: str
    default: object  # None with required: the command line must give it
    help: str
    type: object = str  # argparse type; bool: a --name / --no-name pair
    semantic: bool = True  # part of the fingerprint
    choices: tuple | None = None
    metavar: str | None = None
    required: bool = False
    # How the workflow passes it (limit.runs.grid): "always"; "changed" (when not the default); "output" (with the
    # run's output, so a change reruns nothing: what it keeps); None (files it adds itself, or by hand only).
    workflow: str | None = None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


FIELDS = (
    Field("dataset", None, f"one of {', '.join(DATASETS)}, or an image cache written by `limit import-images`",
          required=True),
    Field("data_dir", "data", "data directory: a folder per dataset (Clothing1M's release in clothing1m/)",
          semantic=False),
    Field("labels", None, "labels file written by `limit corrupt`", required=True, semantic=False),
    Field("method", None, f"one of {', '.join(METHODS)} (any case: LIMIT_L is limit_l)", _method, required=True,
          workflow="always"),
    Field("arch", "cnn", "cnn (MNIST-style), mlp (Figure 1), resnet34 (CIFAR), resnet50", choices=tuple(ARCH_SIZES),
          workflow="always"),
    # more epochs extend a run: not semantic
    Field("epochs", 400, "most epochs to train (the paper's MNIST setting; the workflow's configs set their own)",
          positive_int, semantic=False, workflow="always"),
    Field("patience", 100, "early-stopping patience in epochs", positive_int, workflow="always"),
    Field("batch_size", 256, "training batch size", positive_int, workflow="always"),
    Field("seed", 42, "seed of initialisation, shuffling and sampling", int, workflow="always"),
    Field("bn_init", "authors", "authors: BatchNorm statistics warmed on noise as the authors' network builder "
          "leaves them (reproduces the paper, docs/reproduction.md); standard: PyTorch's (0, 1)", choices=BN_INIT,
          workflow="always"),
    Field("test_curve_size", None, "log every epoch's test accuracy on the first N test examples only (the final "
          "test accuracy uses all)", positive_int, metavar="N", workflow="changed"),
    Field("precision", "fp32", "bf16: the networks under bfloat16 autocast, channels_last; losses in float32",
          choices=PRECISIONS, workflow="changed"),
    Field("checkpoint_every", 1, "write state.pt every N epochs or every N minutes (e.g. 30min)", _checkpoint_every,
          semantic=False, metavar="N|Nmin", workflow="changed"),
    Field("test_curve_every", 1, "log the clean test accuracy every N epochs", positive_int, metavar="N",
          workflow="changed"),
    Field("deterministic", True, "deterministic kernels; --no-deterministic allows faster GPU kernels, and a "
          "resumed run may then differ", bool, workflow="changed"),
    Field("device", "auto", "auto (CUDA if torch sees a GPU or this Slurm job holds one), cpu, cuda, cuda:1 ...; "
          "cuda without a working GPU stops at once", semantic=False, workflow="changed"),
    Field("num_workers", 4, "image-decoding workers of a dataset streamed from disk (Clothing1M)", int,
          semantic=False, workflow="changed"),
    Field("decode", "pil", "JPEG decoding of a dataset streamed from disk: PIL in the workers, or "
          "torchvision.io.decode_jpeg (on the GPU when training on one)", choices=DECODERS, semantic=False,
          workflow="changed"),
    Field("clean_validation", False, "select on clean validation labels (Figure 1)", bool, workflow="changed"),
    Field("init_from", None, "CE run directory (FW, DMI, +init)", semantic=False),
    Field("imagenet_weights", None, "ResNet-50 only: path to a torchvision ImageNet state dict"),
    Field("test_curve", True, "log the clean test accuracy of every epoch (Figure 3)", bool, workflow="changed"),
    Field("log_checkpoints", True, "log best.pt and train_scores.npz to MLflow (large checkpoints)", bool,
          semantic=False, workflow="output"),
    Field("keep_state", False, "keep state.pt and state.prev.pt once the run finished (removed by default)", bool,
          semantic=False, workflow="output"),
)
FIELD = {f.name: f for f in FIELDS}
# ``hparams``: the method's hyperparameters (limit.registry.HPARAMS); ``run``: the run's place in the grid.
DEFAULTS = {**{f.name: f.default for f in FIELDS}, "hparams": {}, "run": {}}
NON_SEMANTIC = {f.name for f in FIELDS if not f.semantic} | {"run"}
# What a run's config.json holds besides its config: its fingerprint and the sha256 of its inputs (limit.train).
RECORDED = ("fingerprint", "input_sha256")
# The name a field had when run directories were first fingerprinted: their state keeps resuming.
FINGERPRINT_NAMES = {"test_curve": "eval_test_each_epoch"}


def option(name):
    return "--" + name.replace("_", "-")


OPTIONS = {name: option(name) for name in [*(f.name for f in FIELDS), *HPARAMS]}


def argument(name, value):
    """A setting as command-line arguments: ``[--flag value]``, or ``[--flag]`` / ``[--no-flag]`` for a switch."""
    if value is True or value is False:
        return [OPTIONS[name] if value else "--no-" + OPTIONS[name][2:]]
    return [OPTIONS[name], rundir.fmt(value) if type(value) is float else str(value)]


def add_arguments(parser):
    """The options of every field and hyperparameter."""
    for f in FIELDS:
        if f.type is bool:
            parser.add_argument(f.flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.help)
        else:
            parser.add_argument(f.flag, dest=f.name, type=f.type, default=f.default, required=f.required,
                                choices=f.choices, metavar=f.metavar, help=f.help)
    for name, h in HPARAMS.items():
        parser.add_argument(option(name), type=float, help=f"{h.meaning} (default {h.default:g})")


def from_args(args):
    """The config of parsed ``add_arguments`` options: every field, and the hyperparameters given."""
    hparams = {k: getattr(args, k) for k in HPARAMS if getattr(args, k) is not None}
    own = method_hparams(args.method)
    unused = [k for k in hparams if k not in own]
    if unused:
        raise ValueError(f"{option(unused[0])}: not a hyperparameter of {args.method!r} (its hyperparameters: "
                         f"{', '.join(map(option, own))})")
    return {**{f.name: getattr(args, f.name) for f in FIELDS}, "hparams": hparams}


def resolve_config(config):
    """Fill defaults and validate a run's config.

    ``run`` records the run's place in the grid (default: experiment "manual", variant = the method) and the
    hyperparameters given, before the defaults fill in the others; ``train`` adds the data setting."""
    config = {k: v for k, v in config.items() if k not in RECORDED}  # a run's config.json may be given back
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        key = sorted(unknown)[0]
        raise ValueError(unknown_name("training setting", key, DEFAULTS))
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(config))
    missing = [name for name in ("dataset", "method") if cfg[name] is None]  # (the labels: when data loads)
    if missing:
        raise ValueError(f"no {missing[0]} given ({option(missing[0])})")
    cfg["method"] = method_name(cfg["method"])
    info = dataset_info(cfg["dataset"])
    if cfg["dataset"] not in DATASETS:  # your own images: their size must suit the architecture
        check_arch(cfg["arch"], info.size)
    unknown = set(cfg["hparams"]) - set(HPARAM_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown hyperparameters {sorted(unknown)}; known: {sorted(HPARAM_DEFAULTS)}")
    cfg["run"] = {"experiment": "manual", "variant": cfg["method"], **cfg["run"], "hparams": sorted(cfg["hparams"])}
    cfg["hparams"] = {**HPARAM_DEFAULTS, **cfg["hparams"]}
    parse_checkpoint_every(cfg["checkpoint_every"])
    for f in FIELDS:
        value = cfg[f.name]
        if f.choices and value not in f.choices:
            raise ValueError(f"{f.name} = {value!r}: choose one of {list(f.choices)}")
        if f.type is positive_int and value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{f.name} = {value!r}: must be an integer >= 1")
    for name, value in cfg["hparams"].items():
        problem = hparam_problem(cfg["method"], name, value)
        if problem:
            raise ValueError(f"{name} = {value}: {problem}")
    if get_method(cfg["method"]).init_from_ce and not cfg["init_from"]:
        raise ValueError(f"method {cfg['method']!r} starts from a CE run: give init_from (--init-from DIR)")
    return cfg


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def init_checkpoint_sha256(cfg):
    """sha256 of the CE model a run starts from (FW, DMI, +init), None for other methods."""
    if not get_method(cfg["method"]).init_from_ce:
        return None
    ce_path = Path(cfg["init_from"]) / rundir.BEST
    if not ce_path.exists():
        raise TrainingError(f"--init-from {cfg['init_from']}: no best.pt there (is the CE run complete?)")
    return file_sha256(ce_path)


def fingerprint(cfg, labels_sha256, init_sha256=None, data_sha256=None):
    """What a run computes: its semantic settings, its labels, the data they index (where the labels file records
    it) and the CE model it starts from; not where the files are."""
    semantic = {FINGERPRINT_NAMES.get(k, k): v for k, v in cfg.items() if k not in NON_SEMANTIC}
    inputs = {"config": semantic, "labels": labels_sha256, **({"init": init_sha256} if init_sha256 else {}),
              **({"data": data_sha256} if data_sha256 else {})}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def add_train_arguments(parser):
    parser.description = ("Train one run into --out; started again with the same command, a killed run resumes "
                          "from its last complete epoch.")
    add_arguments(parser)
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run directory that holds a run of another config (finished or not); "
                             "without it such a directory is refused and left as it is")
    parser.add_argument("--experiment", default="manual",
                        help="the config's experiment block, also the MLflow experiment")
    parser.add_argument("--variant", help="the block's method variant (default: the method)")
    parser.add_argument("--tracking-uri", help=TRACKING_URI_HELP + " (without a password)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--live-interval", type=positive_float, default=LIVE_INTERVAL, metavar="SECONDS",
                        help="seconds between the run's requests to MLflow while it trains (mlflow.live_interval)")
