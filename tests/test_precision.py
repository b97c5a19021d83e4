"""bf16 autocast for the ResNets, deterministic kernels, and the checkpoint cadence setting."""
import copy
import os

import pytest
import torch
from torch import nn

from limit import methods
from limit.config import parse_checkpoint_every
from limit.models import BasicBlock, Classifier, GlobalAvgPool, build_model
from limit.runtime import configure, set_precision

STEPS = 8
# bf16 keeps 8 bits of mantissa: after STEPS Adam steps of a tiny ResNet the two runs' losses agree to within
# LOSS_TOLERANCE (absolute, in nats) and their logits to within LOGIT_TOLERANCE of the logits' scale.
LOSS_TOLERANCE = 0.01
LOGIT_TOLERANCE = 0.05


def tiny_resnet(num_classes=10):
    stem = [nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)]
    return Classifier(nn.Sequential(*stem, BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), GlobalAvgPool()),
                      nn.Linear(16, num_classes))


def train_steps(model, precision, x, y):
    model = set_precision(model, precision, torch.device("cpu"))
    conv_dtypes = []
    model.features[0].register_forward_hook(lambda m, a, out: conv_dtypes.append(out.dtype))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx = methods.Context(model)
    losses = []
    for _ in range(STEPS):
        loss, logits, _ = methods.ce_loss(ctx, x, y, {})
        assert logits.dtype == torch.float32 and loss.dtype == torch.float32
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        return torch.tensor(losses), model(x), conv_dtypes[0]


def test_bf16_tiny_resnet_agrees_with_fp32():
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    fp32 = tiny_resnet()
    bf16 = copy.deepcopy(fp32)
    losses32, logits32, dtype32 = train_steps(fp32, "fp32", x, y)
    losses16, logits16, dtype16 = train_steps(bf16, "bf16", x, y)
    assert dtype32 == torch.float32 and dtype16 == torch.bfloat16  # the convolutions did run in bf16
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay fp32
    assert losses16[-1] < losses16[0]  # it trains
    assert (losses16 - losses32).abs().max() < LOSS_TOLERANCE
    assert (logits16 - logits32).abs().max() < LOGIT_TOLERANCE * logits32.abs().max()
    assert not torch.equal(logits16, logits32)


@pytest.mark.parametrize("name", ["dmi", "fw", "limit_l"])
def test_losses_stay_float32_under_bf16(name):
    torch.manual_seed(0)
    device = torch.device("cpu")
    ctx = methods.Context(set_precision(tiny_resnet(), "bf16", device),
                          set_precision(tiny_resnet(), "bf16", device))
    ctx.extra["transition_matrix"] = torch.eye(10) * 0.9 + 0.01
    loss, logits, terms = methods.LOSSES[name](ctx, torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,)),
                                                         {"beta": 1.0})
    assert loss.dtype == logits.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    loss.backward()


def test_resnets_have_no_op_without_a_deterministic_cuda_backward():
    for arch in ("resnet34", "resnet50"):
        model = build_model(arch, 10, in_channels=3, image_size=32)
        assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules()), arch
    x = torch.randn(2, 3, 32, 32)
    pooled = GlobalAvgPool()(x)
    assert torch.allclose(pooled, nn.AdaptiveAvgPool2d(1)(x).flatten(1))


def test_deterministic_setting(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        configure(torch.device("cpu"), deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        configure(torch.device("cpu"), deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_fp32_is_float32_and_determinism_fills_no_memory(monkeypatch):
    """TF32 off for matrix products and convolutions; no fill kernel per allocation under determinism."""
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        configure(precision="fp32")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
        with pytest.raises(ValueError, match="precision"):
            configure(precision="fp16")
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def test_checkpoint_every_in_epochs_or_minutes():
    assert parse_checkpoint_every(3) == ("epochs", 3) and parse_checkpoint_every("3") == ("epochs", 3)
    assert parse_checkpoint_every("30min") == ("minutes", 30.0) and parse_checkpoint_every("1.5m") == ("minutes", 1.5)
    for bad in ("0", "ten", "5h", -1):
        with pytest.raises(ValueError, match="checkpoint_every"):
            parse_checkpoint_every(bad)
