"""Expand a workflow config into the table of training runs (one row per job).

The config (schema: ``workflow/schemas/config.schema.yaml``) names experiment blocks; each block crosses
datasets x noise models x rates x training-set sizes x seeds x method variants x hyperparameter grids.
Checks that need the package (method names, noise limits) live here and name the offending key.
"""
import itertools
import json
from pathlib import Path

from limit import data as D
from limit.folder_data import check_arch, check_sources
from limit.methods import GENERIC_HPARAMS, get_method, hparam_problem, is_limit
from limit.noise import HUMAN_NOISE, check_noise

HPARAM_COLUMNS = ("beta", "lamb", "sigma", "lr", "dropout", "weight_decay")
VARIANT_SETTINGS = ("method", "epochs", "patience")  # non-grid keys of a method entry
SLURM_RESOURCES = ("slurm_partition", "slurm_account", "gpu_model", "constraint", "qos")  # optional, per dataset
# Per-dataset training settings of how a run uses its job (schema defaults; see `python -m limit train --help`).
DEVICE_SETTINGS = {"pack": 1, "precision": "fp32", "checkpoint_every": 1, "test_curve_every": 1,
                   "deterministic": True, "decode": "pil"}


class ConfigError(ValueError):
    """A config that is valid JSON-schema-wise but makes no sense for the package."""


def fmt(value):
    """Path-safe, short number formatting: 0.5, 1e-05, 10."""
    return f"{value:g}"


def hparam_label(hparams):
    return "_".join(f"{k}{fmt(v)}" for k, v in sorted(hparams.items())) or "default"


def setting_path(dataset, noise, rate, n, seed=None):
    """Readable, path-safe name of a data setting: fashion_mnist/uniform-0.5/n1000/seed42."""
    noise_part = noise if dataset == "clothing1m" else f"{noise}-{fmt(rate)}"
    return f"{dataset}/{noise_part}/n{n}" + ("" if seed is None else f"/seed{seed}")


def labels_path(results, dataset, noise, rate, n, seed):
    return f"{results}/labels/{setting_path(dataset, noise, rate, n, seed)}.npz"


def image_dataset_dir(results, name):
    """Where the workflow decodes an image dataset of the config (the ``--dataset`` of its jobs)."""
    return f"{results}/data/{name}"


def check_image_datasets(config):
    """Check every image of the config's own datasets (headers only) before any job: name -> (classes, side)."""
    checked = {}
    for name, spec in config.get("image_datasets", {}).items():
        if name in D.DATASETS:
            raise ConfigError(f"image_datasets.{name}: the name of a built-in dataset; choose another")
        try:
            train, _, _, size = check_sources(spec["source"], spec.get("test"), spec.get("classes"),
                                              spec.get("size"), spec.get("channels"))
        except ValueError as exc:
            raise ConfigError(f"image_datasets.{name}: {exc}") from None
        checked[name] = (len(train.classes), size)
    return checked


def _check_experiment(name, exp, config, image_datasets):
    where = f"experiments.{name}"
    for dataset in exp["datasets"]:
        if dataset in image_datasets:
            num_classes, size = image_datasets[dataset]
            try:
                check_arch(exp.get("arch", config["training"].get(dataset, {}).get("arch", "cnn")), size)
            except ValueError as exc:
                raise ConfigError(f"{where}.datasets: {dataset}: {exc}") from None
        else:
            try:
                num_classes = D.dataset_info(dataset).num_classes
            except ValueError as exc:
                raise ConfigError(f"{where}.datasets: {exc}") from None
        if dataset not in config["training"]:
            raise ConfigError(f"{where}.datasets: {dataset!r} has no entry under training "
                              f"(epochs, patience, resources)")
        train = config["training"][dataset]
        if train.get("max_runtime", train["runtime"]) < train["runtime"]:
            raise ConfigError(f"training.{dataset}.max_runtime: {train['max_runtime']} is less than runtime "
                              f"({train['runtime']})")
        for noise in exp["noise"]:
            if dataset == "clothing1m":
                if noise != "real":
                    raise ConfigError(f"{where}.noise: clothing1m has real label noise; use noise: [real]")
                continue
            for rate in exp["rates"]:
                try:
                    check_noise(noise, rate, dataset, num_classes)
                except ValueError as exc:
                    raise ConfigError(f"{where}.noise/rates: {exc}") from None
            if noise in HUMAN_NOISE:
                from limit.cifar_n import label_file
                try:
                    label_file(config["data_dir"], dataset)
                except ValueError as exc:
                    raise ConfigError(f"{where}.noise: {exc}") from None
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
        for key, grid in spec.items():
            for value in grid if key in HPARAM_COLUMNS else ():
                problem = hparam_problem(spec.get("method", variant), key, value)
                if problem:
                    raise ConfigError(f"{where}.methods.{variant}.{key}: {value} {problem}")
        for needed in method.hparams:
            if needed not in spec:
                raise ConfigError(f"{where}.methods.{variant}: {spec.get('method', variant)!r} needs a "
                                  f"grid for {needed!r}")


