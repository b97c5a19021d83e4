"""training.<dataset> Slurm settings reach the sbatch command line (a dry run of the submission, no cluster).

`snakemake --profile slurm` runs as a user types it, with the real executor plugin building the real sbatch
command. Only the Slurm client commands the plugin calls are stand-ins on PATH: `sbatch` records its
arguments and refuses the job (so nothing runs; the profile retries it twice), `sacctmgr` and `sshare` know no
accounts (the plugin then keeps the configured account unchecked). The plugin reports the refused submission with
its sbatch call.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from limit.runs.grid import expand_runs, load_config, pack_runs

pytestmark = pytest.mark.pipeline  # Snakemake or the command line in subprocesses

REPO = Path(__file__).resolve().parents[1]
SLURM = {"slurm_partition": "gpu", "slurm_account": "proj42", "gpu_model": "a100", "constraint": "ib",
         "qos": "high", "gpus": 1}


def stand_in(path, body):
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_training_settings_become_sbatch_options(fmnist_dir, tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch-calls.txt"
    bin_dir.mkdir()
    stand_in(bin_dir / "sbatch", f'printf "%s\\n" "$*" >> {shlex.quote(str(calls))}; '
                                 'echo "sbatch: error: dry run, nothing submitted" >&2; exit 1')
    for name in ("sacctmgr", "sshare"):
        stand_in(bin_dir / name, "exit 0")
    config = tmp_path / "slurm.yaml"
    config.write_text(yaml.safe_dump({"training": {"fashion_mnist": SLURM}, "mlflow": {"enabled": False}}))
    run = "main/fashion_mnist/uniform-0.5/n256/seed1/ce/default"
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("SNAKEMAKE_PROFILE", None)
    done = subprocess.run(["snakemake", f"results/runs/{run}/metrics.json", "--profile", "slurm",
                           "--slurm-status-command", "squeue", "--directory", str(tmp_path / "work"),
                           # the plugin's shutdown waits out its first status check (the profile's: 40 s)
                           "--slurm-init-seconds-before-status-checks", "1",
                           "--configfile", "config/test.yaml", str(config), "--config", f"data_dir={fmnist_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "SLURM sbatch failed" in output, output[-4000:]
    submitted = calls.read_text().splitlines()
    assert len(submitted) == 3, output[-4000:]  # the train job, on its 3 attempts (retries: 2); the rest is local
    for attempt, call in enumerate(submitted, start=1):
        args = shlex.split(call.split(" --wrap=")[0])
        options = dict(zip(args, args[1:]))
        assert options["-p"] == "gpu" and options["-A"] == "proj42" and options["-C"] == "ib"
        assert "--qos=high" in args and "--gpus=a100:1" in args
        # config/test.yaml: mem_mb 1000 grows with the attempt; runtime 10 does not (max_runtime defaults to it)
        assert options["--mem"] == str(1000 * attempt) and options["-t"] == "10"


def dry_run(tmp_path, settings, *args, env=None):
    """``snakemake --profile slurm -n -p`` of the test config with ``settings`` merged in: (exit code, output)."""
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {**(os.environ if env is None else env), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("SNAKEMAKE_PROFILE", None)
    done = subprocess.run(["snakemake", "-n", "-p", "--profile", "slurm", "--directory", str(tmp_path / "work"),
                           "--configfile", "config/test.yaml", str(config), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout + done.stderr


def test_gpu_jobs_without_a_partition_stop_before_any_submission(tmp_path):
    rc, output = dry_run(tmp_path, {"training": {"fashion_mnist": {"gpus": 1}}, "mlflow": {"enabled": False}})
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "training.fashion_mnist.slurm_partition" in errors[0], output[-3000:]
    assert "rule train" not in output
    # an explicit null chooses the cluster's default partition knowingly; a GPU job then trains on its GPU or stops
    rc, output = dry_run(tmp_path, {"training": {"fashion_mnist": {"gpus": 1, "slurm_partition": None}},
                                    "mlflow": {"enabled": False}})
    assert rc == 0, output[-3000:]
    train_commands = [line for line in output.splitlines() if "python -m limit train " in line]
    assert len(train_commands) == 10 and all("--device cuda" in line for line in train_commands)


def test_an_sqlite_tracking_store_is_refused_under_slurm(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    rc, output = dry_run(tmp_path, {}, env=env)  # config/test.yaml: sqlite:///results/mlflow.db
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "mlflow.tracking_uri" in errors[0], output[-3000:]
    assert "MLFLOW_TRACKING_URI" in errors[0] and "rule train" not in output
    rc, output = dry_run(tmp_path, {}, env={**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"})
    assert rc == 0, output[-3000:]


# Snakemake's Python API with the Slurm executor, as a program that embeds Snakemake runs it: the workflow is
# parsed without Snakemake's command line, so only the onstart checks (after the executor is chosen) can stop it.
API_RUN = """
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings
from snakemake_executor_plugin_slurm import ExecutorSettings
repo, workdir, target, *configfiles = sys.argv[1:]
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(ResourceSettings(nodes=10), ConfigSettings(configfiles=[Path(f) for f in configfiles]),
                            snakefile=Path(repo) / "Snakefile", workdir=Path(workdir))
    workflow.dag(DAGSettings(targets=[target])).execute_workflow(executor="slurm",
                                                    executor_settings=ExecutorSettings(status_command="squeue"))
