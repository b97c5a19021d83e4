"""Expand a workflow config into the table of training runs (one row per job).

The config (schema: ``limit/runs/config.schema.yaml``) names experiment blocks; each block crosses
datasets x noise models x rates x training-set sizes x seeds x method variants x hyperparameter grids.
Checks that need the package (method names, noise limits) live here and name the offending key.
"""
import hashlib
import itertools
import json
import os
from pathlib import Path

from limit.config import FIELD, FIELDS, JOB_DEFAULTS, argument
from limit.datasets.images import check_sources, headers_cache
from limit.noise import HUMAN_NOISE, check_noise
from limit.registry import (
    DATASETS,
    GENERIC_HPARAMS,
    HPARAMS,
    PAPER_TABLES,
    check_arch,
    dataset_info,
    get_method,
    hparam_problem,
    is_limit,
    method_name,
    named_dataset,
    paper_table_settings,
    split_sizes,
    unknown_name,
)
from limit.runs.rundir import group_key, hparams_label, run_id, setting_text

SCHEMA = Path(__file__).with_name("config.schema.yaml")  # package data: an installed package finds it too
VARIANT_SETTINGS = ("method", "epochs", "patience")  # non-grid keys of a method entry
SLURM_RESOURCES = ("slurm_partition", "slurm_account", "gpu_model", "constraint", "qos")  # optional, per dataset


class ConfigError(ValueError):
    """A config that is valid JSON-schema-wise but makes no sense for the package."""


def check_image_datasets(config):
    """Check every image of the config's own datasets (headers only) before any job: name -> (classes, side,
    (training, validation, test) examples; test None when they have no test images).
    The headers that the import job read are found under the results directory: an unchanged source is not
    opened again. Nothing is written (a dry run writes nothing)."""
    checked = {}
    headers = headers_cache(Path(config.get("results", "results")) / "data")
    for name, spec in config.get("image_datasets", {}).items():
        if name in DATASETS:
            raise ConfigError(f"image_datasets.{name}: the name of a built-in dataset; choose another")
        try:
            train, test_source, _, size = check_sources(spec["source"], spec.get("test"), spec.get("classes"),
                                              spec.get("size"), spec.get("channels"), headers)
        except ValueError as exc:
            raise ConfigError(f"image_datasets.{name}: {exc}") from None
        test = len(test_source.paths) if test_source else None  # none: the validation images stand in
        checked[name] = (len(train.classes), size, (*split_sizes(len(train.paths)), test))
    return checked


def _check_sizes(where, dataset, sizes_n, train, sizes):
    """Training-set sizes ``n``, ``val_size`` and ``test_curve_size`` against the dataset's (training, validation,
    test) examples, as ``limit corrupt`` and ``limit train`` would find them, before any job."""
    if not sizes:
        return
    n_train, n_val, n_test = sizes
    for n in sizes_n:
        if str(n) != "all" and int(n) > n_train:
            raise ConfigError(f"{where}.n: n = {n} is larger than the training split of {dataset} "
                              f"({n_train} examples)")
    for key, most, split in (("val_size", n_val, "validation split"), ("test_curve_size", n_test, "test set")):
        if train.get(key) is not None and most is not None and train[key] > most:
            raise ConfigError(f"training.{dataset}.{key}: {train[key]} is larger than the {split} of {dataset} "
                              f"({most} examples)")