def check_schema(config, schema_path):
    """The first violation of the JSON schema, as a ConfigError naming its key."""
    import jsonschema
    import yaml
    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(f"{'.'.join(map(str, error.absolute_path)) or 'config'}: {error.message}")


def expand_runs(config):
    """One dict per training run, with its paths, resources and the CE run it starts from."""
    from limit.tracking import check_no_password
    try:
        check_no_password(config["mlflow"]["tracking_uri"], "mlflow.tracking_uri")
    except ValueError as exc:
        raise ConfigError(exc) from None
    results = config["results"]
    image_datasets = check_image_datasets(config)
    rows = []
    for name, exp in config["experiments"].items():
        _check_experiment(name, exp, config, image_datasets)
        for dataset, noise, rate, n, seed in itertools.product(
                exp["datasets"], exp["noise"], exp["rates"], exp["n"], exp["seeds"]):
            train = {**config["training"][dataset], **{k: exp[k] for k in ("arch", "epochs", "patience") if k in exp}}
            setting = setting_path(dataset, noise, rate, n, seed)
            for variant, spec in exp["methods"].items():
                method = spec.get("method", variant)
                grid = {k: v for k, v in spec.items() if k not in VARIANT_SETTINGS}
                for values in itertools.product(*grid.values()):
                    hparams = dict(zip(grid, values))
                    label = hparam_label(hparams)
                    run_id = f"{name}/{setting}/{variant}/{label}"
                    rows.append({
                        "run_id": run_id, "experiment": name, "dataset": dataset, "noise": noise,
                        "rate": float(rate), "n": str(n), "seed": int(seed), "variant": variant, "method": method,
                        "dataset_arg": (image_dataset_dir(results, dataset) if dataset in image_datasets
                                        else dataset),
                        "label_issues": bool(exp.get("label_issues")) and is_limit(method),
                        "hparams": label, **{c: hparams.get(c) for c in HPARAM_COLUMNS},
                        "clean_validation": bool(exp.get("clean_validation", False)),
                        "arch": train["arch"],
                        "epochs": int(spec.get("epochs", train["epochs"])),
                        "patience": int(spec.get("patience", train["patience"])),
                        "batch_size": int(train["batch_size"]), "val_size": train.get("val_size"),
                        "test_curve_size": train.get("test_curve_size"), "bn_init": train.get("bn_init", "authors"),
                        "threads": int(train["threads"]), "mem_mb": int(train["mem_mb"]),
                        "runtime": int(train["runtime"]), "gpus": int(train["gpus"]),
                        "max_runtime": int(train.get("max_runtime", train["runtime"])),
                        **{k: train.get(k) for k in SLURM_RESOURCES},
                        **{k: train.get(k, default) for k, default in DEVICE_SETTINGS.items()},
                        "labels": labels_path(results, dataset, noise, rate, n, seed),
                        "run_dir": f"{results}/runs/{run_id}", "init_from": None,
                    })
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
            r["init_from"] = (same_block or candidates)[0]["run_dir"]


