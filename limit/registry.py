"""The package's registries as plain data: datasets, methods and hyperparameters.

Torch-free, so that the workflow (grid expansion, config checks) parses without the scientific stack.
The losses live in ``limit.methods``, the data loaders in ``limit.data`` and ``limit.datasets.clothing1m``.
"""
import difflib
import math
from dataclasses import dataclass


class DataError(ValueError):
    """Bad dataset name or an incomplete data directory."""


def unknown_name(kind, name, choices):
    """The message for a name that is none of ``choices``: the closest one, if any is close, then all of them."""
    close = difflib.get_close_matches(str(name).lower(), [str(c) for c in choices], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (choose one of {', '.join(sorted(map(str, choices)))})"


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    num_train: int  # official training set, before the train/validation split
    channels: int
    size: int
    torchvision_class: str
    augment: bool  # random crop + flip in training (CIFAR and Clothing1M)
    mean: tuple | None = None  # per-channel normalisation; None: ImageNet statistics
    std: tuple | None = None


DATASETS = {
    "mnist": DatasetInfo(10, 60000, 1, 28, "MNIST", False),
    "fashion_mnist": DatasetInfo(10, 60000, 1, 28, "FashionMNIST", False),
    "cifar10": DatasetInfo(10, 50000, 3, 32, "CIFAR10", True),
    "cifar100": DatasetInfo(100, 50000, 3, 32, "CIFAR100", True),
    "clothing1m": DatasetInfo(14, 0, 3, 224, "", True),
}


def dataset_info(name):
    """A built-in dataset by name, or your own: the directory of an image cache (``python -m limit import-images``)."""
    if name in DATASETS:
        return DATASETS[name]
    from limit.datasets import images as folder_data
    if folder_data.is_image_cache(name):
        return folder_data.cache_info(name)
    raise DataError(unknown_name("dataset", name, DATASETS) + " or an image cache directory written by "
                    "`limit import-images`")


def dataset_name(dataset):
    """A run's dataset by name, as run ids, tables and MLflow show it: a built-in one's, or an image cache's (not
    its path, which is only where the data is read)."""
    if dataset in DATASETS:
        return dataset
    from limit.datasets import images as folder_data
    return folder_data.cache_name(dataset)


# Training settings of a run that its config does not give (the paper's MNIST setup). The train CLI and
# limit.train take them from here; the config schema repeats them as its defaults (a test checks it).
TRAINING_DEFAULTS = {"arch": "cnn", "epochs": 400, "patience": 100, "batch_size": 256, "seed": 42, "num_workers": 4,
                     "bn_init": "authors",
                     # how a run uses its device and job (docs/cluster.md)
                     "precision": "fp32", "checkpoint_every": 1, "test_curve_every": 1, "deterministic": True,
                     "decode": "pil", "keep_state": False}
JOB_DEFAULTS = {"pack": 1}  # runs trained together in one job (workflow only)
# "authors": BatchNorm statistics warmed on noise as the authors' network builder leaves them (docs/reproduction.md,
# limit.models.authors_bn_warmup); "standard": PyTorch's (0, 1).
BN_INIT = ("authors", "standard")
PRECISIONS = ("fp32", "bf16")  # bf16: the networks under autocast, losses in float32 (limit.runtime)

# Every hyperparameter a run can set: name -> (default, meaning). The train CLI's options, the training
# defaults, the run table's columns and the selection's columns all come from this table; the config schema
# lists the same names (a test checks it).
HPARAMS = {
    "beta": (0.0, "LIMIT / Soft reg. gradient-norm penalty"),
    "lamb": (1.0, "LIMIT +S sampling precision, Soft reg. lambda"),
    "sigma": (0.0, "CE+GN / CE+LN gradient-noise std"),
    "lr": (1e-3, "Adam learning rate"),
    "dropout": (0.0, "dropout rate (MLP)"),
    "weight_decay": (0.0, "Adam L2 weight decay on weights"),
}
HPARAM_DEFAULTS = {name: default for name, (default, _) in HPARAMS.items()}
GENERIC_HPARAMS = ("lr", "dropout", "weight_decay")  # every method accepts these


@dataclass(frozen=True)
class Method:
    hparams: tuple = ()            # method-specific hyperparameters (GENERIC_HPARAMS apply to every method)
    q_network: bool = False        # trains an auxiliary label-free network q
    init_from_ce: str | None = None  # "classifier" (FW, DMI) or "q" (+init): parameters from the best CE model
    head_bias: bool = True         # Soft reg.'s last layer U has no bias
    sampling: bool = False         # lamb is a sampling precision (noise std ~ 1/sqrt(lamb)): it must be > 0
    description: str = ""


METHODS = {
    "ce": Method(description="cross-entropy"),
    "ce_gn": Method(("sigma",), description="CE with Gaussian noise on the logit gradient"),
    "ce_ln": Method(("sigma",), description="CE with Laplace noise (std sigma) on the logit gradient"),
    "mae": Method(description="mean absolute error"),
    "fw": Method(init_from_ce="classifier", description="forward loss correction"),
    "dmi": Method(init_from_ce="classifier", description="determinant-based mutual information loss"),
    "soft_reg": Method(("lamb", "beta"), q_network=True, head_bias=False, description="soft regularisation, Eq. (11)"),
    "limit_g": Method(("beta",), q_network=True, description="LIMIT_G without sampling"),
    "limit_l": Method(("beta",), q_network=True, description="LIMIT_L without sampling"),
    "limit_g_s": Method(("beta", "lamb"), q_network=True, sampling=True, description="LIMIT_G with Gaussian sampling"),
    "limit_l_s": Method(("beta", "lamb"), q_network=True, sampling=True, description="LIMIT_L with Laplace sampling"),
    "limit_g_init": Method(("beta",), q_network=True, init_from_ce="q",
                           description="LIMIT_G, q initialised from the best CE model"),
    "limit_l_init": Method(("beta",), q_network=True, init_from_ce="q",
                           description="LIMIT_L, q initialised from the best CE model"),
}
LIMIT_METHODS = tuple(name for name in METHODS if name.startswith("limit_"))


def is_limit(name):
    return name in LIMIT_METHODS


def method_name(name):
    """A method's registry name, also from the tables' spelling (``LIMIT_L``, ``limit-l``)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(unknown_name("method", name, METHODS))
    return key


def get_method(name):
    return METHODS[method_name(name)]


def method_hparams(name):
    """Every hyperparameter a method uses: its own and the generic ones."""
    return sorted({*get_method(name).hparams, *GENERIC_HPARAMS})


def hparam_problem(method, name, value):
    """What is wrong with a hyperparameter value of a method (None if nothing): checked before any job runs."""
    if not math.isfinite(value):
        return "must be a finite number"
    if name == "lr" and value <= 0:
        return "must be > 0"
    if name == "dropout" and not 0 <= value < 1:
        return "must be in [0, 1)"
    if name == "lamb" and get_method(method).sampling and value <= 0:
        return f"must be > 0 for {method} (the sampling precision)"
    if value < 0:
        return "must be >= 0"
    return None


# The mislabel scores of ``limit find-label-issues`` (higher = more suspect), named for --score.
SCORES = {
    "grad_distance": "‖μ − g_CE‖",
    "ce_loss": "CE loss (selected epoch)",
    "margin": "margin (selected epoch)",
    "ce_loss_avg": "CE loss averaged over epochs",
    "margin_avg": "margin averaged over epochs",
    "rank_average": "rank average",
}
# Chosen once, by detect-bench, on the development setting (uniform 0.3, n = 5,000, seed 41): docs/label-issues.md.
DEFAULT_SCORE = "ce_loss"
