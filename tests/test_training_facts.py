"""Facts of training that every number of the report rests on, each checked so that a change to it fails."""
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_workflow import load_config, snakemake

from limit import data as D
from limit import train as T
from limit.config import resolve_config
from limit.methods import Context, limit_train_scores
from limit.models import build_model, make_optimizer
from limit.pack import THREAD_VARIABLES
from limit.registry import METHODS, get_method

REPO = Path(__file__).resolve().parents[1]


class Split:
    """A split of fixed inputs, in the interface of limit.data.InMemorySplit."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def batches(self, batch_size, generator=None, shuffle=False, augment=False):
        for start in range(0, len(self.x), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(self.x)))
            yield idx, self.x[idx]


class Identity(torch.nn.Module):
    """Its inputs are its logits."""

    def forward(self, x):
        return x


def test_validation_accuracy_is_the_unweighted_mean_of_per_batch_accuracies():
    # five examples in batches of four and one: right, right, right, wrong | wrong
    logits = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2)
    labels = torch.zeros(5, dtype=torch.long)
    assert T.validation_accuracy(Identity(), Split(logits), labels, 4) == pytest.approx((3 / 4 + 0 / 1) / 2)
    assert T.test_accuracy(Identity(), Split(logits), labels, 4)[0] == pytest.approx(3 / 5)  # per example


def test_weight_decay_applies_to_weight_matrices_only():
    model = build_model("cnn", 10, 1, 28)
    optimizer = make_optimizer([model], {"lr": 1e-3, "weight_decay": 0.01})
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0.01 for p in group["params"]}
    named = dict(model.named_parameters())
    matrices = {n for n, p in named.items() if n.endswith("weight") and p.ndim >= 2}
    assert len(matrices) == 6  # four convolutions, two linear layers
    assert {n for n, p in named.items() if id(p) in decayed} == matrices  # no bias, no BatchNorm scale


def test_the_limit_score_is_the_distance_of_the_given_label_to_q():
    # logits chosen by hand: the classifier's and q's predictions of three examples, three classes
    classifier_logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    q_logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.5, 0.5, 0.0]])
    given = torch.tensor([0, 1, 2])

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, idx_as_x):
            return self.logits[idx_as_x]

    run_data = SimpleNamespace(train=Split(torch.arange(3)), train_noisy=given, num_classes=3,
                               is_corrupted=torch.tensor([False, True, True]), train_true=torch.tensor([0, 2, 0]),
                               train_idx=np.arange(3))
    scores = limit_train_scores(Context(Fixed(classifier_logits), Fixed(q_logits)), run_data, batch_size=2)
    softmax = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)
    q, f = softmax(q_logits.numpy()), softmax(classifier_logits.numpy())
    onehot = np.eye(3)[given.numpy()]
    assert scores["grad_distance"] == pytest.approx(np.linalg.norm(onehot - q, axis=1), rel=1e-6)  # ‖μ − g_CE‖
    assert scores["mu_norm"] == pytest.approx(np.linalg.norm(f - q, axis=1), rel=1e-6)  # ‖μ‖
    # the mislabeled examples (1 and 2) are those q disagrees with: they score highest
    assert set(np.argsort(-scores["grad_distance"])[:2]) == {1, 2}


def test_the_test_accuracy_is_that_of_the_best_validation_epoch(fmnist_dir, make_labels, tmp_path, monkeypatch):
    # validation accuracy scripted to peak at epoch 1 of 4: the run ends with other weights than it reports on
    scripted = iter([0.2, 0.9, 0.5, 0.4])
    monkeypatch.setattr(T, "validation_accuracy", lambda *args: next(scripted))
    cfg = {"dataset": "fashion_mnist", "data_dir": str(fmnist_dir), "labels": str(make_labels(n=256, val_size=256)),
           "method": "ce", "epochs": 4, "patience": 100, "batch_size": 128, "seed": 5, "keep_state": True}
    metrics = T.train(cfg, tmp_path / "run")
    assert metrics["best_epoch"] == 1 and metrics["best_val_acc"] == 0.9
    best = torch.load(tmp_path / "run/best.pt", weights_only=True)
    last = torch.load(tmp_path / "run/state.pt", weights_only=True)["models"]["classifier"]
    assert best["epoch"] == 1
    run_data = D.load_run_data(resolve_config(cfg), torch.device("cpu"))
    accuracy = {}
    for name, weights in (("best", best["classifier"]), ("last", last)):
        model = build_model("cnn", 10, 1, 28)
        model.load_state_dict(weights)
        accuracy[name] = T.test_accuracy(model, run_data.test, run_data.test_labels, 512)[0]
    assert metrics["test_acc"] == accuracy["best"] != accuracy["last"]


@pytest.fixture(scope="module")
def ce_run(fmnist_dir, make_labels, tmp_path_factory):
    """A one-epoch CE run: where FW, DMI and the +init variants start from."""
    out = tmp_path_factory.mktemp("ce") / "run"
    T.train(tiny_config(fmnist_dir, make_labels(n=256, val_size=256), "ce"), out)
    return out


def tiny_config(fmnist_dir, labels, method, **extra):
    hparams = {name: 1.0 for name in get_method(method).hparams}  # beta 1, lamb 1 (a sampling precision), sigma 1
    return {"dataset": "fashion_mnist", "data_dir": str(fmnist_dir), "labels": str(labels), "method": method,
            "hparams": hparams, "epochs": 1, "patience": 1, "batch_size": 128, "seed": 3,
            "test_curve": False, **extra}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_end_to_end(method, ce_run, fmnist_dir, make_labels, tmp_path):
    init = {"init_from": str(ce_run)} if get_method(method).init_from_ce else {}
    metrics = T.train(tiny_config(fmnist_dir, make_labels(n=256, val_size=256), method, **init), tmp_path / "run")
    history = pd.read_csv(tmp_path / "run/history.csv")
    assert len(history) == 1 and np.isfinite(history["train_loss"]).all()
    assert 0 <= metrics["test_acc"] <= 1 and metrics["epochs_run"] == 1
    # a history column holds one thing: a method's own terms, empty for the others
    own = {"soft_reg": {"soft_label_term", "soft_grad_term"}}.get(method, {"q_loss", "mu_sq_norm"}
                                                                    if get_method(method).scores_labels else set())
    assert {c for c in ("q_loss", "mu_sq_norm", "soft_label_term", "soft_grad_term")
            if np.isfinite(history[c]).all()} == own
    assert (tmp_path / "run/train_scores.npz").exists() == method.startswith("limit_")


def shell_commands(output, program):
    """The argument lists of every `python -m limit PROGRAM` in a dry run's printed shell commands."""
    found = []
    for line in output.splitlines():
        if f"python -m limit {program} " in line:
            command = line.split(f"python -m limit {program} ", 1)[1].split(" 2>&1 ", 1)[0]  # then the logs
            found.append(shlex.split(command))
            environment = line.split(f"python -m limit {program} ", 1)[0].removeprefix("Shell command:").split()
            if program == "train":  # the thread variables that a pack's member gets (thread_env), from the job's CPUs
                assert environment == [f"{v}=${{SLURM_CPUS_PER_TASK:-1}}" for v in THREAD_VARIABLES], line
    return found


@pytest.mark.pipeline
def test_a_packed_run_gets_exactly_the_command_of_the_same_run_unpacked(tmp_path):
    config = load_config("config/test.yaml")
    unpacked, packed = tmp_path / "unpacked.yaml", tmp_path / "packed.yaml"
    unpacked.write_text(yaml.safe_dump(config))
    config["training"]["fashion_mnist"]["pack"] = 4
    packed.write_text(yaml.safe_dump(config))
    alone = snakemake(tmp_path / "a", "-n", "-p", configfile=str(unpacked))
    together = snakemake(tmp_path / "b", "-n", "-p", configfile=str(packed))
    assert alone.returncode == 0 and together.returncode == 0, alone.stderr + together.stderr
    train = {tuple(args) for args in shell_commands(alone.stdout, "train")}
    members = set()
    for args in shell_commands(together.stdout, "train-pack"):
        runs = args[args.index("--out") + 2:]  # --threads N --out PACK_FILE RUN ...
        members |= {tuple(shlex.split(run)) for run in runs}
    assert len(train) == 10 and members == train
