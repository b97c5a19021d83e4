"""How a run uses its device: deterministic kernels and the networks' numeric precision.

Determinism: ``torch.use_deterministic_algorithms(True)`` makes every op pick a deterministic kernel or
raise. The paper's networks use one op without a deterministic CUDA backward, adaptive average pooling
(the ResNets' global pool); ``limit.models`` replaces it by a mean over the spatial dimensions. cuBLAS
needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use for deterministic matrix products.

Precision: ``bf16`` runs each network's forward (and so its backward) under bfloat16 autocast with
channels_last memory, and hands float32 outputs to the methods: losses, DMI's determinant, FW's ``@ T``
and LIMIT's gradient arithmetic stay in float32. Parameters and Adam's state stay float32.
"""
import os

import torch

from limit.registry import PRECISIONS


def configure(device, deterministic):
    """Process-wide settings of a run on ``device``; call before the first CUDA op."""
    torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def set_precision(model, precision, device):
    """Run ``model``'s forward in ``precision`` ("fp32": unchanged; "bf16": autocast + channels_last).

    Hooks, not a wrapper module: parameter names (checkpoints) stay the same and ``copy.deepcopy`` works.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "fp32":
        return model
    autocasts = []

    def enter(module, args):
        autocasts.append(torch.autocast(device.type, dtype=torch.bfloat16))
        autocasts[-1].__enter__()
        x = args[0]
        return (x.contiguous(memory_format=torch.channels_last),) if x.ndim == 4 else None

    def leave(module, args, output):
        autocasts.pop().__exit__(None, None, None)
        return output.float()

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave)
    return model.to(memory_format=torch.channels_last)
