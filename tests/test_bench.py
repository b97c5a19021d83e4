"""``limit bench``: images/s of the package's training loop, timed under the runs' own settings
(``runtime.configure``), and ``--pack``, whose processes start inside ``pack.shared_gpu`` as train-pack's."""
import argparse
import re
import subprocess
import sys

import pytest
import torch
from test_pack import _gpu_stand_ins

from limit.tools import bench

TINY = ["--steps", "2", "--batch-size", "16", "--device", "cpu"]


def bench_args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    return parser.parse_args([*TINY, *argv])


def test_bench_times_every_loop_under_the_runs_settings(monkeypatch, capsys):
    configured = []
    monkeypatch.setattr(bench, "configure", lambda *args: configured.append(args))
    bench.run_bench(bench_args())
    out = capsys.readouterr().out
    rates = dict(re.findall(r"^(\S.*?)\s+([\d.]+) images/s$", out, re.M))
    assert set(rates) == {"bare loop, CE", "package, CE", "bare loop, LIMIT", "package, LIMIT",
                          "per-item DataLoader, CE", "per-item DataLoader, two networks"}, out
    assert all(float(rate) > 0 for rate in rates.values())
    assert configured == [(torch.device("cpu"), True, "fp32")]  # train's defaults: deterministic, IEEE fp32


@pytest.mark.pipeline
def test_the_bench_pack_command_runs():
    """(The plain command runs in scripts/gpu-check's test.)"""
    done = subprocess.run([sys.executable, "-m", "limit", "bench", *TINY, "--pack", "2", "--separate", "1",
                           "--no-deterministic"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "fp32, deterministic False" in done.stdout.splitlines()[0]
    rates = dict(re.findall(r"^(\S.*?)\s+([\d.]+) images/s$", done.stdout, re.M))
    assert list(rates) == ["1 separate runs, one after another", "2 runs packed (train-pack: 2 processes)",
                           "2 models taking turns in one process"] and all(float(r) > 0 for r in rates.values())
    assert re.search(r"^packed / separate: [\d.]+x$", done.stdout, re.M), done.stdout


@pytest.mark.pipeline
def test_bench_pack_starts_its_processes_inside_shared_gpu(tmp_path):
    """On an EXCLUSIVE_PROCESS GPU the pack's processes share a private MPS daemon, started before them and
    stopped after them, as train-pack's (here they then find no GPU: one error line)."""
    calls = tmp_path / "mps-calls.txt"
    env = _gpu_stand_ins(tmp_path / "bin", "Exclusive_Process", calls)
    done = subprocess.run([sys.executable, "-m", "limit", "bench", "--pack", "2", "--separate", "1", "--no-turns",
                           "--steps", "2", "--device", "cuda"], env=env, capture_output=True, text=True, timeout=300)
    assert "private MPS daemon" in done.stdout, done.stdout + done.stderr
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["start", "quit"]
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, \
        done.stderr
