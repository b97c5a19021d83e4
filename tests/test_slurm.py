"""The workflow on a real Slurm cluster: `snakemake --profile slurm` with the repository's own profile.

A throw-away single-node cluster (munged, slurmctld, slurmd on 127.0.0.1) is started by
tests/cluster/slurm-up.sh and stopped by PID by tests/cluster/slurm-down.sh. Snakemake is run from the
repository root, exactly as a user types it, with --directory pointing at a temporary work directory.
Needs root and apt-get (the Slurm and munge Debian packages are installed when missing).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from limit.runs.grid import expand_runs

from pipeline_helpers import jobcomp

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "cluster"
TEST_CONFIG = REPO / "config" / "test.yaml"
# A hung workflow gets one SIGINT (Snakemake then scancels its jobs), SIGKILL 30 s later. --foreground: plain
# `timeout` also signals its whole process group, and that second SIGINT can interrupt the plugin's scancel.
WORKFLOW_TIMEOUT = 1200

pytestmark = [pytest.mark.system, pytest.mark.slurm, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("apt-get") is None,
    reason="a local Slurm cluster needs root and apt-get (Debian packages slurmctld, slurmd, munge)")]


# config/test.yaml, shortened for a 2-core machine: one epoch and no MLflow tracking (the tracking store is
# not what this file tests); a retry may run 15 minutes instead of 10. The jobs are as many and as real; each
# still costs two inner Snakemake processes and a Python start on the Slurm "node".
FAST = {"training": {"fashion_mnist": {"epochs": 1, "patience": 1, "max_runtime": 15}},
        "mlflow": {"enabled": False}}


def snakemake_command(workdir, data_dir, *args, config_files=()):
    # From the repository root, as a user types it: `snakemake --profile slurm` finds ./slurm/config.yaml and
    # the workflow profile profiles/default/. The test cluster has no accounting, so it polls with squeue, as
    # docs/cluster.md says for such clusters; its first status check comes 1 s after a submission instead of
    # 40 s (its MinJobAge=300 s still lets the plugin use squeue).
    return ["timeout", "--foreground", "-s", "INT", "-k", "30", str(WORKFLOW_TIMEOUT), "snakemake", *args,
            "--profile", "slurm", "--slurm-status-command", "squeue",
            "--slurm-init-seconds-before-status-checks", "1",
            "--directory", str(workdir),
            "--configfile", "config/test.yaml", *map(str, config_files),
            "--config", f"data_dir={data_dir}"]


def snakemake_env():
    # sbatch --export=ALL: the jobs find this venv's snakemake and python through PATH.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("MLFLOW_TRACKING_URI", None)  # no tracking server for these runs
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def run_snakemake(workdir, data_dir, *args, config_files=()):
    proc = subprocess.run(snakemake_command(workdir, data_dir, *args, config_files=config_files), cwd=REPO,
                          env=snakemake_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def fast_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "fast.yaml"
    path.write_text(yaml.safe_dump(FAST))
    return path


def expected_runs():
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config.setdefault("results", "results")
    return {row["run_id"]: row for row in expand_runs(config)}


def test_cluster_script_never_replaces_a_slurm_conf_it_did_not_write(tmp_path):
    """Runs before the cluster fixture starts: a host's own slurm.conf makes slurm-up.sh refuse, untouched."""
    conf = Path("/etc/slurm/slurm.conf")
    assert not conf.exists(), f"{conf} exists: this host has its own Slurm; the test cluster must not run here"
    made_dir = not conf.parent.exists()
    conf.parent.mkdir(exist_ok=True)
    try:
        conf.write_text("ClusterName=production\n")
        up = subprocess.run(["bash", str(CLUSTER / "slurm-up.sh"), str(tmp_path / "state")], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert up.returncode == 3 and "refusing to replace" in up.stderr, up.stdout + up.stderr
        assert conf.read_text() == "ClusterName=production\n" and not (tmp_path / "state").exists()
    finally:
        conf.unlink()
        if made_dir:
            conf.parent.rmdir()


def _ce_run(workdir, seed):
    row = next(r for r in expected_runs().values() if r["method"] == "ce" and r["seed"] == seed)
    return row, workdir / "results" / "runs" / row["run_id"]


def _submitted(output, row):
    """Slurm job ids of a run's submissions, in order, from Snakemake's "submitted with SLURM jobid" lines."""
    wildcards = f"rule_train/{row['run_id'].replace('/', '_')}/"
    return re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*" + re.escape(wildcards), output)


def test_failures_are_reported_and_retried(slurm_cluster, fast_config, fmnist_dir, tmp_path):
    """One run fails on both attempts, another only on its first: `--retries 1 --keep-going`.

    The failure is real and deterministic: corrupt checkpoints (state.pt and state.prev.pt) in the run directory
    make the trainer stop with an error (exit 2) before it writes any output. For the run that must succeed, a
    watcher removes the checkpoints as soon as Slurm has recorded its first job as FAILED; the second
    attempt is submitted only after Snakemake has polled that failure (seconds later, after Slurm's own
    record), so it always starts from a clean run directory.
    """
    workdir = tmp_path / "work"
    bad, bad_dir = _ce_run(workdir, seed=1)
    flaky, flaky_dir = _ce_run(workdir, seed=2)
    checkpoints = ("state.pt", "state.prev.pt")
    for run_dir in (bad_dir, flaky_dir):
        run_dir.mkdir(parents=True)
        for name in checkpoints:
            (run_dir / name).write_bytes(b"not a checkpoint")
    before = set(jobcomp(slurm_cluster))
    removed = threading.Event()
    done = threading.Event()

    # Slurm writes each job's output to the executor's log of the run's wildcards, named by its job id; the
    # trainer refuses the corrupt checkpoint before it writes anything in the run directory (job.json included)
    slurm_logs = workdir / ".snakemake" / "slurm_logs" / "rule_train" / flaky["run_id"].replace("/", "_")

    def watch():
        while not done.is_set():
            job_id = min((p.stem for p in slurm_logs.glob("*.log")), key=int, default=None)
            if job_id not in before and jobcomp(slurm_cluster).get(job_id, {}).get("JobState") == "FAILED":
                for name in checkpoints:
                    (flaky_dir / name).unlink()
                removed.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        rc, output = run_snakemake(workdir, fmnist_dir, f"results/runs/{bad['run_id']}/metrics.json",
                                   f"results/runs/{flaky['run_id']}/metrics.json", "--retries", "1",
                                   "--keep-going", config_files=[fast_config])
    finally:
        done.set()
        watcher.join()
    finished = jobcomp(slurm_cluster, wait_for=re.findall(r"submitted with SLURM jobid (\d+)", output))

    # the run that fails twice: reported, non-zero exit, no outputs left behind
    assert rc != 0, output[-6000:]
    assert "Error in rule train" in output and "SLURM status is: 'FAILED'" in output
    for name in ("metrics.json", "history.csv", "test_outputs.npz", "best.pt"):
        assert not (bad_dir / name).exists(), f"a failed job left {name}"
    log = (workdir / "results" / "logs" / "train" / f"{bad['run_id']}.log").read_text()
    assert "is corrupt or not a checkpoint" in log
    bad_jobs = _submitted(output, bad)
    assert len(bad_jobs) == 2, output[-6000:]
    assert [finished[j]["JobState"] for j in bad_jobs] == ["FAILED", "FAILED"]

    # the run that fails once: resubmitted as a new Slurm job, which completes
    assert removed.is_set(), "the first attempt did not fail as a Slurm job"
    assert "Trying to restart job" in output
    assert (flaky_dir / "metrics.json").exists(), output[-6000:]
    flaky_jobs = _submitted(output, flaky)
    assert [finished[j]["JobState"] for j in flaky_jobs] == ["FAILED", "COMPLETED"], output[-6000:]
    assert json.loads((flaky_dir / "job.json").read_text())["slurm_job_id"] == flaky_jobs[1]

    # the train rule scales the memory with the attempt, and the time limit up to max_runtime (15, not 20)
    for first, second in (bad_jobs, flaky_jobs):
        assert "mem=1000M" in finished[first]["Tres"] and finished[first]["TimeLimit"] == "10"
        assert "mem=2000M" in finished[second]["Tres"] and finished[second]["TimeLimit"] == "15"


def test_a_gpu_job_runs_on_the_gpu_resource_and_stops_at_once_without_a_gpu(slurm_cluster, fmnist_dir, fast_config,
                                                                              tmp_path):
    """gpus: 1 is scheduled on the node's GPU GRES (backed by a stand-in device file, slurm-up.sh): Slurm gives
    the job a GPU as on a GPU node, but nothing there runs CUDA. The job stops within a minute with the one-line
    device error instead of training on the CPU; nothing of the run is written."""
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(yaml.safe_dump({"training": {"fashion_mnist": {"gpus": 1, "slurm_partition": "debug"}}}))
    run = "main/fashion_mnist/uniform-0.5/n256/seed1/ce/default"
    workdir = tmp_path / "work"
    rc, output = run_snakemake(workdir, fmnist_dir, f"results/runs/{run}/metrics.json", "--retries", "0",
                               config_files=[fast_config, gpu])
    assert rc != 0 and "Error in rule train" in output, output[-4000:]
    log = (workdir / "results/logs/train" / f"{run}.log").read_text().strip().splitlines()
    # scheduled on the GPU resource: Slurm gave the job GPU 0 (jobcomp's Tres lists GPUs only with slurmdbd)
    assert len(log) == 1 and log[0].startswith("error: --device cuda: this Slurm job holds a GPU ("), log
    assert "finds no usable GPU" in log[0] and not (workdir / "results/runs" / run).exists()
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(submitted) == 1, output[-4000:]
    jobs = [jobcomp(slurm_cluster, wait_for=submitted)[submitted[0]]]
    assert jobs[0]["JobState"] == "FAILED", jobs
    started, ended = (time.strptime(jobs[0][k], "%Y-%m-%dT%H:%M:%S") for k in ("StartTime", "EndTime"))
    assert time.mktime(ended) - time.mktime(started) < 60
