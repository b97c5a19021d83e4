"""A GPU job never trains on the CPU: ``--device cuda`` (and ``auto`` in a Slurm job holding a GPU) without a
working GPU is one ``error:`` line, exit status 2, before any file of the run is written."""
import subprocess
import sys

import pytest
import torch

from limit.runtime import DeviceError, pick_device, slurm_gpu_allocation

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")


def test_slurm_gpu_allocation_from_the_job_environment():
    assert slurm_gpu_allocation({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0"}) == "SLURM_JOB_GPUS=0"
    assert slurm_gpu_allocation({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "1"}) == "CUDA_VISIBLE_DEVICES=1"
    assert slurm_gpu_allocation({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "0"}) is None  # a count: none
    assert slurm_gpu_allocation({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "NoDevFiles"}) is None
    assert slurm_gpu_allocation({"CUDA_VISIBLE_DEVICES": "0"}) is None  # not a Slurm job


@no_gpu
def test_cuda_without_a_gpu_is_refused_with_what_torch_reports():
    with pytest.raises(DeviceError, match=r"^--device cuda: torch .* (finds no usable GPU|CPU-only)"):
        pick_device("cuda")
    with pytest.raises(DeviceError, match=r"^--device cuda: this Slurm job holds a GPU \(SLURM_JOB_GPUS=0\) but torch"):
        pick_device("auto", {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0"})
    assert pick_device("auto", {"SLURM_JOB_ID": "7"}) == torch.device("cpu")  # a CPU job: the CPU
    with pytest.raises(DeviceError, match="--device gpu0"):
        pick_device("gpu0")


@no_gpu
@pytest.mark.parametrize("device,env", [("cuda", {}), ("auto", {"SLURM_JOB_ID": "7", "SLURM_STEP_GPUS": "0"})])
def test_train_stops_at_once_with_one_error_line(fmnist_dir, make_labels, tmp_path, monkeypatch, device, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "limit", "train", "--dataset", "fashion_mnist", "--data-dir",
                           str(fmnist_dir), "--labels", str(make_labels(rate=0.5)), "--method", "ce",
                           "--device", device, "--no-tracking", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "GPU" in lines[0], done.stderr
    assert not out.exists()  # nothing of the run was written


def test_job_json_keeps_every_attempt_and_names_a_change_of_device_model(tmp_path):
    import json

    from limit.runtime import record_attempt
    (tmp_path / "job.json").write_text(json.dumps({"device": "cuda", "device_name": "NVIDIA A100-SXM4-80GB",
                                                   "slurm_job_id": "41"}))  # a previous version's job.json
    with pytest.warns(RuntimeWarning, match="attempt 2 runs on .*attempt 1 ran on NVIDIA A100"):
        record_attempt(tmp_path, torch.device("cpu"))
    job = json.loads((tmp_path / "job.json").read_text())
    assert [a.get("slurm_job_id") for a in job["attempts"]] == ["41", None] and job["device"] == "cpu"
    assert job["device_change"] == f"NVIDIA A100-SXM4-80GB -> {job['device_name']}"
    assert {"host", "driver", "cuda", "torch_version", "started"} <= set(job["attempts"][1])