def _check_experiment(name, exp, config, image_datasets):
    where = f"experiments.{name}"
    for dataset in exp["datasets"]:
        if dataset in image_datasets:
            num_classes, size, sizes = image_datasets[dataset]
            try:
                check_arch(exp.get("arch", config["training"].get(dataset, {}).get("arch", "cnn")), size)
            except ValueError as exc:
                raise ConfigError(f"{where}.datasets: {dataset}: {exc}") from None
        else:
            try:
                num_classes, sizes = dataset_info(dataset).num_classes, dataset_info(dataset).split_sizes
            except ValueError as exc:
                raise ConfigError(f"{where}.datasets: {exc}") from None
        if dataset not in config["training"]:
            raise ConfigError(f"{where}.datasets: {dataset!r} has no entry under training "
                              f"(epochs, patience, resources)")
        train = config["training"][dataset]
        _check_sizes(where, dataset, exp["n"], train, sizes)
        if train.get("max_runtime", train["runtime"]) < train["runtime"]:
            raise ConfigError(f"training.{dataset}.max_runtime: {train['max_runtime']} is less than runtime "
                              f"({train['runtime']})")
        for noise in exp["noise"]:
            if named_dataset(dataset).real_noise:
                if noise != "real":
                    raise ConfigError(f"{where}.noise: {dataset} has real label noise; use noise: [real]")
                continue
            for rate in exp["rates"]:
                try:
                    check_noise(noise, rate, dataset, num_classes)
                except ValueError as exc:
                    raise ConfigError(f"{where}.noise/rates: {exc}") from None
            if noise in HUMAN_NOISE:
                from limit.datasets.cifar_n import label_file
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
            for value in grid if key in HPARAMS else ():
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
    if error is None:
        return
    where = ".".join(map(str, error.absolute_path)) or "config"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        extra = [k for k in error.instance if k not in known]
        if extra and known:
            raise ConfigError(f"{where}: {unknown_name('key', extra[0], known)}")
    raise ConfigError(f"{where}: {error.message}")


def load_config(path):
    """A workflow config with the schema's defaults filled in, as Snakemake reads it; ConfigError otherwise."""
    import yaml
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror.lower()}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    return checked_config(config, path)


def checked_config(config, source):
    """``config`` checked against the schema (errors name ``source``), with the schema's defaults filled in."""
    from snakemake.utils import validate
    try:
        check_schema(config, SCHEMA)
    except ConfigError as exc:
        raise ConfigError(f"invalid config {source}: {exc}") from None
    validate(config, str(SCHEMA))
    return config


def store_uri(config):
    """The MLflow store of a config: mlflow.tracking_uri, else the SQLite file of its results directory
    (MLFLOW_TRACKING_URI, where set, overrides both in every job)."""
    from limit.tracking.uri import sqlite_store
    return config["mlflow"].get("tracking_uri") or sqlite_store(config["results"])


def expand_runs(config):
    """One dict per training run: its grid coordinates, training settings, resources and the CE run it starts
    from (``init_from``, a run id). File paths are the workflow's (``workflow/rules/common.smk``)."""
    from limit.tracking.uri import check_no_password
    try:
        check_no_password(config["mlflow"].get("tracking_uri"), "mlflow.tracking_uri")
    except ValueError as exc:
        raise ConfigError(exc) from None
    image_datasets = check_image_datasets(config)
    skipped = skipped_datasets(config)
    rows = []
    for name, exp in config["experiments"].items():
        exp = {**exp, "datasets": [d for d in exp["datasets"] if d not in skipped]}
        if not exp["datasets"]:
            continue
        _check_experiment(name, exp, config, image_datasets)
        for dataset, noise, rate, n, seed in itertools.product(
                exp["datasets"], exp["noise"], exp["rates"], exp["n"], exp["seeds"]):
            train = {**config["training"][dataset], **{k: exp[k] for k in ("arch", "epochs", "patience") if k in exp}}
            # the run's training settings (limit.config.FIELDS); the grid's own ones in the row below
            settings = {f.name: train.get(f.name, f.default) for f in FIELDS if f.workflow}
            for variant, spec in exp["methods"].items():
                method = method_name(spec.get("method", variant))
                grid = {k: v for k, v in spec.items() if k not in VARIANT_SETTINGS}
                for values in itertools.product(*grid.values()):
                    hparams = dict(zip(grid, values))
                    row = {
                        **settings,
                        "experiment": name, "dataset": dataset, "noise": noise,
                        "rate": float(rate), "n": str(n), "seed": int(seed), "variant": variant, "method": method,
                        "image_dataset": dataset in image_datasets,
                        "label_issues": bool(exp.get("label_issues")) and is_limit(method),
                        "hparams": hparams_label(hparams), **{c: hparams.get(c) for c in HPARAMS},
                        "val_size": train.get("val_size"),
                        "threads": int(train["threads"]), "mem_mb": int(train["mem_mb"]),
                        "runtime": int(train["runtime"]), "gpus": int(train["gpus"]),
                        "max_runtime": int(train.get("max_runtime", train["runtime"])),
                        **{k: train.get(k) for k in SLURM_RESOURCES},
                        "slurm_partition": train.get("slurm_partition", config.get("slurm_partition")),
                        "pack": int(train.get("pack", JOB_DEFAULTS["pack"])),
                        "pack_in_process": bool(train.get("pack_in_process", JOB_DEFAULTS["pack_in_process"])),
                        "epochs": int(spec.get("epochs", train["epochs"])),
                        "patience": int(spec.get("patience", train["patience"])),
                        "clean_validation": bool(exp.get("clean_validation", False)),
                        "log_checkpoints": train.get("log_checkpoints", config["mlflow"].get("log_checkpoints", True)),
                        # a GPU job trains on its GPU or stops at once, never on the CPU
                        "device": "cuda" if train["gpus"] > 0 else FIELD["device"].default,
                        # a dataset streamed from disk decodes with the job's threads
                        "num_workers": (int(train["threads"]) if named_dataset(dataset).streamed
                                        else FIELD["num_workers"].default),
                        "init_from": None,
                    }
                    rows.append({"run_id": run_id(row), **row})
    _link_ce_runs(rows)
    return rows


