"""Packed training: K runs in one job (one Slurm job, one GPU), each its own ``python -m limit train`` process,
or, with ``--in-process`` (``training.<dataset>.pack_in_process``), one after another in the pack's own process.

Why processes: a small network's training step is bound by Python and kernel launches, not by the device.
K processes keep the device K times as busy, while K models in one process take turns on one CPU thread
(``python -m limit bench --pack K`` measures both; docs/cluster.md has the figures). Each member runs exactly
its unpacked command, so it writes the same files, stops early on its own, resumes from its own
``state.pt``, and on CPU gives bit-identical numbers to the same run unpacked (same threads per run).
A member process dies with the pack (kill -9 included), so the next attempt resumes every member.

In one process (a CPU's way to pack): each member is ``run_train`` of its own parsed arguments, so it seeds, configures
torch and writes its files exactly as its own ``limit train`` would, and a pack started again resumes every member
(finished ones return their metrics at once). What the members save is each one's start: Python, torch and its
compiler's imports (docs/default-pipeline-time.md).

A GPU in EXCLUSIVE_PROCESS compute mode takes one CUDA context: the pack then starts a job-private MPS daemon
(its pipe and log directories in the job's temporary directory), whose one context the members share, and
stops it at the end; without ``nvidia-cuda-mps-control`` it stops at once (docs/cluster.md, GPU compute modes).
"""
import argparse
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

from limit.config import TrainingError, add_train_arguments
from limit.runs.rundir import write_json
from limit.tracking.uri import check_no_password, redact

PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """Runs in the child before exec: the kernel sends it SIGKILL when the pack process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# What bounds a training process's CPU threads (torch reads them when first imported); the train rule sets the same
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def thread_env(threads):
    """The environment of a process limited to ``threads`` CPU threads."""
    return {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}


def start_member(argv, threads, stdin=subprocess.DEVNULL):
    """Start one member process; its stdout and stderr come back as lines on ``proc.stdout``."""
    return subprocess.Popen(argv, env=thread_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=stdin, text=True, bufsize=1, preexec_fn=_die_with_parent)


def _relay(proc, name, lock):
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()


def member_name(train_args):
    """The run directory of a member (its ``--out``), which names its lines in the pack's log."""
    return _option(train_args, "--out", train_args)


def compute_modes():
    """The compute modes of the GPUs this job sees (nvidia-smi), [] where nvidia-smi is missing or fails."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=compute_mode", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def _option(train_args, name, default=None):
    args = shlex.split(train_args)
    return args[args.index(name) + 1] if name in args[:-1] else default


@contextlib.contextmanager
def shared_gpu(runs):
    """Let the members share their GPU for the duration of the block: nothing to do unless they train on CUDA on
    a GPU in EXCLUSIVE_PROCESS mode; then a job-private MPS daemon, stopped at the end."""
    on_cuda = any(_option(r, "--device", "auto").startswith("cuda") for r in runs)
    if not (on_cuda and any(mode.lower() == "exclusive_process" for mode in compute_modes())):
        yield
        return
    if shutil.which("nvidia-cuda-mps-control") is None:
        dataset = _option(runs[0], "--dataset", "its dataset")
        raise TrainingError(f"the GPU is in EXCLUSIVE_PROCESS compute mode (one process at a time) and "
                            f"nvidia-cuda-mps-control is not available: set training.{dataset}.pack: 1, or run "
                            f"on GPUs in the default mode or with MPS (docs/cluster.md)")
    root = Path(tempfile.mkdtemp(prefix="limit-mps-", dir=os.environ.get("TMPDIR")))
    mps = {"CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
    for path in mps.values():
        os.makedirs(path)
    os.environ.update(mps)  # the members inherit it and connect to this daemon, not to a system-wide one
    subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True, timeout=60)
    print(f"GPU in EXCLUSIVE_PROCESS mode: started a private MPS daemon ({root})", flush=True)
    try:
        yield
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, timeout=120)
        for name in mps:
            os.environ.pop(name)
        shutil.rmtree(root, ignore_errors=True)


def run_pack(runs, threads):
    """Train every run (a string of ``python -m limit train`` arguments) at the same time; wait for all.

    Returns the names of the runs that failed (empty when all finished).
    """
    lock = threading.Lock()
    procs, relays = {}, []
    with shared_gpu(runs):
        for train_args in runs:
            name = member_name(train_args)
            procs[name] = start_member([sys.executable, "-m", "limit", "train", *shlex.split(train_args)], threads)
            relays.append(threading.Thread(target=_relay, args=(procs[name], name, lock), daemon=True))
            relays[-1].start()
        for relay in relays:
            relay.join()
        return [name for name, proc in procs.items() if proc.wait() != 0]


def run_in_process(runs, threads):
    """Train every run (a string of ``limit train`` arguments) one after another in this process, with ``threads``
    CPU threads as a member process would have. Returns the names of the runs that failed."""
    os.environ.update(thread_env(threads))  # read by torch when first imported, as in a member process
    import torch  # here: the process-per-member path never imports torch

    from limit.train import run_train
    torch.set_num_threads(threads)  # in case torch was imported before
    parser = _MemberParser(prog="limit train", add_help=False)
    add_train_arguments(parser)
    failed = []
    for i, train_args in enumerate(runs, 1):
        name = member_name(train_args)
        print(f"[{name}] run {i} of {len(runs)}", flush=True)
        try:
            with warnings.catch_warnings():  # each member shows its warnings, as in a process of its own
                warnings.simplefilter("default", RuntimeWarning)
                args = parser.parse_args(shlex.split(train_args))
                check_no_password(args.tracking_uri, "--tracking-uri")
                run_train(args)
        except (ValueError, TrainingError, FileNotFoundError) as exc:  # as `limit train` stops on them
            print(redact(f"[{name}] error: {exc}"), flush=True)
            failed.append(name)
        except Exception:  # a bug in one member: its traceback, and the next member trains
            traceback.print_exc(file=sys.stdout)
            failed.append(name)
        sys.stdout.flush()
    return failed


class _MemberParser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(f"{self.prog}: {message}")


def add_train_pack_arguments(parser):
    parser.description = ("Train several runs at the same time, each in its own `train` process, or one after "
                          "another in this process (--in-process); started again with the same command, every "
                          "member resumes.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="the arguments of one `limit train`, quoted")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each run")
    parser.add_argument("--in-process", action="store_true",
                        help="train the runs one after another in this process (a CPU: saves each run's start)")
    parser.add_argument("--out", help="JSON file listing the run directories, written once every run has finished")


def run_train_pack(args):
    """Train several runs in one job; each RUN is the argument string of `train`."""
    parser = _MemberParser(prog="limit train", add_help=False)
    add_train_arguments(parser)
    for i, run in enumerate(args.runs, 1):  # bad arguments stop the pack before any member starts
        try:
            parser.parse_args(shlex.split(run))
        except ValueError as exc:
            raise ValueError(f"RUN {i} of {len(args.runs)}: {exc}") from None
    failed = (run_in_process if args.in_process else run_pack)(args.runs, args.threads)
    if failed:
        raise TrainingError(f"{len(failed)} of {len(args.runs)} packed runs failed: {', '.join(failed)}")
    if args.out:
        write_json(args.out, {"run_dirs": [member_name(run) for run in args.runs]})
    print(f"{len(args.runs)} packed runs finished")
