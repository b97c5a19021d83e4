"""The package's registries as plain data: datasets, methods and hyperparameters.

Torch-free, so that the workflow (grid expansion, config checks) parses without the scientific stack.
The losses live in ``limit.methods``, the data loaders in ``limit.data`` and ``limit.datasets.clothing1m``.
"""
import csv
import difflib
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Bad dataset name or an incomplete data directory."""


def unknown_name(kind, name, choices):
    """The message for a name that is none of ``choices``: the closest one, if any is close, then all of them."""
    close = difflib.get_close_matches(str(name).lower(), [str(c) for c in choices], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (choose one of {', '.join(sorted(map(str, choices)))})"


@dataclass(frozen=True)
class DatasetInfo:
    label: str  # as tables and figures name it
    num_classes: int
    channels: int
    size: int  # image side in pixels
    split_sizes: tuple = ()  # (training, validation, test) examples of the paper's split; () for your own images
    torchvision_class: str = ""  # the torchvision dataset class that reads its files
    augment: bool = False  # random crop + flip in training (CIFAR and Clothing1M)
    streamed: bool = False  # batches stream from disk, too large for memory (Clothing1M's files, datasets.clothing1m)
    real_noise: bool = False  # labels are noisy as given: noise model "real", no rate, no clean training labels
    table_layout: str = "seeds"  # "seeds": mean ± std over seeds; "bootstrap": first seed, bootstrap std (Table 2)
    decimals: int = 1  # digits after the point in tables (the paper gives Clothing1M two)
    mean: tuple | None = None  # per-channel normalisation; None: ImageNet statistics
    std: tuple | None = None


DATASETS = {
    "mnist": DatasetInfo("MNIST", 10, 1, 28, (48000, 12000, 10000), "MNIST"),
    "fashion_mnist": DatasetInfo("Fashion-MNIST", 10, 1, 28, (48000, 12000, 10000), "FashionMNIST"),
    "cifar10": DatasetInfo("CIFAR-10", 10, 3, 32, (40000, 10000, 10000), "CIFAR10", augment=True,
                           table_layout="bootstrap"),
    "cifar100": DatasetInfo("CIFAR-100", 100, 3, 32, (40000, 10000, 10000), "CIFAR100", augment=True,
                            table_layout="bootstrap"),
    "clothing1m": DatasetInfo("Clothing1M", 14, 3, 224, (1000000, 14313, 10526), augment=True, streamed=True,
                              real_noise=True, table_layout="bootstrap", decimals=2),
}
# Your own images (``limit import-images``): a cache directory whose IMAGE_CACHE_INFO file holds its facts.
IMAGE_CACHE_INFO = "dataset.json"
# Image sides each architecture accepts (the paper's 4-layer CNN reduces 28-35 pixels to 1 x 1; the others pool).
ARCH_SIZES = {"cnn": range(28, 36), "mlp": range(1, 10**6), "resnet34": range(8, 10**6), "resnet50": range(32, 10**6)}


def _image_cache(path):
    """The facts an image cache records (``IMAGE_CACHE_INFO``), or None if ``path`` is not one."""
    info = Path(path) / IMAGE_CACHE_INFO
    return json.loads(info.read_text()) if info.is_file() else None


def dataset_info(name):
    """A built-in dataset by name, or your own: the directory of an image cache (``limit import-images``)."""
    if name in DATASETS:
        return DATASETS[name]
    cache = _image_cache(name)
    if cache is None:
        raise DataError(unknown_name("dataset", name, DATASETS) + " or an image cache directory written by "
                        "`limit import-images`")
    return DatasetInfo(dataset_name(name), len(cache["classes"]), cache["channels"], cache["size"],
                       mean=tuple(cache["mean"]), std=tuple(cache["std"]))


def dataset_name(dataset):
    """A run's dataset by name, as run ids, tables and MLflow show it: a built-in one's, or an image cache's (the
    name it records, else its folder's; not its path, which is only where the data is read)."""
    if dataset in DATASETS:
        return dataset
    cache = _image_cache(dataset)
    return (cache or {}).get("name") or Path(dataset).resolve().name


def named_dataset(name):
    """The facts of a dataset as a config or a run table names it: a built-in one's, or else your own images' (in
    memory, synthetic noise, the "seeds" table layout, labelled by their name)."""
    return DATASETS.get(name) or DatasetInfo(name, 0, 0, 0)


VAL_RATIO = 0.2  # the authors' split: a seeded permutation, the first 80% train, the rest validation


def split_sizes(num_train):
    """(training, validation) examples of the split of ``num_train`` labelled images (limit.labels.split_indices)."""
    cut = int((1.0 - VAL_RATIO) * num_train)
    return cut, num_train - cut


def check_arch(arch, size):
    if arch not in ARCH_SIZES:
        raise ValueError(unknown_name("architecture", arch, ARCH_SIZES))
    if size not in ARCH_SIZES[arch]:
        allowed = ARCH_SIZES[arch]
        raise ValueError(f"architecture {arch!r} needs images of {allowed.start} to {allowed.stop - 1} pixels, "
                         f"not {size}; set size to resize")


