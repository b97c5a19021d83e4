"""Helpers shared by the tests that run the tiny pipeline against real services."""
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Parallel test workers install packages one at a time (apt-get fails while another holds dpkg's lock);
# tests/cluster/slurm-up.sh takes the same lock.
APT_LOCK = "/tmp/limit-tests-apt.lock"


def ensure_debian_packages(*packages):
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"Debian packages {missing} are missing and cannot be installed here (not root or no apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    with open(APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"apt-get install {missing} failed:\n{done.stdout}\n{done.stderr}"


def pipeline_env(**extra):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def snakemake_command(workdir, data_dir, cores, seeds=(1, 2)):
    """The tiny pipeline up to results/runs.csv (training, selection, aggregation) in ``workdir``, every training
    job logging to MLflow as it trains (``mlflow.live``, which config/test.yaml turns off); ``seeds``: its seeds,
    five runs each (written to ``workdir/seeds.yaml``)."""
    overlay = Path(workdir) / "seeds.yaml"
    overlay.write_text(json.dumps({"experiments": {"main": {"seeds": list(seeds)}}}))  # JSON is YAML
    return [sys.executable, "-m", "snakemake", "results/runs.csv", "-s", str(REPO / "Snakefile"), "-d",
            str(workdir), "--cores", str(cores), "--configfile", str(REPO / "config" / "test.yaml"),
            str(REPO / "tests" / "data" / "live-tracking.yaml"), str(overlay), "--config", f"data_dir={data_dir}"]


def git(checkout, *args):
    return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True).stdout


def jobcomp(state, wait_for=()):
    """Finished Slurm jobs from the jobcomp/filetxt log: {job id: {field: value}}. ``wait_for``: job ids to wait
    for (up to 2 minutes): slurmctld records a job after it ends, which on a busy machine can be seconds after
    Snakemake has seen the job leave the queue."""
    path = state / "log" / "jobcomp.txt"
    deadline = time.monotonic() + 120
    while True:
        jobs = {}
        for line in (path.read_text().splitlines() if path.exists() else []):
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            jobs[fields["JobId"]] = fields
        if set(wait_for) <= set(jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)
