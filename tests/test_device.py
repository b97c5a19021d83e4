"""A GPU job never trains on the CPU: ``--device cuda`` (and ``auto`` in a Slurm job holding a GPU) without a
working GPU is one ``error:`` line, exit status 2, before any file of the run is written."""

import pytest
import torch

from limit.cli import main
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
def test_train_stops_at_once_with_one_error_line(fmnist_dir, make_labels, tmp_path, monkeypatch, capsys, device,
                                                 env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    labels = make_labels(rate=0.5)
    capsys.readouterr()
    assert main(["train", "--dataset", "fashion_mnist", "--data-dir", str(fmnist_dir), "--labels", str(labels),
                 "--method", "ce", "--device", device, "--no-tracking", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "GPU" in lines[0], err
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


# The pinned wheel's torch.cuda.get_arch_list() (torch 2.14.1+cu130, docs/cluster.md section 1).
PINNED_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
# GPU -> whether the pinned wheel runs on it: CUDA code runs on its own major version at an equal or higher minor.
PINNED_TABLE = [("sm_70", False), ("sm_75", True), ("sm_80", True), ("sm_86", True), ("sm_89", True),
                ("sm_90", True), ("sm_100", True), ("sm_103", True), ("sm_120", True)]


def fake_gpu(monkeypatch, capability, archs, name="NVIDIA Test GPU"):
    """torch as on a machine with one GPU of ``capability`` and a wheel built for ``archs``; its first kernel
    runs on the real device (none here: torch then reports no driver)."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))


def arch_refusal(monkeypatch, capability, archs):
    """The arch refusal pick_device("cuda") gives, or None when the GPU passes the arch check (what follows,
    the first kernel, fails here: no GPU)."""
    fake_gpu(monkeypatch, capability, archs)
    try:
        pick_device("cuda")
    except DeviceError as exc:
        return None if "a first kernel" in str(exc) else str(exc)
    return None


@pytest.mark.parametrize("gpu,runs", PINNED_TABLE)
def test_the_pinned_wheel_runs_on_every_gpu_of_a_major_it_has_code_for(monkeypatch, gpu, runs):
    number = int(gpu[3:])
    refusal = arch_refusal(monkeypatch, (number // 10, number % 10), PINNED_ARCHS)
    assert (refusal is None) == runs, refusal


@pytest.mark.parametrize("archs,capability,runs", [
    (["sm_90a"], (9, 0), True),  # arch-specific code (source and vendor builds)
    (["sm_90a"], (8, 9), False),
    (["sm_100f", "sm_120"], (10, 3), True),  # family code
    (["compute_80"], (9, 0), True),  # PTX: compiled on the fly for any newer GPU
    (["compute_90"], (8, 6), False),
    (["sm_", "foo", "sm_x0", "compute_", ""], (9, 0), False),  # malformed entries run nothing
    (["sm_", "foo", *PINNED_ARCHS], (8, 9), True),
])
def test_arch_entries_with_suffixes_ptx_or_malformed_never_raise(monkeypatch, archs, capability, runs):
    refusal = arch_refusal(monkeypatch, capability, archs)
    assert (refusal is None) == runs, refusal


def test_the_arch_check_agrees_with_torchs_own_rule():
    """torch.cuda warns at its first use when no code of the wheel runs on a GPU (``_check_capability``); its
    rule is private, so runtime repeats it: for CUDA binaries (sm_XY) the two agree on every GPU of the table."""
    from limit.runtime import code_runs_on
    torch_rule = getattr(torch.cuda, "_code_compatible_with_device", None)
    if torch_rule is None:
        pytest.skip(f"torch {torch.__version__} has no torch.cuda._code_compatible_with_device")
    for gpu, _ in PINNED_TABLE:
        device_cc = int(gpu[3:])
        for entry in [*PINNED_ARCHS, "sm_70", "sm_89", "sm_103"]:
            assert code_runs_on(entry, device_cc) == torch_rule(device_cc, int(entry[3:])), (entry, gpu)


def test_a_refused_gpu_is_told_what_to_install(monkeypatch):
    refusal = arch_refusal(monkeypatch, (7, 0), PINNED_ARCHS)
    assert refusal.startswith("--device cuda: NVIDIA Test GPU is sm_70 (compute capability 7.0)")
    assert "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120" in refusal
    assert "sm_70" in refusal.split("install")[1] and "docs/cluster.md" in refusal
