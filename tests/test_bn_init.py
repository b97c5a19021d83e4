"""BatchNorm statistics when training starts: the authors' noise warm-up (bn_init: authors, the default) or
PyTorch's (0, 1, 0) (bn_init: standard); and Clothing1M's training augmentation wired through ``train()``."""
import pytest
import torch
from torch import nn

from limit import data as D
from limit import labels as L
from limit import models
from limit.config import resolve_config
from limit.datasets.clothing1m import _JpegDataset, clothing1m_labels, write_synthetic_release
from limit.models import Classifier, build_networks
from limit.train import train


def batchnorms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def networks(dataset, arch, method, bn_init, **hparams):
    cfg = resolve_config({"dataset": dataset, "arch": arch, "method": method, "bn_init": bn_init, "seed": 3,
                          "hparams": hparams})
    torch.manual_seed(cfg["seed"])  # as train() does before building
    return build_networks(cfg, D.dataset_info(dataset).num_classes)


# Passes of the authors' builder through each BatchNorm, in module order: before every layer spec (through the
# layers built so far) and once at the end; ResNets (their builder's known-net branch) once.
AUTHORS_COUNTS = [
    ("fashion_mnist", "cnn", "limit_l", {}, [7, 6, 5, 4], [7, 6, 5, 4, 2]),
    ("fashion_mnist", "mlp", "ce", {"dropout": 0.5}, [5, 4, 3, 2], None),
    ("fashion_mnist", "mlp", "limit_g", {}, [5, 4, 3, 2], [5, 4, 3, 2]),
    ("cifar10", "resnet34", "limit_l", {}, [1] * 36, [1] * 36),
    ("clothing1m", "resnet50", "ce", {}, [1] * 53, None),
]


@pytest.mark.parametrize("dataset,arch,method,hparams,classifier_counts,q_counts", AUTHORS_COUNTS)
def test_authors_warm_up_updates_every_batchnorm_as_their_builder(dataset, arch, method, hparams, classifier_counts,
                                                                   q_counts):
    classifier, q = networks(dataset, arch, method, "authors", **hparams)
    for model, counts in ((classifier, classifier_counts), (q, q_counts)):
        if counts is None:
            assert model is None
            continue
        layers = batchnorms(model)
        assert [int(bn.num_batches_tracked) for bn in layers] == counts
        for bn in layers:  # noise-driven statistics, not the defaults
            assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
            assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert model.training


@pytest.mark.parametrize("dataset,arch,method,hparams", [row[:4] for row in AUTHORS_COUNTS])
def test_standard_leaves_pytorch_statistics_and_warm_up_changes_nothing_else(dataset, arch, method, hparams):
    standard = networks(dataset, arch, method, "standard", **hparams)
    rng_after_standard = torch.get_rng_state()
    authors = networks(dataset, arch, method, "authors", **hparams)
    # The warm-up draws its noise from its own generator: the global RNG stream (dropout, sampling) is unchanged.
    assert torch.equal(torch.get_rng_state(), rng_after_standard)
    for plain, warmed in zip(standard, authors):
        if plain is None:
            continue
        for bn in batchnorms(plain):
            assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
            assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
            assert int(bn.num_batches_tracked) == 0
        for (name, a), (_, b) in zip(plain.named_parameters(), warmed.named_parameters()):
            assert torch.equal(a, b), name


def test_warm_up_is_a_function_of_the_seed():
    first, again = (networks("fashion_mnist", "cnn", "ce", "authors")[0] for _ in range(2))
    for a, b in zip(batchnorms(first), batchnorms(again)):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)


def test_clothing1m_training_crops_and_flips_through_train(tmp_path, monkeypatch):
    root = tmp_path / "clothing1m"
    write_synthetic_release(root)
    labels = tmp_path / "labels.npz"
    L.write_labels_file(labels, clothing1m_labels(root), {"dataset": "clothing1m", "noise": "real", "rate": None,
                                                          "n": "all", "seed": 1, "val_size": None})
    seeds = {"train": [], "other": []}
    getitem = _JpegDataset.__getitem__

    def spy(self, key):
        seeds["train" if "/train" in self.files[key[0]] else "other"].append(key[1])
        return getitem(self, key)

    monkeypatch.setattr(_JpegDataset, "__getitem__", spy)
    # A pooled linear model stands in for ResNet-50: this test is about the data path, not the network.
    monkeypatch.setattr(models, "build_model", lambda *a, **k: Classifier(
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(3, 14)))
    metrics = train({"dataset": "clothing1m", "data_dir": str(tmp_path), "labels": str(labels), "method": "ce",
                     "arch": "resnet50", "epochs": 1, "batch_size": 16, "num_workers": 0, "device": "cpu",
                     "clean_validation": True}, tmp_path / "run")
    assert metrics["epochs_run"] == 1
    # 28 training images, each with its own crop-and-flip seed; validation and test images are only resized.
    assert len(seeds["train"]) == 28 and min(seeds["train"]) >= 0 and len(set(seeds["train"])) == 28
    assert seeds["other"] and set(seeds["other"]) == {-1}
