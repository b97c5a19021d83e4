"""The training loop: one run = one (data setting, method, hyperparameters, seed), resumable.

A run directory (file names: ``limit.runs.rundir``) holds the resolved config, ``state.pt`` (the full training state,
rewritten atomically every ``checkpoint_every`` epochs or minutes and when training ends; the one before is kept
as ``state.prev.pt``, the fallback if a crash tears it; both are removed once ``metrics.json`` is written, unless
``keep_state``), ``job.json`` (where each attempt ran), ``best.pt`` (rewritten when validation improves), and
when the run is complete ``history.csv``, ``test_outputs.npz``, ``epoch_scores.npz``, ``train_scores.npz`` (LIMIT
runs) and, last, ``metrics.json``.

``epoch_scores.npz`` holds, per training and validation example, the classifier's cross-entropy loss and margin
on the given label averaged over the epochs up to the selected one (the idea of the area under the margin,
Pleiss et al. 2020). They are recorded in the forward passes training and validation make anyway: no extra pass.
Validation examples are scored against the labels validation selects on (the clean ones with clean_validation).
"""
import copy
import csv
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from limit import data as D
from limit import runtime
from limit.runtime import pick_device  # noqa: F401 - the device of a run, also for bench, cost, label issues
from limit.runs import rundir
from limit.runtime import CheckpointCadence, parse_checkpoint_every
from limit.methods import LOSSES, Context, forward_correction_matrix
from limit.models import authors_bn_warmup, build_model
from limit.registry import (BN_INIT, DATASETS, HPARAM_DEFAULTS, PRECISIONS, TRAINING_DEFAULTS, dataset_info,
                            dataset_name, get_method, hparam_problem, is_limit)
from limit.runs.rundir import TrainingError, load_checkpoint

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "train_acc_true", "train_acc_corrupted", "val_acc",
                   "test_acc", "q_loss", "mu_sq_norm", "epoch_seconds", "images_per_second"]
# Keys that do not change what a run computes (more epochs extend it); everything else must match to resume.
NON_SEMANTIC_KEYS = {"data_dir", "labels", "init_from", "device", "run", "num_workers", "epochs", "checkpoint_every",
                     "decode", "log_checkpoints", "keep_state"}

DEFAULTS = {
    **TRAINING_DEFAULTS, "hparams": {}, "clean_validation": False, "init_from": None, "device": "auto",
    "eval_test_each_epoch": True, "test_curve_size": None, "imagenet_weights": None, "run": {},
    "log_checkpoints": True,  # best.pt and train_scores.npz as MLflow artifacts
}