def train_arguments(row, data_dir):
    """The ``python -m limit train`` arguments of a run (everything but --out and tracking)."""
    args = ["--dataset", row["dataset_arg"], "--data-dir", data_dir, "--labels", row["labels"],
            "--method", row["method"], "--arch", row["arch"], "--epochs", str(row["epochs"]),
            "--patience", str(row["patience"]), "--batch-size", str(row["batch_size"]), "--seed", str(row["seed"]),
            "--bn-init", row["bn_init"]]
    for column in HPARAM_COLUMNS:
        if row[column] is not None:
            args += [f"--{column.replace('_', '-')}", fmt(row[column])]
    if row["test_curve_size"]:
        args += ["--test-curve-size", str(row["test_curve_size"])]
    for key in ("precision", "checkpoint_every", "test_curve_every"):
        if row[key] != DEVICE_SETTINGS[key]:
            args += [f"--{key.replace('_', '-')}", str(row[key])]
    if not row["deterministic"]:
        args.append("--nondeterministic")
    if row["dataset"] == "clothing1m":  # loader workers = the job's threads
        args += ["--num-workers", str(row["threads"]), "--decode", row["decode"]]
    if row["clean_validation"]:
        args.append("--clean-validation")
    if row["init_from"]:
        args += ["--init-from", row["init_from"]]
    return args


TAG_COLUMNS = ("experiment", "dataset", "noise", "rate", "n", "seed", "variant", "method", "hparams", "arch",
               "clean_validation") + HPARAM_COLUMNS


def run_tags(row):
    """MLflow tags (and run-table columns) of a run: every grid dimension."""
    return {k: (fmt(row[k]) if isinstance(row[k], float) else str(row[k]))
            for k in TAG_COLUMNS if row[k] is not None}


def group_key(experiment, dataset, noise, rate, n, variant):
    """The unit of selection (and an MLflow parent run): experiment/dataset/noise-rate/nN/variant."""
    return f"{experiment}/{setting_path(dataset, noise, rate, n)}/{variant}"


def pack_runs(rows):
    """Packs of runs trained together in one job: {name: rows}, for datasets whose ``pack`` is above 1.

    Consecutive runs (same data setting and seed first) of a dataset, ``pack`` at a time. Runs that start from a
    CE run are packed apart from the CE runs, so no pack waits for one of its own members.
    """
    chunks = {}
    for r in rows:
        if r["pack"] > 1:
            chunks.setdefault((r["dataset"], bool(r["init_from"])), []).append(r)
    packs = {}
    for (dataset, from_ce), members in chunks.items():
        size = members[0]["pack"]
        for i in range(0, len(members), size):
            packs[f"{dataset}{'_from_ce' if from_ce else ''}_{i // size + 1:04d}"] = members[i:i + size]
    return packs


def selection_groups(rows):
    """Run rows grouped by experiment, data setting (all seeds) and variant: the unit of selection."""
    groups = {}
    for r in rows:
        key = group_key(r["experiment"], r["dataset"], r["noise"], r["rate"], r["n"], r["variant"])
        groups.setdefault(key, []).append(r)
    return groups


def figure_facts(rows):
    """What the report's figure captions state about a grid: the seeds of each experiment block and the test
    examples whose accuracy is drawn per epoch, per dataset."""
    seeds, subsets = {}, {}
    for r in rows:
        seeds.setdefault(r["experiment"], set()).add(r["seed"])
        size = r["test_curve_size"]
        subsets[r["dataset"]] = f"the first {size:,} test images" if size else "the whole test set"
    return {"seeds": "; ".join(f"{block}: {', '.join(map(str, sorted(s)))}" + (" (1 seed)" if len(s) == 1 else "")
                               for block, s in seeds.items()),
            "test_subset": "; ".join(f"{dataset}: {text}" for dataset, text in subsets.items())}


def read_run(run_dir):
    """One run-table row from a finished run directory (its grid tags, config and metrics)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    tags = config.get("tracking", {}).get("tags", {})
    name = config.get("tracking", {}).get("run_id", run_dir.name)
    row = {"run_id": f"{tags['experiment']}/{name}" if "experiment" in tags else name, **tags,
           "method": config["method"], "dataset": tags.get("dataset", config["dataset"]), "seed": config["seed"],
           "run_dir": str(run_dir), **metrics}
    for column in HPARAM_COLUMNS:
        row[column] = float(tags[column]) if column in tags else None
    row["rate"] = float(row.get("rate", "nan"))
    row["clean_validation"] = bool(config.get("clean_validation", False))
    row.setdefault("hparams", run_dir.name)
    row.setdefault("variant", config["method"])
    row.setdefault("experiment", "manual")
    row.setdefault("n", "all")
    row.setdefault("noise", "unknown")
    return row
