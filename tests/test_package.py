"""The package's structure: one table of hyperparameters and defaults, the torch-free modules, the run directory."""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import import_module
from pathlib import Path

import jsonschema
import pytest
import yaml

from limit.config import _MINUTES, FIELD, FIELDS, JOB_DEFAULTS, parse_checkpoint_every
from limit.methods import LOSSES
from limit.noise import NOISE_MODELS
from limit.registry import HPARAMS, METHODS
from limit.runs import rundir

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "limit/runs/config.schema.yaml").read_text())


def test_schema_hyperparameters_are_the_tables():
    variant = SCHEMA["definitions"]["experiment"]["properties"]["methods"]["additionalProperties"]["properties"]
    grids = {k for k, v in variant.items() if v == {"$ref": "#/definitions/grid"}}
    assert grids == set(HPARAMS)
    assert set(variant) - grids == {"method", "epochs", "patience"}
    assert set(METHODS) == set(LOSSES)


def test_schema_training_defaults_are_the_field_table():
    training = SCHEMA["definitions"]["training"]["properties"]
    defaults = {**{f.name: f.default for f in FIELDS}, **JOB_DEFAULTS}
    shared = {k for k in set(training) & set(defaults) if "default" in training[k]}
    assert shared == {"arch", "epochs", "patience", "batch_size", "bn_init", "test_curve", "test_curve_size",
                      "precision", "checkpoint_every", "test_curve_every", "deterministic", "decode", "keep_state",
                      "pack", "pack_in_process"}
    assert {k: training[k]["default"] for k in shared} == {k: defaults[k] for k in shared}
    # every setting the workflow passes is one of the config's per-dataset training keys (or the grid's)
    from_grid = {"method", "seed", "clean_validation", "device", "num_workers"}
    assert {f.name for f in FIELDS if f.workflow} - from_grid <= set(training)
    assert training["arch"]["enum"] == list(FIELD["arch"].choices)


def test_schema_choices_and_patterns_are_the_packages():
    """The schema refuses a config before any job; the package refuses a run: they agree on every choice."""
    training = SCHEMA["definitions"]["training"]["properties"]
    experiment = SCHEMA["definitions"]["experiment"]["properties"]
    for name in ("arch", "bn_init", "precision", "decode"):
        assert training[name]["enum"] == list(FIELD[name].choices), name
    assert experiment["arch"]["enum"] == list(FIELD["arch"].choices)
    # "real": the grid's name for the labels of a real-noise dataset (Clothing1M), not a noise model
    assert set(experiment["noise"]["items"]["enum"]) == set(NOISE_MODELS) | {"real"}
    minutes = training["checkpoint_every"]["anyOf"][1]
    assert re.compile(minutes["pattern"]).pattern == _MINUTES.pattern
    for every in (2, "30min", "1.5m", "2 minutes"):
        jsonschema.validate(every, training["checkpoint_every"])
        parse_checkpoint_every(every)


