"""Packed training (`python -m limit train-pack`, its members in processes or one after another in one process): a
pack equals its runs unpacked, bit for bit, and resumes after kill -9 of the pack, with every member's checkpoint
cadence honoured."""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import assert_same_outputs, outputs

from limit.pack import thread_env

pytestmark = pytest.mark.pipeline  # Snakemake or the command line in subprocesses

EPOCHS = 4


def member_args(fmnist_dir, labels, out, method, *extra):
    return ["--dataset", "fashion_mnist", "--data-dir", str(fmnist_dir), "--labels", str(labels),
            "--method", method, "--epochs", str(EPOCHS), "--batch-size", "64", "--seed", "5",
            "--test-curve-size", "200", "--no-tracking", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def pack_setup(fmnist_dir, make_labels, tmp_path_factory):
    """Four runs (LIMIT, DMI and FW from a CE run, and CE with Gaussian gradient noise), trained unpacked."""
    root = tmp_path_factory.mktemp("pack")
    labels = make_labels(rate=0.5, n=256, val_size=128)
    ce = root / "ce"
    subprocess.run([sys.executable, "-m", "limit", "train",
                    *member_args(fmnist_dir, labels, ce, "ce", "--epochs", "2")],
                   check=True, capture_output=True, env=thread_env(1))
    specs = {"limit_l": ["--beta", "1"], "dmi": ["--lr", "1e-4", "--init-from", str(ce)],
             "fw": ["--init-from", str(ce)], "ce_gn": ["--sigma", "0.01"]}

    def runs(parent, *extra):
        return {m: member_args(fmnist_dir, labels, parent / m, m, *args, *extra) for m, args in specs.items()}
    for args in runs(root / "unpacked").values():
        subprocess.run([sys.executable, "-m", "limit", "train", *args], check=True, capture_output=True,
                       env=thread_env(1))
    return root, runs


def train_pack(runs, *options):
    return [sys.executable, "-m", "limit", "train-pack", "--threads", "1", *options,
            *[shlex.join(args) for args in runs.values()]]


def test_a_pack_equals_its_runs_unpacked(pack_setup):
    root, runs = pack_setup
    packed = runs(root / "packed")
    result = subprocess.run(train_pack(packed), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 packed runs finished" in result.stdout
    for method in packed:
        assert f"[{root / 'packed' / method}] " in result.stdout  # each member's lines, named
        files = sorted(p.name for p in (root / "packed" / method).iterdir())
        assert files == sorted(p.name for p in (root / "unpacked" / method).iterdir())
        assert_same_outputs(outputs(root / "unpacked" / method), outputs(root / "packed" / method))


def _member_processes(parent):
    """PIDs of processes whose command line names a run directory under ``parent``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "train\0" in cmdline and str(parent) + "/" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_pack_killed_mid_epoch_resumes_every_member_identically(pack_setup):
    """kill -9 of the pack process kills every member; the same command resumes each from its last checkpoint.
    Members write state.pt every 2 epochs here (the unpacked runs every epoch): cadence changes no number."""
    root, runs = pack_setup
    killed = runs(root / "killed", "--checkpoint-every", "2")
    proc = subprocess.Popen(train_pack(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = {m: root / "killed" / m / "state.pt" for m in killed}
    deadline = time.time() + 1200
    while time.time() < deadline and not any(s.exists() for s in states.values()):
        time.sleep(0.05)
    assert any(s.exists() for s in states.values()), "no member reached its first checkpoint in 20 minutes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    assert _member_processes(root / "killed") == [], "members outlived the pack"
    assert not any((root / "killed" / m / "metrics.json").exists() for m in killed)
    resumed = [m for m, s in states.items() if s.exists()]
    assert all(len(torch.load(states[m], weights_only=True)["history"]) == 2 for m in resumed)

    result = subprocess.run(train_pack(killed), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    for method in resumed:  # continued from the checkpoint, not restarted
        name = root / "killed" / method
        assert f"[{name}] {method} epoch 2:" in result.stdout
        assert f"[{name}] {method} epoch 0:" not in result.stdout
    for method in killed:
        assert_same_outputs(outputs(root / "unpacked" / method), outputs(root / "killed" / method))


def test_an_in_process_pack_equals_its_runs_unpacked(pack_setup):
    """One after another in one process, each member seeds, configures torch and writes its files as its own
    `limit train` process: the same files, the same numbers (LIMIT's second network, FW and DMI from a CE
    run, gradient noise from torch's global generator)."""
    root, runs = pack_setup
    packed = runs(root / "in_process")
    result = subprocess.run(train_pack(packed, "--in-process"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 packed runs finished" in result.stdout
    for i, method in enumerate(packed, 1):
        assert f"[{root / 'in_process' / method}] run {i} of 4\n{method} epoch 0:" in result.stdout
        files = sorted(p.name for p in (root / "in_process" / method).iterdir())
        assert files == sorted(p.name for p in (root / "unpacked" / method).iterdir())
        assert_same_outputs(outputs(root / "unpacked" / method), outputs(root / "in_process" / method))


def test_an_in_process_pack_killed_mid_run_resumes_every_member_identically(pack_setup):
    """kill -9 while the second member trains: the same command leaves the finished first member as it is,
    resumes the second from its checkpoint and trains the others."""
    root, runs = pack_setup
    killed = runs(root / "in_process_killed")
    first, second = list(killed)[:2]
    state = root / "in_process_killed" / second / "state.pt"
    proc = subprocess.Popen(train_pack(killed, "--in-process"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1200
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the second member reached no checkpoint in 20 minutes"
    assert (root / "in_process_killed" / first / "metrics.json").exists()
    assert not (root / "in_process_killed" / second / "metrics.json").exists()
    done = len(torch.load(state, weights_only=True)["history"])

    result = subprocess.run(train_pack(killed, "--in-process"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{first} epoch" not in result.stdout  # finished: nothing trained again
    assert f"{second} epoch {done}:" in result.stdout and f"{second} epoch 0:" not in result.stdout
    for method in killed:
        assert_same_outputs(outputs(root / "unpacked" / method), outputs(root / "in_process_killed" / method))


def test_a_failed_member_of_an_in_process_pack_leaves_the_others_training(pack_setup, tmp_path):
    root, runs = pack_setup
    members = runs(tmp_path)
    members["limit_l"][members["limit_l"].index("--labels") + 1] = str(tmp_path / "missing.npz")
    members = {m: members[m] for m in ("limit_l", "ce_gn")}
    result = subprocess.run(train_pack(members, "--in-process"), capture_output=True, text=True)
    assert result.returncode == 2
    assert f"[{tmp_path / 'limit_l'}] error: " in result.stdout and "Traceback" not in result.stdout
    assert result.stderr == f"error: 1 of 2 packed runs failed: {tmp_path / 'limit_l'}\n"
    assert_same_outputs(outputs(root / "unpacked" / "ce_gn"), outputs(tmp_path / "ce_gn"))


def test_bad_member_arguments_stop_the_pack_before_any_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "limit", "train-pack", "--dataset mnist --out x",
                             f"--bogus --out {tmp_path / 'y'}"], capture_output=True, text=True)
    assert result.returncode == 2 and "error:" in result.stderr
    assert not (tmp_path / "y").exists()


def _gpu_stand_ins(bin_dir, mode, mps_calls=None):
    """nvidia-smi reporting ``mode`` and, with ``mps_calls``, an nvidia-cuda-mps-control that records its calls
    (arguments, stdin, pipe directory) there."""
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir / 'nvidia-smi-calls.txt'}\necho {mode}\n")
    if mps_calls is not None:
        (bin_dir / "nvidia-cuda-mps-control").write_text(
            f'#!/bin/sh\nif [ "$1" = -d ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> {mps_calls}; '
            f'else read line; echo "$line $CUDA_MPS_PIPE_DIRECTORY" >> {mps_calls}; fi\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(bin_dir.parent)}


def test_an_exclusive_process_gpu_without_mps_stops_the_pack_at_once(tmp_path):
    env = _gpu_stand_ins(tmp_path / "bin", "Exclusive_Process")
    member = f"--dataset mnist --labels x.npz --method ce --device cuda --out {tmp_path / 'run'}"
    done = subprocess.run([sys.executable, "-m", "limit", "train-pack", member, member], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "training.mnist.pack: 1" in done.stderr
    assert done.stdout == "" and not (tmp_path / "run").exists()  # no member started


def test_an_exclusive_process_gpu_gets_a_private_mps_daemon_stopped_at_the_end(tmp_path):
    calls = tmp_path / "mps-calls.txt"
    env = _gpu_stand_ins(tmp_path / "bin", "Exclusive_Process", calls)
    # the members stop at once here (no GPU on a test machine); the daemon is stopped all the same
    member = f"--dataset mnist --labels x.npz --method ce --device cuda --no-tracking --out {tmp_path / 'run'}"
    done = subprocess.run([sys.executable, "-m", "limit", "train-pack", member], env=env,
                          capture_output=True, text=True, timeout=300)
    assert "private MPS daemon" in done.stdout, done.stdout + done.stderr
    start, stop = calls.read_text().splitlines()
    pipe = start.split()[1]
    assert start == f"start {pipe}" and stop == f"quit {pipe}" and pipe.startswith(str(tmp_path / "limit-mps-"))
    assert not Path(pipe).exists()  # the job-private directories are removed


def test_default_compute_mode_needs_no_mps(tmp_path):
    calls = tmp_path / "mps-calls.txt"
    env = _gpu_stand_ins(tmp_path / "bin", "Default", calls)
    member = f"--dataset mnist --labels x.npz --method ce --device cuda --no-tracking --out {tmp_path / 'run'}"
    done = subprocess.run([sys.executable, "-m", "limit", "train-pack", member], env=env, capture_output=True,
                          text=True, timeout=300)
    # the pack asked for the compute mode, started its member (which stops: no GPU here), and no MPS daemon
    assert (tmp_path / "bin" / "nvidia-smi-calls.txt").read_text() == "--query-gpu=compute_mode --format=csv,noheader\n"
    assert f"[{tmp_path / 'run'}] error: --device cuda" in done.stdout, done.stdout + done.stderr
    assert "MPS" not in done.stdout and not calls.exists()