@dataclass(frozen=True)
class Hparam:
    default: float
    symbol: str  # as legends and tables write it
    meaning: str


# Every hyperparameter a run can set. The train command's options, the training defaults, the run table's and
# the selection's columns, the MLflow runs view, the legends and the README's Methods table come from this table;
# the config schema lists the same names (a test checks it).
HPARAMS = {
    "beta": Hparam(0.0, "β", "LIMIT / Soft reg. gradient-norm penalty"),
    "lamb": Hparam(1.0, "λ", "LIMIT +S sampling precision, Soft reg. lambda"),
    "sigma": Hparam(0.0, "σ", "CE+GN / CE+LN gradient-noise std"),
    "lr": Hparam(1e-3, "lr", "Adam learning rate"),
    "dropout": Hparam(0.0, "dropout", "dropout rate (MLP)"),
    "weight_decay": Hparam(0.0, "weight decay", "Adam L2 weight decay on weights"),
}
HPARAM_DEFAULTS = {name: h.default for name, h in HPARAMS.items()}
GENERIC_HPARAMS = ("lr", "dropout", "weight_decay")  # every method accepts these


@dataclass(frozen=True)
class Method:
    hparams: tuple = ()            # method-specific hyperparameters (GENERIC_HPARAMS apply to every method)
    q_network: bool = False        # trains an auxiliary label-free network q
    init_from_ce: str | None = None  # "classifier" (FW, DMI) or "q" (+init): parameters from the best CE model
    head_bias: bool = True         # Soft reg.'s last layer U has no bias
    sampling: bool = False         # lamb is a sampling precision (noise std ~ 1/sqrt(lamb)): it must be > 0
    transition_matrix: bool = False  # FW: the noise transition is estimated from the CE model before training
    every_class_per_batch: bool = False  # DMI: a batch missing a class has determinant 0 and no gradient
    # LIMIT: q predicts the CE gradient, and ||y - s(q(x))|| scores each training label (train_scores.npz)
    scores_labels: bool = False
    description: str = ""


METHODS = {
    "ce": Method(description="cross-entropy"),
    "ce_gn": Method(("sigma",), description="CE with Gaussian noise on the logit gradient"),
    "ce_ln": Method(("sigma",), description="CE with Laplace noise (std sigma) on the logit gradient"),
    "mae": Method(description="mean absolute error"),
    "fw": Method(init_from_ce="classifier", transition_matrix=True, description="forward loss correction"),
    "dmi": Method(init_from_ce="classifier", every_class_per_batch=True,
                  description="determinant-based mutual information loss"),
    "soft_reg": Method(("lamb", "beta"), q_network=True, head_bias=False, description="soft regularisation, Eq. (11)"),
    "limit_g": Method(("beta",), q_network=True, scores_labels=True, description="LIMIT_G without sampling"),
    "limit_l": Method(("beta",), q_network=True, scores_labels=True, description="LIMIT_L without sampling"),
    "limit_g_s": Method(("beta", "lamb"), q_network=True, sampling=True, scores_labels=True,
                        description="LIMIT_G with Gaussian sampling"),
    "limit_l_s": Method(("beta", "lamb"), q_network=True, sampling=True, scores_labels=True,
                        description="LIMIT_L with Laplace sampling"),
    "limit_g_init": Method(("beta",), q_network=True, init_from_ce="q", scores_labels=True,
                           description="LIMIT_G, q initialised from the best CE model"),
    "limit_l_init": Method(("beta",), q_network=True, init_from_ce="q", scores_labels=True,
                           description="LIMIT_L, q initialised from the best CE model"),
}
LIMIT_METHODS = tuple(name for name, method in METHODS.items() if method.scores_labels)


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
    "mislabel_posterior": "P(clean class ≠ given label)",
    "grad_distance": "‖μ − g_CE‖",
    "ce_loss": "CE loss (selected epoch)",
    "margin": "margin (selected epoch)",
    "ce_loss_avg": "CE loss averaged over epochs",
    "margin_avg": "margin averaged over epochs",
    "rank_average": "rank average",
}
# Chosen by detect-bench --dev on the development settings (seed 41: uniform 0.3, n = 5,000; asymmetric 0.4,
# n = 1,000): docs/label-issues.md.
DEFAULT_SCORE = "mislabel_posterior"


def missing_extra(who, module, extra):
    """The error line when ``module`` (of pyproject.toml's extra ``extra``) is not installed, else None."""
    if importlib.util.find_spec(module) is None:
        return f"error: {who} needs {module}: pip install 'limit-pipeline[{extra}]'"
    return None


# The paper's reported numbers, one CSV per table (method, dataset, noise, rate, n, mean, std); limit.report.paper
# reads them whole.
PAPER_NUMBERS_DIR = Path(__file__).parent / "report" / "paper_numbers"
PAPER_TABLES = ("table1", "table2", "table4", "table5", "table6", "table7")


def paper_table_settings(table):
    """The settings (dataset, noise, rate, n) of a paper table's cells, as strings; the csv module, no pandas."""
    with open(PAPER_NUMBERS_DIR / f"{table}.csv", newline="") as f:
        return {(row["dataset"], row["noise"], row["rate"], row["n"]) for row in csv.DictReader(f)}