def skipped_datasets(config):
    """The datasets that ``skip_datasets`` leaves out of every experiment block; each must be one of them."""
    skipped = set(config.get("skip_datasets", []))
    named = {d for exp in config["experiments"].values() for d in exp["datasets"]}
    unknown = sorted(skipped - named)
    if unknown:
        raise ConfigError(f"skip_datasets: {unknown[0]!r} is in no experiment block (they use "
                          f"{', '.join(sorted(named))})")
    return skipped


def skipped_outputs(config):
    """One line: what the runs that ``skip_datasets`` leaves out would have filled, and so stays empty (the paper
    tables' columns; Figure 1; Figures 3 and A0 of each setting at its noisiest rate, as ``limit.report.render``)."""
    def key(dataset, noise, rate, n):  # a setting as the paper numbers list it: real noise has no rate
        return dataset, noise, None if noise == "real" else float(rate), str(n)
    skipped = skipped_datasets(config)
    settings, curves, figure1 = set(), {}, False
    for exp in config["experiments"].values():
        with_limit = any(is_limit(method_name(spec.get("method", v))) for v, spec in exp["methods"].items())
        for setting in itertools.product(skipped & set(exp["datasets"]), exp["noise"], exp["rates"], exp["n"]):
            if exp.get("figure1"):
                figure1 = True
                continue
            dataset, noise, rate, n = key(*setting)
            settings.add((dataset, noise, rate, n))
            curves.setdefault((dataset, noise, n), []).append((rate, with_limit))
    empty = ["Figure 1"] if figure1 else []
    for table in PAPER_TABLES:
        columns = {key(*c) for c in paper_table_settings(table)}
        if columns <= settings:
            empty.append(f"Table {table[5:]}")
        else:
            empty += [f"Table {table[5:]}'s column {setting_text(*c, style='title')}"
                      for c in sorted(columns & settings, key=str)]
    for (dataset, noise, n), entries in sorted(curves.items()):
        rate = None if noise == "real" else max(r for r, _ in entries)
        figures = "Figures 3 and A0" if any(w for _, w in entries) else "Figure 3"
        empty.append(f"{figures} of {setting_text(dataset, noise, rate, n, style='title')}")
    return (f"skip_datasets: no job for {', '.join(sorted(skipped))}; these stay empty: "
            f"{'; '.join(empty) or 'none of the paper tables and figures'}")


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


ALWAYS = [f.name for f in FIELDS if f.workflow == "always"]
CHANGED = [(f.name, f.default) for f in FIELDS if f.workflow == "changed"]


def train_arguments(row):
    """The training settings of a run as ``limit train`` arguments: the fields the workflow always passes, the
    run's place in the grid, its hyperparameters, then the fields that differ from their default (the workflow
    adds its files: --dataset, --data-dir, --labels, --init-from, --out; and ``output_arguments``)."""
    args = [a for name in ALWAYS for a in argument(name, row[name])]
    args += ["--experiment", row["experiment"], "--variant", row["variant"]]
    args += [a for name in HPARAMS if row[name] is not None for a in argument(name, float(row[name]))]
    args += [a for name, default in CHANGED if row[name] not in (None, default) for a in argument(name, row[name])]
    return args