@pytest.mark.pipeline
def test_workflow_modules_and_cli_import_neither_torch_nor_matplotlib():
    code = ("import sys; import limit.runs.grid, limit.registry, limit.runs.rundir, limit.cli; "
            "limit.cli.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'pandas', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_console_script_is_the_cli(capsys):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["limit"].split(":")
    main = getattr(import_module(module), function)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "usage: limit" in capsys.readouterr().out
    assert main(["prepare", "--dataset", "svhn", "--data-dir", "/nonexistent"]) == 2


def test_atomic_writer_syncs_file_and_directory_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "metrics.json"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    rundir.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert synced == [str(tmp_path / "sub" / ".metrics.json.tmp"), str(tmp_path / "sub")]

    def failing(f):
        f.write(b"{half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        rundir.write_atomic(path, failing)
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(path.parent) == ["metrics.json"]


def test_run_table_row_comes_from_config_fields(tmp_path):
    config = {"dataset": "mnist", "method": "limit_l_s", "seed": 43, "arch": "cnn", "clean_validation": False,
              "hparams": {"beta": 10.0, "lamb": 5.0, "lr": 0.001, "sigma": 0.0, "dropout": 0.0, "weight_decay": 0.0},
              "run": {"experiment": "mnist_3seeds", "variant": "limit_l_s", "hparams": ["beta", "lamb"],
                      "noise": "uniform", "rate": 0.8, "n": "1000"}}
    rundir.write_json(tmp_path / rundir.CONFIG, config)
    rundir.write_json(tmp_path / rundir.METRICS, {"best_epoch": 3, "best_val_acc": 0.5, "test_acc": 0.6,
                                                  "epochs_run": 4, "wall_seconds": 1.0})
    row = rundir.read_run(tmp_path)
    assert row["run_id"] == "mnist_3seeds/mnist/uniform-0.8/n1000/seed43/limit_l_s/beta10_lamb5"
    assert list(row)[:13] == ["run_id", "experiment", "dataset", "noise", "rate", "n", "seed", "variant", "method",
                              "hparams", "arch", "clean_validation", "run_dir"]
    assert list(row)[-6:] == list(HPARAMS)
    assert (row["beta"], row["lamb"], row["lr"], row["hparams"]) == (10.0, 5.0, None, "beta10_lamb5")
    assert rundir.run_tags(config)["rate"] == "0.8" and "lr" not in rundir.run_tags(config)
    # a run directory of the previous version: the same facts, as the MLflow tags of its tracking section
    earlier = {k: v for k, v in config.items() if k != "run"}
    earlier["tracking"] = {"run_id": "mnist/uniform-0.8/n1000/seed43/limit_l_s/beta10_lamb5", "tags": {
        "experiment": "mnist_3seeds", "dataset": "mnist", "noise": "uniform", "rate": "0.8", "n": "1000", "seed": "43",
        "variant": "limit_l_s", "method": "limit_l_s", "hparams": "beta10_lamb5", "beta": "10", "lamb": "5"}}
    rundir.write_json(tmp_path / rundir.CONFIG, earlier)
    assert rundir.read_run(tmp_path) == row
    rundir.write_json(tmp_path / rundir.CONFIG, {k: v for k, v in config.items() if k != "run"})
    with pytest.raises(ValueError, match="neither a run section"):
        rundir.read_run(tmp_path)


def test_readme_methods_table_is_the_registry():
    """The README's Methods table, row by row, from METHODS and HPARAMS (names, descriptions, symbols, meanings)."""
    from limit.registry import GENERIC_HPARAMS
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Methods\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    expected = []
    for name, method in METHODS.items():
        own = "; ".join(f"{h} ({HPARAMS[h].symbol}): {HPARAMS[h].meaning}" for h in method.hparams) or "—"
        expected.append(f"| `{name}` | {method.description} | {own} |")
    assert rows == expected
    assert f"Every method also takes {', '.join(GENERIC_HPARAMS[:-1])} and {GENERIC_HPARAMS[-1]}." in section


def test_conda_environments_are_the_lock():
    """environment.yml and envs/*.yaml pin exactly requirements.lock's versions (scripts/conda-envs writes them)."""
    check = runpy.run_path(str(REPO / "scripts" / "conda-envs"))
    assert check["disagreements"]() == []
    # the whole project's environment holds every pin of the lock, and the test runner's plugins
    pins = check["pip_lines"]((REPO / "environment.yml").read_text())
    assert set(pins) == set(check["read_lock"]((REPO / "requirements.lock").read_text()))
    assert {"pytest-xdist", "psycopg2-binary", "cleanlab"} <= set(pins)


def test_a_command_without_its_extra_is_one_error_line_naming_it(tmp_path, monkeypatch, capsys):
    from limit.cli import NEEDS, main
    from limit.tracking import server
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert all(any(r.startswith(module) for r in extras[extra]) for module, extra in NEEDS.values())
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # as if not installed: find_spec and import see None
    out = tmp_path / "bench"
    assert main(["detect-bench", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == "error: limit detect-bench needs cleanlab: pip install 'limit-pipeline[detect]'\n"
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    assert server.main(["--screenshot", str(tmp_path / "ui.png"), "--store", str(tmp_path / "mlflow.db")]) == 2
    assert capsys.readouterr().err == "error: --screenshot needs aiohttp: pip install 'limit-pipeline[browser]'\n"
    assert not (tmp_path / "mlflow.db").exists()


def test_job_json_and_mlflow_carry_the_lock_and_name_a_change_of_environment(tmp_path):
    import hashlib

    import torch
    from mlflow.tracking import MlflowClient

    from limit.runtime import record_attempt
    from limit.tracking.client import sync_run
    lock = hashlib.sha256((REPO / "requirements.lock").read_bytes()).hexdigest()
    other = "0" * 64  # an attempt made from another lock file
    rundir.write_json(tmp_path / rundir.JOB, {"device": "cpu", "device_name": "AMD EPYC", "lock_sha256": other})
    with pytest.warns(RuntimeWarning, match=f"attempt 2 runs on {lock}, attempt 1 ran on {other}: .* another "
                                            "environment"):
        record_attempt(tmp_path, torch.device("cpu"))
    job = rundir.read_json(tmp_path / rundir.JOB)
    assert job["lock_sha256"] == lock and job["environment_change"] == f"{other} -> {lock}"
    # a job.json of a version that recorded no lock: nothing to compare, no change named
    rundir.write_json(tmp_path / "old" / rundir.JOB, {"device": "cpu", "device_name": job["device_name"]})
    record_attempt(tmp_path / "old", torch.device("cpu"))
    assert "environment_change" not in rundir.read_json(tmp_path / "old" / rundir.JOB)
    rundir.write_json(tmp_path / rundir.CONFIG, {
        "method": "ce", "dataset": "fashion_mnist", "arch": "cnn", "seed": 1, "hparams": {}, "clean_validation": False,
        "run": {"experiment": "main", "variant": "ce", "hparams": [], "noise": "uniform", "rate": 0.5, "n": "256"}})
    (tmp_path / rundir.HISTORY).write_text("epoch,train_acc,val_acc,test_acc\n0,0.3,0.4,0.5\n")
    rundir.write_json(tmp_path / rundir.METRICS, {"best_epoch": 0, "best_val_acc": 0.4, "test_acc": 0.5})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sync_run(tmp_path, uri)
    tags = MlflowClient(uri).get_run(rundir.read_mlflow(tmp_path)["run_id"]).data.tags
    assert tags["lock_sha256"] == lock and tags["environment_change"] == job["environment_change"]


@pytest.mark.pipeline
def test_a_non_editable_install_runs_cost_and_plan(tmp_path):
    """`pip install .` (no checkout on the path): the package carries what it reads (the config schema). The
    dependencies come from this environment through a .pth file, so that torch is not installed again."""
    source, venv = tmp_path / "source", tmp_path / "venv"
    for name in ("limit", "pyproject.toml", "README.md"):  # a copy: building writes build/ and *.egg-info
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "shared.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
                           "--no-deps", "--no-build-isolation", "--no-index", str(source)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([venv / "bin" / "python", "-c", "import limit; print(limit.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert where.stdout.startswith(site), where.stdout + where.stderr
    plan = subprocess.run([venv / "bin" / "limit", "plan", "--help"], capture_output=True, text=True, env=env)
    assert plan.returncode == 0 and plan.stdout.startswith("usage: limit plan"), plan.stderr
    cost = subprocess.run([venv / "bin" / "limit", "cost", "--configfile", str(REPO / "config" / "test.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert cost.returncode == 0, cost.stderr
    assert "\ntotal: " in cost.stdout and "\nmain " in cost.stdout


def test_the_docs_name_functions_that_exist():
    """Every `limit.module.name` in the README and docs/ names a module or an attribute that exists (`limit.group`
    and others like it are MLflow tags)."""
    modules = {p.stem for p in (REPO / "limit").iterdir()}
    named = {m for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
             for m in re.findall(r"`(limit(?:\.\w+)+)`", path.read_text()) if m.split(".")[1] in modules}
    missing = []
    for name in sorted(named):
        try:
            import_module(name)
            continue
        except ImportError:
            pass
        module, _, attribute = name.rpartition(".")
        try:
            if not hasattr(import_module(module), attribute):
                missing.append(name)
        except ImportError:
            missing.append(name)
    assert len(named) > 5 and not missing