def resolve_config(config):
    """Fill defaults and validate the method and its hyperparameters.

    ``run`` records the run's place in the grid (default: experiment "manual", variant = the method) and the
    hyperparameters given, before the defaults fill in the others; ``train`` adds the data setting."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(config))
    method = get_method(cfg["method"])
    info = dataset_info(cfg["dataset"])
    if cfg["dataset"] not in DATASETS:  # your own images: their size must suit the architecture
        from limit.datasets.images import check_arch
        check_arch(cfg["arch"], info.size)
    unknown = set(cfg["hparams"]) - set(HPARAM_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown hyperparameters {sorted(unknown)}; known: {sorted(HPARAM_DEFAULTS)}")
    cfg["run"] = {"experiment": "manual", "variant": cfg["method"], **cfg["run"], "hparams": sorted(cfg["hparams"])}
    cfg["hparams"] = {**HPARAM_DEFAULTS, **cfg["hparams"]}
    parse_checkpoint_every(cfg["checkpoint_every"])
    if cfg["precision"] not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg['precision']!r}; choose one of {list(PRECISIONS)}")
    if cfg["bn_init"] not in BN_INIT:
        raise ValueError(f"bn_init must be one of {list(BN_INIT)}, not {cfg['bn_init']!r}")
    for name, value in cfg["hparams"].items():
        problem = hparam_problem(cfg["method"], name, value)
        if problem:
            raise ValueError(f"{name} = {value}: {problem}")
    for key in ("epochs", "patience", "batch_size"):
        if not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise ValueError(f"{key} = {cfg[key]!r}: must be an integer >= 1")
    if method.init_from_ce and not cfg["init_from"]:
        raise ValueError(f"method {cfg['method']!r} starts from a CE run: give init_from (--init-from DIR)")
    return cfg


def loss_and_margin(logits, labels):
    """Per example: cross-entropy of the given label, and max other-class probability minus its probability."""
    probs = logits.float().softmax(1)
    given = probs.gather(1, labels[:, None]).squeeze(1)
    others = probs.scatter(1, labels[:, None], -1.0).max(1).values
    return F.cross_entropy(logits.float(), labels, reduction="none"), others - given


def new_epoch_sums(run_data):
    """Running sums of per-example loss and margin (training and validation examples) and their epoch count."""
    zeros = lambda split: torch.zeros(len(split), device=run_data.train_noisy.device)
    return {"train_loss": zeros(run_data.train), "train_margin": zeros(run_data.train),
            "val_loss": zeros(run_data.val), "val_margin": zeros(run_data.val),
            "epochs": torch.zeros((), device=run_data.train_noisy.device)}


def add_epoch_scores(sums, split, idx, logits, labels):
    loss, margin = loss_and_margin(logits.detach(), labels)
    sums[f"{split}_loss"].index_add_(0, idx, loss)
    sums[f"{split}_margin"].index_add_(0, idx, margin)


@dataclass
class RunData:
    train: object          # InMemorySplit or Clothing1MSplit
    val: object
    test: object
    test_curve: object      # the test examples whose accuracy is logged every epoch (a prefix of test)
    train_noisy: torch.Tensor
    train_true: torch.Tensor
    is_corrupted: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    train_idx: np.ndarray
    num_classes: int
    labels_meta: dict  # the labels file's metadata: data setting and sha256


def load_run_data(cfg, device):
    """The data of one run: images on the device (or streamed), noisy labels from the labels file."""
    info = dataset_info(cfg["dataset"])
    arrays, meta = D.read_labels_file(cfg["labels"])
    if dataset_name(meta["dataset"]) != dataset_name(cfg["dataset"]):
        raise ValueError(f"labels file {cfg['labels']} is for {meta['dataset']!r}, not {cfg['dataset']!r}")
    val_key = "val_true" if cfg["clean_validation"] else "val_noisy"
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.int64, device=device)
    if cfg["dataset"] == "clothing1m":
        from limit.datasets.clothing1m import Clothing1MSplit
        splits = [Clothing1MSplit(cfg["data_dir"], s, device, augment=s == "train" and info.augment,
                                  num_workers=cfg["num_workers"], decode=cfg["decode"])
                  for s in ("train", "val", "test")]
        test_labels = splits[2].labels
        splits.append(splits[2])
    else:
        images = D.load_arrays(cfg["dataset"], cfg["data_dir"])
        if len(images.test_x) == 0:  # your own images without a test set: the validation images, labels as given
            images.test_x, images.test_y = images.train_x[arrays["val_idx"]], t(arrays["val_true"]).cpu()
        curve_size = cfg["test_curve_size"] or len(images.test_x)
        splits = [D.InMemorySplit(images.train_x[arrays["train_idx"]], cfg["dataset"], device, info.augment),
                  D.InMemorySplit(images.train_x[arrays["val_idx"]], cfg["dataset"], device),
                  D.InMemorySplit(images.test_x, cfg["dataset"], device),
                  D.InMemorySplit(images.test_x[:curve_size], cfg["dataset"], device)]
        test_labels = images.test_y
    return RunData(*splits, t(arrays["train_noisy"]), t(arrays["train_true"]),
                   torch.as_tensor(arrays["is_corrupted"], device=device), t(arrays[val_key]), t(test_labels),
                   arrays["train_idx"], info.num_classes, meta)


def build_networks(cfg, num_classes):
    info = dataset_info(cfg["dataset"])
    method = get_method(cfg["method"])
    kw = dict(in_channels=info.channels, image_size=info.size, imagenet_weights=cfg["imagenet_weights"])
    classifier = build_model(cfg["arch"], num_classes, dropout=cfg["hparams"]["dropout"],
                             head_bias=method.head_bias, **kw)
    q = build_model(cfg["arch"], num_classes, q_network=True, **kw) if method.q_network else None
    if cfg["bn_init"] == "authors":  # on the CPU, before the networks move: the same statistics on any device
        noise = torch.Generator().manual_seed(cfg["seed"])
        for model in (classifier, q) if q is not None else (classifier,):
            authors_bn_warmup(model, cfg["arch"], (info.channels, info.size, info.size), noise)
    return classifier, q


def make_optimizer(models, hp):
    """One Adam over all networks; weight decay (coupled L2) only on weights of 2 or more dimensions."""
    params = [p for m in models if m is not None for p in m.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.Adam([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"])


def copy_parameters(src_state, dst, what):
    """Copy parameters (not BatchNorm running statistics) of a CE model into ``dst`` by name."""
    own = dict(dst.named_parameters())
    for name, value in src_state.items():
        if name in own:
            if own[name].shape != value.shape:
                raise TrainingError(f"cannot initialise {what} from the CE model: {name} has shape "
                                    f"{tuple(value.shape)}, expected {tuple(own[name].shape)}")
            with torch.no_grad():
                own[name].copy_(value)
    missing = [n for n, b in src_state.items() if n not in own and not _is_buffer_name(n)]
    if missing:
        raise TrainingError(f"cannot initialise {what} from the CE model: no parameter named {missing[0]}")


def _is_buffer_name(name):
    return name.rsplit(".", 1)[-1] in {"running_mean", "running_var", "num_batches_tracked"}


@torch.no_grad()
def predict(model, split, batch_size, augment=False, generator=None):
    """Softmax-free logits of a model (eval mode) over a split, in index order."""
    model.eval()
    return torch.cat([model(x).float() for _, x in split.batches(batch_size, generator=generator, augment=augment)])


def prepare_method(cfg, ctx, run_data, device):
    """Initialisation from the best CE model (FW, DMI, +init) and FW's transition matrix."""
    method = get_method(cfg["method"])
    if not method.init_from_ce:
        return
    ce_state = load_checkpoint(Path(cfg["init_from"]) / rundir.BEST)["classifier"]
    if cfg["method"] == "fw":
        # The full CE model (BatchNorm statistics included) estimates T on the noisy training set.
        ce_model = copy.deepcopy(ctx.classifier)
        ce_model.load_state_dict(ce_state)
        gen = torch.Generator().manual_seed(cfg["seed"])
        # CIFAR: the authors' train dataset still applied train-time augmentation here.
        probs = predict(ce_model, run_data.train, cfg["batch_size"], augment=True, generator=gen).softmax(1)
        matrix = forward_correction_matrix(probs.cpu().numpy())
        ctx.extra["transition_matrix"] = torch.tensor(matrix, dtype=torch.float32, device=device)
    target = ctx.q if method.init_from_ce == "q" else ctx.classifier
    copy_parameters(ce_state, target, "the q-network" if method.init_from_ce == "q" else "the classifier")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def init_checkpoint_sha256(cfg):
    """sha256 of the CE model a run starts from (FW, DMI, +init), None for other methods."""
    if not get_method(cfg["method"]).init_from_ce:
        return None
    ce_path = Path(cfg["init_from"]) / rundir.BEST
    if not ce_path.exists():
        raise TrainingError(f"--init-from {cfg['init_from']}: no best.pt there (is the CE run complete?)")
    return file_sha256(ce_path)


