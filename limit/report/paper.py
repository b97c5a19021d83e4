"""The paper's reported numbers (Tables 1, 2, 4-7) and the display names used in every table and figure."""
import re

import pandas as pd

from limit.registry import HPARAMS, PAPER_NUMBERS_DIR, PAPER_TABLES

# Registry name -> label, in the paper's row order. "-S" is LIMIT without sampling (the primary variant);
# the CIFAR/Clothing1M tables write it without the suffix.
METHOD_LABELS = {
    "ce": "CE",
    "ce_gn": "CE + GN",
    "ce_ln": "CE + LN",
    "mae": "MAE",
    "fw": "FW",
    "dmi": "DMI",
    "soft_reg": "Soft reg. (11)",
    "limit_g_s": "LIMIT_G + S",
    "limit_l_s": "LIMIT_L + S",
    "limit_g": "LIMIT_G − S",
    "limit_l": "LIMIT_L − S",
    "limit_g_init": "LIMIT_G + init",
    "limit_l_init": "LIMIT_L + init",
}

# Paper ROC AUC (%) of the gradient distance as a mislabeled-example detector (Section 5, Appendix C), keyed by
# (dataset, noise, rate, n); strings because one is only given as a bound.
PAPER_DETECTION_AUC = {
    ("mnist", "uniform", 0.8, "all"): "99.87",
    ("cifar10", "uniform", 0.4, "all"): "> 99",
    ("cifar10", "pair", 0.4, "all"): "91.1",
}


def paper_numbers(table):
    """One paper table in long format: method, dataset, noise, rate, n, mean, std (percent; std NaN if not given)."""
    if table not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {table!r}; choose one of {PAPER_TABLES}")
    return pd.read_csv(PAPER_NUMBERS_DIR / f"{table}.csv", dtype={"n": str})


def all_paper_numbers():
    """Every reported cell once, preferring the copy that carries an error bar (Tables 4-7 over Tables 1 and 2)."""
    frame = pd.concat([paper_numbers(t) for t in PAPER_TABLES], ignore_index=True)
    frame = frame.iloc[frame["std"].isna().to_numpy().argsort(kind="stable")]
    return frame.drop_duplicates(["method", "dataset", "noise", "rate", "n"]).reset_index(drop=True)


def label(variant, method=None):
    """Display label of a config variant: the registry label, or e.g. 'CE + weight decay' for variant
    'ce_weight_decay' of method 'ce'; other names are kept."""
    if variant in METHOD_LABELS:
        return METHOD_LABELS[variant]
    if method in METHOD_LABELS and variant.startswith(method + "_"):
        return f"{METHOD_LABELS[method]} + {variant[len(method) + 1:].replace('_', ' ')}"
    return variant


def variant_order(variant_methods):
    """Variants (a variant -> method mapping) in the paper's method order; others after their method, by name."""
    position = {m: i for i, m in enumerate(METHOD_LABELS)}
    return sorted(variant_methods, key=lambda v: (
        position.get(variant_methods[v], len(position)), v not in position, v))


def number_text(value):
    """0.5, 10, 0.003, 1e-4: ``:g`` without exponent padding, exponents below 1e-3."""
    if value != 0 and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def configuration_label(variant, method, hparams):
    """A configuration as a legend entry: 'LIMIT_L (β = 10)', 'CE + dropout 0.5', 'DMI (lr = 1e-4)'.

    ``hparams``: the hyperparameters set by the grid (name -> value). LIMIT's " − S" is dropped: in a figure
    the sampling variants are the ones marked ("+ S")."""
    name = label(variant, method).removesuffix(" − S")
    shown = []
    for key, value in hparams.items():
        symbol = HPARAMS[key].symbol if key in HPARAMS else key
        if name.endswith(f" + {symbol}"):  # the variant names its hyperparameter: 'CE + dropout 0.5'
            name = f"{name} {number_text(value)}"
        else:
            shown.append(f"{symbol} = {number_text(value)}")
    return f"{name} ({', '.join(shown)})" if shown else name


def math_label(text):
    """'LIMIT_G − S' -> 'LIMIT$_G$ − S' for matplotlib's mathtext."""
    return re.sub(r"LIMIT_(\w)", r"LIMIT$_\1$", text)
