"""Expand a workflow config into the table of training runs (one row per job).

The config (schema: ``workflow/schemas/config.schema.yaml``) names experiment blocks; each block crosses
datasets x noise models x rates x training-set sizes x seeds x method variants x hyperparameter grids.
Checks that need the package (method names, noise limits) live here and name the offending key.
"""
import itertools

from limit.noise import check_noise
from limit.registry import GENERIC_HPARAMS, HPARAMS, TRAINING_DEFAULTS, DataError, dataset_info, get_method
from limit.rundir import fmt, hparam_label, run_id, setting_path

VARIANT_SETTINGS = ("method", "epochs", "patience")  # non-grid keys of a method entry


class ConfigError(ValueError):
    """A config that is valid JSON-schema-wise but makes no sense for the package."""


def _check_experiment(name, exp, config):
    where = f"experiments.{name}"
    for dataset in exp["datasets"]:
        try:
            info = dataset_info(dataset)
        except DataError as exc:
            raise ConfigError(f"{where}.datasets: {exc}") from None
        if dataset not in config["training"]:
            raise ConfigError(f"{where}.datasets: {dataset!r} has no entry under training "
                              f"(epochs, patience, resources)")
        for noise in exp["noise"]:
            if dataset == "clothing1m":
                if noise != "real":
                    raise ConfigError(f"{where}.noise: clothing1m has real label noise; use noise: [real]")
                continue
            for rate in exp["rates"]:
                try:
                    check_noise(noise, rate, dataset, info.num_classes)
                except ValueError as exc:
                    raise ConfigError(f"{where}.noise/rates: {exc}") from None
    for variant, spec in exp["methods"].items():
        try:
            method = get_method(spec.get("method", variant))
        except ValueError as exc:
            raise ConfigError(f"{where}.methods.{variant}: {exc}") from None
        allowed = set(method.hparams) | set(GENERIC_HPARAMS) | set(VARIANT_SETTINGS)
        for key in spec:
            if key not in allowed:
                raise ConfigError(f"{where}.methods.{variant}.{key}: not a hyperparameter of "
                                  f"{spec.get('method', variant)!r} (allowed: {sorted(allowed)})")
        for needed in method.hparams:
            if needed not in spec:
                raise ConfigError(f"{where}.methods.{variant}: {spec.get('method', variant)!r} needs a "
                                  f"grid for {needed!r}")


def expand_runs(config):
    """One dict per training run: its grid coordinates, training settings, resources and the CE run it starts
    from (``init_from``, a run id)."""
    rows = []
    for name, exp in config["experiments"].items():
        _check_experiment(name, exp, config)
        for dataset, noise, rate, n, seed in itertools.product(
                exp["datasets"], exp["noise"], exp["rates"], exp["n"], exp["seeds"]):
            train = {**config["training"][dataset], **{k: exp[k] for k in ("arch", "epochs", "patience") if k in exp}}
            for variant, spec in exp["methods"].items():
                method = spec.get("method", variant)
                grid = {k: v for k, v in spec.items() if k not in VARIANT_SETTINGS}
                for values in itertools.product(*grid.values()):
                    hparams = dict(zip(grid, values))
                    row = {
                        "experiment": name, "dataset": dataset, "noise": noise,
                        "rate": float(rate), "n": str(n), "seed": int(seed), "variant": variant, "method": method,
                        "hparams": hparam_label(hparams), **{c: hparams.get(c) for c in HPARAMS},
                        "clean_validation": bool(exp.get("clean_validation", False)),
                        "arch": train["arch"],
                        "epochs": int(spec.get("epochs", train["epochs"])),
                        "patience": int(spec.get("patience", train["patience"])),
                        "batch_size": int(train["batch_size"]), "val_size": train.get("val_size"),
                        "test_curve_size": train.get("test_curve_size"),
                        "bn_init": train.get("bn_init", TRAINING_DEFAULTS["bn_init"]),
                        "threads": int(train["threads"]), "mem_mb": int(train["mem_mb"]),
                        "runtime": int(train["runtime"]), "gpus": int(train["gpus"]), "init_from": None,
                    }
                    rows.append({"run_id": run_id(row), **row})
    _link_ce_runs(rows)
    return rows


def _link_ce_runs(rows):
    """FW, DMI and "+init" start from the CE run (no hyperparameters) of the same setting, seed and arch."""
    ce = {}
    for r in rows:
        if r["method"] == "ce" and r["hparams"] == "default":
            ce.setdefault((r["dataset"], r["noise"], r["rate"], r["n"], r["seed"], r["arch"]), []).append(r)
    for r in rows:
        if get_method(r["method"]).init_from_ce:
            key = (r["dataset"], r["noise"], r["rate"], r["n"], r["seed"], r["arch"])
            candidates = ce.get(key, [])
            same_block = [c for c in candidates if c["experiment"] == r["experiment"]]
            if not candidates:
                raise ConfigError(f"experiments.{r['experiment']}.methods.{r['variant']}: {r['method']!r} starts "
                                  f"from the CE run of the same setting; add ce: {{}} to that experiment "
                                  f"(missing for {r['run_id']})")
            r["init_from"] = (same_block or candidates)[0]["run_id"]


def train_arguments(row):
    """The training settings of a run as ``python -m limit train`` arguments (the workflow adds its files)."""
    args = ["--dataset", row["dataset"], "--method", row["method"], "--arch", row["arch"],
            "--epochs", str(row["epochs"]), "--patience", str(row["patience"]), "--batch-size", str(row["batch_size"]),
            "--seed", str(row["seed"]), "--bn-init", row["bn_init"], "--experiment", row["experiment"],
            "--variant", row["variant"]]
    for name in HPARAMS:
        if row[name] is not None:
            args += [f"--{name.replace('_', '-')}", fmt(row[name])]
    if row["test_curve_size"]:
        args += ["--test-curve-size", str(row["test_curve_size"])]
    if row["clean_validation"]:
        args.append("--clean-validation")
    return args


def selection_groups(rows):
    """Run rows grouped by experiment, data setting (all seeds) and variant: the unit of selection."""
    groups = {}
    for r in rows:
        key = f"{r['experiment']}/{setting_path(r['dataset'], r['noise'], r['rate'], r['n'])}/{r['variant']}"
        groups.setdefault(key, []).append(r)
    return groups
