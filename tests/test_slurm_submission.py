"""training.<dataset> Slurm settings reach the sbatch command line (a dry run of the submission, no cluster).

`snakemake --profile slurm` runs as a user types it, with the real executor plugin building the real sbatch
command. Only the Slurm client commands the plugin calls are stand-ins on PATH: `sbatch` records its
arguments and refuses the job (so nothing runs; the profile retries it twice), `sacctmgr` and `sshare` know no accounts (the plugin then
keeps the configured account unchecked). The plugin reports the refused submission with its sbatch call.
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
