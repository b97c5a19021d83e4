"""scripts/gpu-check on a machine without a GPU: --help answers, and a reused work directory is refused (a
reused one would resume finished runs and pass without training)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check"


def gpu_check(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_help_works_without_a_gpu():
    done = gpu_check("--help")
    assert done.returncode == 0 and "--work" in done.stdout and "never downloads" in done.stdout


def test_a_reused_work_directory_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "mnist").mkdir()  # what an earlier run leaves
    done = gpu_check("--work", str(tmp_path), "--device", "cpu")
    assert done.returncode == 2 and done.stderr.startswith("error: --work ") and "resume" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script would run every check")
def test_a_new_work_directory_is_taken(tmp_path):
    """A new --work passes the rule; the script then stops at the missing GPU (exit 2) with the directory made."""
    done = gpu_check("--work", str(tmp_path / "new"), "--device", "cuda")
    assert done.returncode == 2 and "no CUDA device" in done.stderr
    assert (tmp_path / "new").is_dir() and not any((tmp_path / "new").iterdir())