def output_arguments(row):
    """What a run keeps (its state once finished, MLflow's copy of its checkpoints) as ``limit train``
    arguments: not what it computes, so the workflow derives them from the run's output and a change reruns
    nothing."""
    return [a for f in FIELDS if f.workflow == "output" and row[f.name] != f.default
            for a in argument(f.name, row[f.name])]


def labels_difference(path, row):
    """How the provenance an existing labels file records (``limit corrupt``) differs from the data setting of
    ``row``, which the workflow's rule would write there: 'val_size 2000 (the config: 1000)'; None when there is no
    file or it is the same."""
    if not os.path.exists(path):
        return None
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as f:
            made = json.loads(str(f["meta"]))
    except Exception:  # numpy and zipfile raise many types for torn or foreign files
        return "an unreadable file (not a labels file of limit corrupt)"
    wanted = {"dataset": row["dataset"], "noise": row["noise"], "rate": row["rate"], "n": row["n"],
              "seed": row["seed"], "val_size": row["val_size"]}
    return ", ".join(f"{k} {made.get(k)} (the config: {v})" for k, v in wanted.items() if made.get(k) != v) or None


def check_slurm_submission(config, rows, tracking_uri):
    """Checks of a config submitted under the Slurm executor, before any job: every GPU training job names its
    partition (clusters' default partitions are often CPU-only), and no job tracks to an SQLite file (hundreds
    of jobs writing one file on a shared file system lock it). ``tracking_uri``: the one jobs would use."""
    unset = sorted({r["dataset"] for r in rows if r["gpus"] > 0 and "slurm_partition" not in config
                    and "slurm_partition" not in config["training"][r["dataset"]]})
    if unset:
        raise ConfigError(f"training.{unset[0]}.slurm_partition: GPU training jobs ({', '.join(unset)}) have no "
                          f"Slurm partition; set it per dataset or for all (--config slurm_partition=NAME; "
                          f"slurm_partition: null in a config file takes the cluster's default partition)")
    if config["mlflow"]["enabled"] and tracking_uri.startswith("sqlite:"):
        raise ConfigError(f"mlflow.tracking_uri: {tracking_uri} is one SQLite file written by every Slurm job; start "
                          f"one tracking server (docs/cluster.md, 'Tracking server') and export "
                          f"MLFLOW_TRACKING_URI=http://HOST:PORT before snakemake, or set mlflow.enabled=false")


def recorded_packs(pack_dir, runs_dir):
    """Run id -> pack name, of the packs that have finished: each one's file lists its run directories."""
    recorded = {}
    for path in sorted(Path(pack_dir).glob("*.json")):
        try:
            run_dirs = json.loads(path.read_text())["run_dirs"]
        except (OSError, ValueError, KeyError):
            continue  # not a pack's file
        recorded.update(dict.fromkeys((os.path.relpath(d, runs_dir) for d in run_dirs), path.stem))
    return recorded


def pack_runs(rows, recorded=None):
    """Packs of runs trained together in one job: {name: rows}, for datasets whose ``pack`` is above 1.

    A run that a finished pack trained stays in it (``recorded``, from ``recorded_packs``), so a changed config
    packs only its new runs. The others are packed consecutively (same data setting and seed first), ``pack`` at
    a time, runs that start from a CE run apart from the CE runs (no pack waits for one of its own members); a
    new pack is named by its dataset and a digest of its runs.
    """
    recorded = recorded or {}
    packs, chunks = {}, {}
    for r in rows:
        if r["pack"] > 1 and r["run_id"] in recorded:
            packs.setdefault(recorded[r["run_id"]], []).append(r)
        elif r["pack"] > 1:
            chunks.setdefault((r["dataset"], bool(r["init_from"])), []).append(r)
    for (dataset, from_ce), members in chunks.items():
        size = members[0]["pack"]
        for i in range(0, len(members), size):
            chunk = members[i:i + size]
            digest = hashlib.sha256("\n".join(m["run_id"] for m in chunk).encode()).hexdigest()[:10]
            packs[f"{dataset}{'_from_ce' if from_ce else ''}_{digest}"] = chunk
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
