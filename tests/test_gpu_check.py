"""scripts/gpu-check on a machine without a GPU: --help answers, a reused work directory is refused (a reused one
would resume finished runs and pass without training), and ``--device cpu`` runs it end to end on stand-in data."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from standin_data import standin_env, write_cifar, write_mnist_idx

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check"


def gpu_check(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.pipeline  # the script, in a subprocess
def test_help_works_without_a_gpu():
    done = gpu_check("--help")
    assert done.returncode == 0 and "--work" in done.stdout and "never downloads" in done.stdout


@pytest.mark.pipeline  # the script, in a subprocess
def test_a_reused_work_directory_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "mnist").mkdir()  # what an earlier run leaves
    done = gpu_check("--work", str(tmp_path), "--device", "cpu")
    assert done.returncode == 2 and done.stderr.startswith("error: --work ") and "resume" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]  # nothing written


@pytest.mark.pipeline  # the script, in a subprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script would run every check")
def test_a_new_work_directory_is_taken(tmp_path):
    """A new --work passes the rule; the script then stops at the missing GPU (exit 2) with the directory made."""
    done = gpu_check("--work", str(tmp_path / "new"), "--device", "cuda")
    assert done.returncode == 2 and "no CUDA device" in done.stderr
    assert (tmp_path / "new").is_dir() and not any((tmp_path / "new").iterdir())


@pytest.mark.pipeline
def test_the_self_check_runs_end_to_end_on_a_cpu(tmp_path):
    """``--device cpu`` with stand-in MNIST and CIFAR-10 in their real layouts: every check that does not need
    CUDA passes (ResNet-50 on the synthetic Clothing1M release with its truncated images included), the two that
    do are skipped with their reason, and the exit status says pass."""
    data = tmp_path / "data"
    write_mnist_idx(data, 600, 200)  # validation: 100 of the 120 the split leaves
    write_cifar(data, "cifar10", 600, 200)
    json_path = tmp_path / "summary.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--data-dir", str(data), "--work",
                           str(tmp_path / "work"), "--json", str(json_path)], capture_output=True, text=True,
                          timeout=1200, env=standin_env(data))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = {row["check"]: row for row in json.loads(json_path.read_text())["checks"]}
    for title in ("bf16 vs fp32 parity", "GPU JPEG decoding vs PIL"):
        assert rows.pop(title)["detail"].startswith("skipped: needs CUDA")
    assert {row["result"] for row in rows.values()} == {"PASS"} and len(rows) == 7
    assert "3 unreadable images counted" in rows["ResNet-50, Clothing1M streamed"]["detail"]
    assert "| GPU JPEG decoding vs PIL | SKIP |" in done.stdout