"""


@pytest.mark.parametrize("settings, key", [
    ({"training": {"fashion_mnist": {"gpus": 1}}, "mlflow": {"enabled": False}}, "slurm_partition"),
    ({"training": {"fashion_mnist": {"gpus": 1, "slurm_partition": "gpu"}}}, "mlflow.tracking_uri"),
], ids=["partition", "sqlite"])
def test_the_slurm_checks_hold_through_the_python_api(tmp_path, settings, key):
    """Through snakemake.api the executor is not on a command line: the workflow still stops before any sbatch
    call, with one error line and exit status 2, and the SQLite store is never created."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch-calls.txt"
    bin_dir.mkdir()
    stand_in(bin_dir / "sbatch", f'printf "%s\\n" "$*" >> {shlex.quote(str(calls))}; exit 1')
    for name in ("sacctmgr", "sshare", "squeue", "sacct", "scancel"):
        stand_in(bin_dir / name, "exit 0")
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = "main/fashion_mnist/uniform-0.5/n256/seed1/ce/default"
    done = subprocess.run([sys.executable, "-c", API_RUN, str(REPO), str(work), f"results/runs/{run}/metrics.json",
                           str(REPO / "config" / "test.yaml"), str(config)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and key in errors[0], output[-4000:]
    assert not calls.exists(), calls.read_text()
    assert not list(work.rglob("*.db")) and not (work / "results" / "labels").exists()


def job_blocks(output):
    """The jobs of a dry run's listing (``rule NAME:`` blocks): [(rule, {field: value})]."""
    jobs = []
    for block in re.split(r"^(?:localrule|rule) ", output, flags=re.M)[1:]:
        name, *lines = block.splitlines()
        fields = dict(line.strip().split(": ", 1) for line in lines if line.startswith("    ") and ": " in line)
        jobs.append((name.rstrip(":"), fields))
    return jobs


def test_every_training_job_asks_slurm_for_the_cpus_of_its_config(tmp_path):
    """The paper config under --profile slurm (cores: all: this machine's 2 cores): every training job is submitted
    with the CPUs its config asks for, not Snakemake's threads capped at --cores: the 16-member MNIST packs 17
    (16 runs + the pack's process), Clothing1M 16, the CIFAR ResNets 8."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("SNAKEMAKE_PROFILE", None)
    done = subprocess.run(["snakemake", "-n", "--profile", "slurm", "--directory", str(tmp_path / "work"),
                           "--configfile", "config/paper.yaml", "--config", "slurm_partition=gpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    config = load_config(REPO / "config" / "paper.yaml")
    config["slurm_partition"] = "gpu"
    rows = expand_runs(config)
    packs, runs = pack_runs(rows), {r["run_id"]: r for r in rows}
    asked = {}
    for rule, fields in job_blocks(output):
        if rule in ("train", "train_pack"):
            cpus = int(re.search(r"\bcpus_per_task=(\d+)", fields["resources"]).group(1))
            key, name = fields["wildcards"].split("=", 1)
            expected = (sum(m["threads"] for m in packs[name]) + 1 if key == "pack" else runs[name]["threads"])
            assert cpus == expected, (rule, name, fields["resources"])
            asked[name] = cpus
    assert len(asked) == len(packs) + len(rows) - sum(len(m) for m in packs.values())
    assert {asked[p] for p, members in packs.items() if len(members) == 16} == {17}
    assert {asked[r["run_id"]] for r in rows if r["dataset"] == "clothing1m"} == {16}
    assert {asked[r["run_id"]] for r in rows if r["dataset"].startswith("cifar")} == {8}
