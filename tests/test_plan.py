"""``limit plan`` as docs/cluster.md gives it: Snakemake's options as they are, Snakemake's own error."""
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from limit.runs.grid import expand_runs, pack_runs
from limit.runs.plan import merged_config

pytestmark = pytest.mark.pipeline  # Snakemake in a subprocess

REPO = Path(__file__).resolve().parents[1]


def plan(tmp_path, *args, **env):
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}
    environment.pop("SNAKEMAKE_PROFILE", None)
    if "MLFLOW_TRACKING_URI" not in env:
        environment.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "limit", "plan", *args, "--directory", str(tmp_path / "work")],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr


def test_plan_takes_the_documented_command(tmp_path):
    """docs/cluster.md: ``limit plan --configfile config/paper.yaml --profile slurm --config slurm_partition=gpu``
    prints the paper grid's runs per block and the jobs of Snakemake's dry run under the Slurm profile."""
    rc, out, err = plan(tmp_path, "--configfile", "config/paper.yaml", "--profile", "slurm", "--config",
                        "slurm_partition=gpu", MLFLOW_TRACKING_URI="http://127.0.0.1:5999")
    assert rc == 0, err[-3000:]
    rows = expand_runs(merged_config(["config/paper.yaml"], ["slurm_partition=gpu"]))
    packs = pack_runs(rows)
    packed = sum(len(m) for m in packs.values())
    assert out.startswith(f"config/paper.yaml: {len(rows):,} runs in {len(rows) - packed + len(packs):,} training "
                          f"jobs ({len(packs):,} packs of {packed:,} runs); 0 runs finished"), out
    for (block, dataset), count in Counter((r["experiment"], r["dataset"]) for r in rows).items():
        assert f"\n{block}/{dataset} ".replace(" ", "") in out.replace(" ", "") and f"{count:,}" in out
    jobs = dict(line.split() for line in out.split("jobs left")[1].splitlines()[1:] if line.strip())
    assert int(jobs["train"]) == len(rows) - packed and int(jobs["train_pack"]) == len(packs), out
    assert "--profile slurm" in out


def test_plan_reports_snakemakes_error_in_one_line(tmp_path):
    """Without a partition the Slurm profile's check stops the dry run: its error is the plan's one error line."""
    rc, out, err = plan(tmp_path, "--configfile", "config/paper.yaml", "--profile", "slurm",
                        MLFLOW_TRACKING_URI="http://127.0.0.1:5999")
    errors = err.strip().splitlines()
    assert rc == 2 and len(errors) == 1 and errors[0].startswith("error: snakemake "), err
    assert "training.cifar10.slurm_partition: GPU training jobs" in errors[0] and "Using profile" not in errors[0]
    # a profile Snakemake cannot find: its own error, not an informational line
    rc, out, err = plan(tmp_path, "--configfile", "config/test.yaml", "--profile", "no-such-profile")
    errors = err.strip().splitlines()
    assert rc == 2 and len(errors) == 1 and "no-such-profile" in errors[0], err
    assert "Using workflow specific profile" not in errors[0]
