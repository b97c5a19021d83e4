"""Packed training: K runs in one job (one Slurm job, one GPU), each its own ``python -m limit train`` process.

Why processes: a small network's training step is bound by Python and kernel launches, not by the device.
K processes keep the device K times as busy, while K models in one process take turns on one CPU thread
(``python -m limit bench --pack K`` measures both; docs/cluster.md has the figures). Each member runs exactly
its unpacked command, so it writes the same files, stops early on its own, resumes from its own
``state.pt``, and on CPU gives bit-identical numbers to the same run unpacked (same threads per run).
A member process dies with the pack (kill -9 included), so the next attempt resumes every member.
"""
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading

PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """Runs in the child before exec: the kernel sends it SIGKILL when the pack process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def thread_env(threads):
    """The environment of a process limited to ``threads`` CPU threads."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


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
    args = shlex.split(train_args)
    return args[args.index("--out") + 1] if "--out" in args else train_args


def run_pack(runs, threads):
    """Train every run (a string of ``python -m limit train`` arguments) at the same time; wait for all.

    Returns the names of the runs that failed (empty when all finished).
    """
    lock = threading.Lock()
    procs, relays = {}, []
    for train_args in runs:
        name = member_name(train_args)
        procs[name] = start_member([sys.executable, "-m", "limit", "train", *shlex.split(train_args)], threads)
        relays.append(threading.Thread(target=_relay, args=(procs[name], name, lock), daemon=True))
        relays[-1].start()
    for relay in relays:
        relay.join()
    return [name for name, proc in procs.items() if proc.wait() != 0]