def fingerprint(cfg, labels_sha256, init_sha256=None):
    """What a run computes: its semantic config, its labels and the CE model it starts from."""
    semantic = {k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS}
    inputs = {"config": semantic, "labels": labels_sha256, **({"init": init_sha256} if init_sha256 else {})}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def finished_metrics(out, cfg, fp):
    """The metrics of a run directory that completed with this fingerprint and epoch budget, else None."""
    try:
        done = rundir.read_json(Path(out) / rundir.CONFIG)
        if (done.get("fingerprint"), done.get("epochs")) == (fp, cfg["epochs"]):
            return rundir.read_json(Path(out) / rundir.METRICS)
    except (OSError, ValueError):
        pass
    return None


def _rng_state(generator):
    state = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    generator.set_state(state["batches"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _models(ctx):
    return {"classifier": ctx.classifier, **({"q": ctx.q} if ctx.q is not None else {})}


def run_epoch(ctx, loss_fn, run_data, cfg, optimizer, generator, epoch_sums):
    """One pass over the noisy training set. Sums stay on the device: one host sync per epoch. Adds each
    example's loss and margin of this forward pass to ``epoch_sums``."""
    for m in _models(ctx).values():
        m.train()
    hp = cfg["hparams"]
    device = run_data.train_noisy.device
    sums = {"train_acc": torch.zeros((), device=device), "true_correct": torch.zeros((), device=device),
            "corrupted_memorised": torch.zeros((), device=device)}
    batches = 0
    for idx, x in run_data.train.batches(cfg["batch_size"], generator=generator, shuffle=True, augment=True):
        y = run_data.train_noisy[idx]
        objective, logits, terms = loss_fn(ctx, x, y, hp)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        with torch.no_grad():
            pred = logits.argmax(1)
            hit = pred == y
            sums["train_acc"] += hit.float().mean()  # unweighted mean of batch accuracies, as the authors
            sums["true_correct"] += (pred == run_data.train_true[idx]).sum()
            sums["corrupted_memorised"] += (hit & run_data.is_corrupted[idx]).sum()
            add_epoch_scores(epoch_sums, "train", idx, logits, y)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach()
        batches += 1
    values = {k: float(v) for k, v in sums.items()}
    n_corrupted = int(run_data.is_corrupted.sum())
    return {
        "train_loss": values["loss"] / batches,
        "train_acc": values["train_acc"] / batches,
        "train_acc_true": values["true_correct"] / len(run_data.train),
        "train_acc_corrupted": values["corrupted_memorised"] / n_corrupted if n_corrupted else float("nan"),
        "q_loss": values["q_loss"] / batches if "q_loss" in values else None,  # None: not a term of this method
        "mu_sq_norm": values["mu_sq_norm"] / batches if "mu_sq_norm" in values else None,
    }


@torch.no_grad()
def validation_accuracy(model, split, labels, batch_size, epoch_sums=None):
    """Unweighted mean of per-batch accuracies, as the authors' selection statistic; adds each example's loss
    and margin to ``epoch_sums`` when given."""
    model.eval()
    accs = []
    for idx, x in split.batches(batch_size):
        logits = model(x)
        accs.append((logits.argmax(1) == labels[idx]).float().mean())
        if epoch_sums is not None:
            add_epoch_scores(epoch_sums, "val", idx, logits, labels[idx])
    return float(torch.stack(accs).mean())


@torch.no_grad()
def test_accuracy(model, split, labels, batch_size):
    logits = predict(model, split, batch_size)
    return float((logits.argmax(1) == labels).float().mean()), logits


@torch.no_grad()
def limit_train_scores(ctx, run_data, batch_size):
    """Per training example: ||mu|| and ||mu - g_CE|| = ||y - s(q(x))|| (the mislabel detector)."""
    ctx.classifier.eval()
    ctx.q.eval()
    mu_norm, distance, predicted = [], [], []
    for idx, x in run_data.train.batches(batch_size):
        probs, q_probs = ctx.classifier(x).softmax(1), ctx.q(x).softmax(1)
        onehot = F.one_hot(run_data.train_noisy[idx], run_data.num_classes).float()
        mu_norm.append((probs - q_probs).norm(dim=1))
        distance.append((onehot - q_probs).norm(dim=1))
        predicted.append(probs.argmax(1))
    cat = lambda xs: torch.cat(xs).cpu().numpy()
    return {"mu_norm": cat(mu_norm), "grad_distance": cat(distance),
            "is_corrupted": run_data.is_corrupted.cpu().numpy(), "noisy_label": run_data.train_noisy.cpu().numpy(),
            "true_label": run_data.train_true.cpu().numpy(), "predicted": cat(predicted),
            "train_idx": run_data.train_idx}


class EpochReporter:
    """A tqdm bar on a terminal; one plain line per epoch otherwise (cluster logs)."""

    def __init__(self, total, name, done):
        self.name = name
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=name, unit="epoch")

    def epoch(self, row):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(val=f"{row['val_acc']:.4f}", test=f"{row['test_acc']:.4f}")
        else:
            print(f"{self.name} epoch {row['epoch']}: loss {row['train_loss']:.4f} train {row['train_acc']:.4f} "
                  f"val {row['val_acc']:.4f} test {row['test_acc']:.4f} ({row['epoch_seconds']:.1f}s)", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def stale_initialisation(state, cfg, labels_sha256, init_sha256):
    """Whether a saved state differs from this run only by the CE model it started from."""
    old = state.get("init_sha256")
    return bool(old) and old != init_sha256 and state["fingerprint"] == fingerprint(cfg, labels_sha256, old)


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        return next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or device.type


def _git_commit():
    """The commit of the package's checkout, or None outside a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def job_info(device):
    """Where and with what this attempt runs (``job.json``; MLflow tags)."""
    try:
        version = importlib.metadata.version("limit-pipeline")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"slurm_job_id": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(), "device": str(device),
            "device_name": _device_name(device), "driver": runtime.driver_version(), "cuda": torch.version.cuda,
            "git_commit": _git_commit(), "torch_version": torch.__version__, "limit_version": version,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def record_attempt(out, device):
    """Write ``job.json``: this attempt at the top level (MLflow tags) and every attempt under ``attempts``. A
    retry on another device model warns (numbers are bit-identical only on the same model) and adds
    ``device_change`` (an MLflow tag)."""
    path = out / rundir.JOB
    old = rundir.read_json(path) if path.exists() else {}
    attempts = old.get("attempts", [old] if old else [])  # a job.json of the previous version: one attempt
    attempt = job_info(device)
    attempts = [*attempts, attempt]
    models = [a.get("device_name") for a in attempts]
    job = {**attempt, "attempts": attempts}
    if len(set(models)) > 1:
        job["device_change"] = " -> ".join(m for i, m in enumerate(models) if i == 0 or m != models[i - 1])
    if len(models) > 1 and models[-1] != models[-2]:
        warnings.warn(f"{out}: attempt {len(models)} runs on {models[-1]}, attempt {len(models) - 1} ran on "
                      f"{models[-2]}: a run resumed on another device model is not bit-identical to one run "
                      f"on one model", RuntimeWarning)
    rundir.write_json(path, job)


def batches_missing_a_class(labels, num_classes, batch_size, seed):
    """The fraction of an epoch's training batches (shuffled as the run's first epoch) whose labels miss a
    class. DMI's loss is -log|det(U)| of the batch's joint matrix U: with a class missing, a row of U is zero,
    |det| is 0 and the batch's gradient is zero (docs/reproduction.md, DMI on CIFAR-100)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    batches = torch.as_tensor(labels).cpu()[order].split(batch_size)
    return sum(len(b.unique()) < num_classes for b in batches) / len(batches)


def train(config, out_dir, tracker=None):
    """Train one run into ``out_dir``, resuming from ``state.pt`` if present. Returns metrics."""
    cfg = resolve_config(config)
    out = Path(out_dir)
    device = pick_device(cfg["device"])  # a GPU that cannot run stops here, in seconds
    runtime.configure(device, cfg["deterministic"], cfg["precision"])

    torch.manual_seed(cfg["seed"])
    generator = torch.Generator().manual_seed(cfg["seed"])
    run_data = load_run_data(cfg, device)  # bad input stops here, before anything is written
    init_sha256 = init_checkpoint_sha256(cfg)
    meta = run_data.labels_meta
    cfg["run"].update(noise=meta["noise"], rate=meta["rate"], n=str(meta["n"]))
    fp = fingerprint(cfg, meta["sha256"], init_sha256)
    finished = finished_metrics(out, cfg, fp)
    if finished is not None:  # complete with this very config (a pack started again): nothing to train
        return finished
    out.mkdir(parents=True, exist_ok=True)
    (out / rundir.METRICS).unlink(missing_ok=True)  # a run directory with metrics.json is complete: not any more
    record_attempt(out, device)
    if cfg["method"] == "dmi":
        missing = batches_missing_a_class(run_data.train_noisy, run_data.num_classes, cfg["batch_size"], cfg["seed"])
        if missing > 0:
            warnings.warn(f"DMI: {missing:.0%} of the training batches (batch size {cfg['batch_size']}, "
                          f"{run_data.num_classes} classes) miss a class; their determinant is 0 and their "
                          f"gradient zero, so the run stays near its CE start (docs/reproduction.md)",
                          RuntimeWarning)
    classifier, q = build_networks(cfg, run_data.num_classes)
    ctx = Context(classifier.to(device), q.to(device) if q is not None else None)
    for model in _models(ctx).values():
        runtime.set_precision(model, cfg["precision"], device)

    state = rundir.load_state(out)
    if state is not None and state.get("fingerprint") != fp:
        if stale_initialisation(state, cfg, meta["sha256"], init_sha256):
            warnings.warn(f"{out}: the CE model in {cfg['init_from']} changed since this run started; "
                          f"it starts over from the new one", RuntimeWarning)
            state = None
        else:
            raise TrainingError(f"{out / 'state.pt'} belongs to a different config or labels file; "
                                f"remove the run directory {out} to start over")
    if state is not None:
        for name, model in _models(ctx).items():
            model.load_state_dict(state["models"][name])
        ctx.extra = {k: v.to(device) for k, v in state["extra"].items()}
        optimizer = make_optimizer(_models(ctx).values(), cfg["hparams"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], generator)
        history, best = state["history"], state["best"]
        # A state of the previous version has no sums: the averages then cover the epochs from here on.
        epoch_sums = {k: v.to(device) for k, v in state.get("epoch_sums", new_epoch_sums(run_data)).items()}
    else:
        prepare_method(cfg, ctx, run_data, device)
        optimizer = make_optimizer(_models(ctx).values(), cfg["hparams"])
        history, best = [], {"val_acc": -1.0, "epoch": 0, "models": None}
        epoch_sums = new_epoch_sums(run_data)
    # The config of the latest invocation (a resumed run may extend its epochs), and its fingerprint.
    rundir.write_json(out / rundir.CONFIG, {**cfg, "fingerprint": fp})

    if tracker is not None:
        tracker.start(cfg, history)
    start_epoch = len(history)
    reporter = EpochReporter(cfg["epochs"], out.name, start_epoch)
    stopped = start_epoch > 0 and start_epoch - 1 - best["epoch"] >= cfg["patience"]
    cadence = CheckpointCadence(cfg["checkpoint_every"])
    for epoch in range(start_epoch, cfg["epochs"]):
        if stopped:
            break
        t0 = time.perf_counter()
        row = {"epoch": epoch, **run_epoch(ctx, LOSSES[cfg["method"]], run_data, cfg, optimizer, generator,
                                           epoch_sums)}
        for term in ("train_loss", "q_loss", "mu_sq_norm"):
            if row[term] is not None and not math.isfinite(row[term]):
                raise TrainingError(f"epoch {epoch}: {term} became {row[term]}; the run stopped "
                                    f"(state.pt keeps the last complete epoch, {epoch - 1})")
        row["val_acc"] = validation_accuracy(ctx.classifier, run_data.val, run_data.val_labels, cfg["batch_size"],
                                             epoch_sums)
        epoch_sums["epochs"] += 1
        curve_labels = run_data.test_labels[:len(run_data.test_curve)]
        row["test_acc"] = (test_accuracy(ctx.classifier, run_data.test_curve, curve_labels, cfg["batch_size"])[0]
                           if cfg["eval_test_each_epoch"] and epoch % cfg["test_curve_every"] == 0
                           else float("nan"))
        row["epoch_seconds"] = time.perf_counter() - t0
        row["images_per_second"] = len(run_data.train) / row["epoch_seconds"]
        history.append(row)
        if row["val_acc"] > best["val_acc"]:
            best = {"val_acc": row["val_acc"], "epoch": epoch,
                    "models": {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
                               for k, m in _models(ctx).items()},
                    "epoch_sums": {k: v.detach().cpu().clone() for k, v in epoch_sums.items()}}
            save_best(best, out)
        stopped = epoch - best["epoch"] >= cfg["patience"]
        if cadence.due(epoch - start_epoch + 1) or stopped or epoch == cfg["epochs"] - 1:
            rundir.save_state(out, {"fingerprint": fp, "init_sha256": init_sha256,
                                    "models": {k: m.state_dict() for k, m in _models(ctx).items()},
                                    "optimizer": optimizer.state_dict(), "rng": _rng_state(generator),
                                    "history": history, "best": best,
                                    "epoch_sums": {k: v.cpu() for k, v in epoch_sums.items()},
                                    "extra": {k: v.cpu() for k, v in ctx.extra.items()}})
            cadence.saved(epoch - start_epoch + 1)
        if tracker is not None:
            tracker.log_epoch(row)
        reporter.epoch(row)
    reporter.close()
    return finish(cfg, out, ctx, run_data, history, best, tracker)


def save_best(best, out):
    """best.pt: the best-validation networks (what FW, DMI and +init start from) and their epoch."""
    rundir.save_torch(out / rundir.BEST, {**best["models"], "epoch": best["epoch"]})


def finish(cfg, out, ctx, run_data, history, best, tracker):
    """Evaluate the best-validation checkpoint on the clean test set and write the run's outputs."""
    for name, model in _models(ctx).items():
        model.load_state_dict(best["models"][name])
    save_best(best, out)  # again: a resumed run may have rewritten it for an epoch after its checkpoint
    acc, logits = test_accuracy(ctx.classifier, run_data.test, run_data.test_labels, cfg["batch_size"])
    rundir.save_npz(out / rundir.TEST_OUTPUTS, logits=logits.cpu().numpy().astype(np.float32),
                    labels=run_data.test_labels.cpu().numpy())
    if "epoch_sums" in best:  # (absent only when the best epoch came before a resume from an older version)
        sums = best["epoch_sums"]
        rundir.save_npz(out / rundir.EPOCH_SCORES, epochs=int(sums["epochs"]),
                        **{k: (v / sums["epochs"]).numpy() for k, v in sums.items() if k != "epochs"})
    if is_limit(cfg["method"]):
        rundir.save_npz(out / rundir.TRAIN_SCORES, **limit_train_scores(ctx, run_data, cfg["batch_size"]))
    history_csv = io.StringIO(newline="")
    writer = csv.DictWriter(history_csv, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    writer.writerows(history)
    rundir.write_text(out / rundir.HISTORY, history_csv.getvalue())
    metrics = {"best_epoch": best["epoch"], "best_val_acc": best["val_acc"], "test_acc": acc,
               "epochs_run": len(history), "wall_seconds": sum(r["epoch_seconds"] for r in history)}
    if cfg["dataset"] == "clothing1m":  # images skipped because they cannot be decoded (limit.datasets.clothing1m)
        metrics["unreadable_images"] = len({p for split in (run_data.train, run_data.val, run_data.test)
                                            for p in split.unreadable})
    rundir.write_json(out / rundir.METRICS, metrics)
    if not cfg["keep_state"]:  # the run is complete: its training state is only storage now
        for name in (rundir.STATE, rundir.STATE_PREV):
            (out / name).unlink(missing_ok=True)
    if tracker is not None:
        tracker.finish(out, metrics)
    return metrics
