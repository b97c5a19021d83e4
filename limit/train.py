"""The training loop: one run = one (data setting, method, hyperparameters, seed), resumable.

A run directory (file names: ``limit.runs.rundir``) holds the resolved config, ``state.pt`` (the full training state,
rewritten atomically every ``checkpoint_every`` epochs or minutes, and when training ends with ``keep_state``; the
one before is kept as ``state.prev.pt``, the fallback if a crash tears it; both are removed once ``metrics.json`` is
written, unless ``keep_state``), ``history.csv`` (every epoch up to the last checkpoint), ``job.json`` (where each
attempt ran), ``best.pt`` (rewritten when validation improves), and when the run is complete ``test_outputs.npz``,
``epoch_scores.npz``, ``train_scores.npz`` (LIMIT runs) and, last, ``metrics.json``.

``epoch_scores.npz`` holds, per training and validation example, the classifier's cross-entropy loss and margin
on the given label averaged over the epochs up to the selected one (the idea of the area under the margin,
Pleiss et al. 2020). They are recorded in the forward passes training and validation make anyway: no extra pass.
Validation examples are scored against the labels validation selects on (the clean ones with clean_validation).
"""
import csv
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from limit import config, runtime
from limit.config import TrainingError, fingerprint, init_checkpoint_sha256, resolve_config
from limit.data import RunData, load_run_data
from limit.methods import LOSSES, Context, batches_missing_a_class, limit_train_scores, loss_and_margin, prepare_method
from limit.models import build_networks, make_optimizer, predict
from limit.registry import dataset_info, get_method
from limit.runs import rundir
from limit.runs.rundir import (
    BEST_EPOCH,
    BEST_VAL_ACC,
    EPOCH,
    EPOCH_SECONDS,
    EPOCHS_RUN,
    IMAGES_PER_SECOND,
    LOSS_TERMS,
    TEST_ACC,
    TEST_EXAMPLES,
    TEST_UNREADABLE,
    TRAIN_ACC,
    TRAIN_ACC_CORRUPTED,
    TRAIN_ACC_TRUE,
    TRAIN_LOSS,
    UNREADABLE_IMAGES,
    VAL_ACC,
    WALL_SECONDS,
)
from limit.runtime import CheckpointCadence, pick_device

# The loop's public API (limit.tools uses only these).
__all__ = ["train", "new_epoch_sums", "run_epoch", "validation_accuracy", "test_accuracy", "run_train"]


def new_epoch_sums(run_data):
    """Running sums of per-example loss and margin (training and validation examples) and their epoch count:
    epoch_scores.npz's arrays ``{split}_loss``, ``{split}_margin`` (add_epoch_scores) and ``epochs``."""
    device = run_data.train_noisy.device
    splits = (("train", run_data.train), ("val", run_data.val))
    return {**{f"{split}_{kind}": torch.zeros(len(examples), device=device)
               for split, examples in splits for kind in ("loss", "margin")},
            "epochs": torch.zeros((), device=device)}


def add_epoch_scores(sums, split, idx, logits, labels):
    loss, margin = loss_and_margin(logits.detach(), labels)
    sums[f"{split}_loss"].index_add_(0, idx, loss)
    sums[f"{split}_margin"].index_add_(0, idx, margin)


def finished_metrics(out, cfg, fp):
    """The metrics of a run directory that completed with this fingerprint and epoch budget, else None."""
    done = recorded_config(out)
    if done is not None and (done.get("fingerprint"), done.get("epochs")) == (fp, cfg["epochs"]):
        try:
            return rundir.read_json(Path(out) / rundir.METRICS)
        except (OSError, ValueError):
            pass
    return None


def recorded_config(out):
    """A run directory's config.json (None if it has none, or an unreadable one)."""
    try:
        return rundir.read_json(Path(out) / rundir.CONFIG)
    except (OSError, ValueError):
        return None


INPUT_NAMES = {"labels": "labels file", "data": "data", "init": "CE model (init_from)"}


def config_differences(old, cfg, input_sha256):
    """How a run directory's recorded config differs from this run's, in what it computes: 'lr: 0.001 there, 0.01
    here; ...' (the settings first, then the inputs by sha256)."""
    def settings(c):
        semantic = {k: v for k, v in c.items() if k not in config.NON_SEMANTIC | {"hparams", *config.RECORDED}}
        return json.loads(json.dumps({**semantic, **c.get("hparams", {})}, default=str))
    there, here = settings(old), settings(cfg)
    diffs = [f"{k}: {there.get(k)} there, {here.get(k)} here" for k in [*here, *(k for k in there if k not in here)]
             if there.get(k) != here.get(k)]
    old_inputs = old.get("input_sha256", {})
    diffs += [f"{INPUT_NAMES[k]}: sha256 {str(old_inputs.get(k))[:12]} there, {str(v)[:12]} here"
              for k, v in input_sha256.items() if k in old_inputs and old_inputs[k] != v]
    return "; ".join(diffs) or "its labels file, data or CE model"


def start_state(out, cfg, fp, input_sha256, overwrite):
    """The training state to resume from, its file and why state.pt was not read (``runtime.load_state``), or
    (None, None, None) to start from the first epoch.

    A run directory that holds a run of another config, finished (metrics.json) or in progress (state.pt), is
    refused here, before anything is written, naming what differs; ``overwrite`` removes its files instead. One
    that differs only by the CE model it started from (retrained since) starts over with a warning."""
    state, path, torn = runtime.load_state(out)
    old = recorded_config(out) or {}
    held = []  # what the directory holds of another config: (what, its fingerprint, the CE model it started from)
    if (out / rundir.METRICS).exists() and old.get("fingerprint") != fp:
        held.append(("a finished run", old.get("fingerprint"), old.get("input_sha256", {}).get("init")))
    if state is not None and state.get("fingerprint") != fp:
        held.append((f"a run in progress ({path.name})", state.get("fingerprint"), state.get("init_sha256")))
    if not held:
        return (state, path, torn) if state is not None else (None, None, None)
    if all(retrained_ce(held_fp, init, cfg, input_sha256) for _, held_fp, init in held):
        warnings.warn(f"{out}: the CE model in {cfg['init_from']} changed since this run started; "
                      f"it starts over from the new one", RuntimeWarning)
        return None, None, None
    if not overwrite:
        raise TrainingError(f"{out} holds {held[0][0]} of a different config "
                            f"({config_differences(old, cfg, input_sha256)}): give another --out, or --overwrite "
                            f"to replace it")
    for name in rundir.RUN_FILES:
        if name != rundir.MLFLOW:  # kept: the tracker sees the new config and replaces that MLflow run
            (out / name).unlink(missing_ok=True)
    return None, None, None


def _models(ctx):
    return {"classifier": ctx.classifier, **({"q": ctx.q} if ctx.q is not None else {})}


def run_epoch(ctx, loss_fn, run_data, cfg, optimizer, generator, epoch_sums):
    """One pass over the noisy training set. Sums stay on the device: one host sync per epoch. Adds each
    example's loss and margin of this forward pass to ``epoch_sums``."""
    for m in _models(ctx).values():
        m.train()
    hp = cfg["hparams"]
    device = run_data.train_noisy.device
    sums = {"batch_acc": torch.zeros((), device=device), "true_correct": torch.zeros((), device=device),
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
            sums["batch_acc"] += hit.float().mean()  # unweighted mean of batch accuracies, as the authors
            sums["true_correct"] += (pred == run_data.train_true[idx]).sum()
            sums["corrupted_memorised"] += (hit & run_data.is_corrupted[idx]).sum()
            add_epoch_scores(epoch_sums, "train", idx, logits, y)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach()
        batches += 1
    values = {k: float(v) for k, v in sums.items()}
    n_corrupted = int(run_data.is_corrupted.sum())
    return {
        TRAIN_LOSS: values["loss"] / batches,
        TRAIN_ACC: values["batch_acc"] / batches,
        TRAIN_ACC_TRUE: values["true_correct"] / len(run_data.train),
        TRAIN_ACC_CORRUPTED: values["corrupted_memorised"] / n_corrupted if n_corrupted else float("nan"),
        **{term: values[term] / batches for term in LOSS_TERMS if term in values},  # the method's own terms
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
    """(accuracy, indices, logits) over the examples the split can read, each against its own label (an unreadable
    image is left out: docs/reproduction.md)."""
    idx, logits = predict(model, split, batch_size)
    return float((logits.argmax(1) == labels[idx]).float().mean()), idx, logits


def retrained_ce(held_fingerprint, held_init_sha256, cfg, input_sha256):
    """Whether a run held in a run directory differs from this one only by the CE model it started from."""
    return bool(held_init_sha256) and held_init_sha256 != input_sha256["init"] and held_fingerprint == fingerprint(
        cfg, input_sha256["labels"], held_init_sha256, input_sha256["data"])


@dataclass
class Run:
    """A run being trained: its config, directory and inputs; its networks and optimizer; its progress."""
    cfg: dict
    out: Path
    device: torch.device
    fingerprint: str
    input_sha256: dict
    run_data: RunData
    generator: torch.Generator  # the batches' order and augmentation
    ctx: Context = None
    optimizer: torch.optim.Optimizer = None
    history: list = field(default_factory=list)  # one row per epoch trained
    best: dict = field(default_factory=lambda: {VAL_ACC: -1.0, EPOCH: 0, "models": None})
    epoch_sums: dict = None
    best_saved: bool = False  # best.pt holds ``best`` (written by this attempt)


def train(run_config, out_dir, tracker=None, overwrite=False):
    """Train one run into ``out_dir``: start it, or resume it from ``state.pt``; train its epochs; finish it.
    Returns its metrics. A run directory of another config is refused before anything is written (``overwrite``:
    replaced)."""
    run = load_run(run_config, out_dir)
    finished = finished_metrics(run.out, run.cfg, run.fingerprint)
    if finished is not None:  # complete with this very config (a pack started again): nothing to train
        return finished
    start_or_resume(run, overwrite)
    if tracker is not None:
        tracker.start(run.cfg, run.history)
    train_epochs(run, tracker)
    return finish(run, tracker)


def load_run(run_config, out_dir):
    """The run's config, device, seeds, data and fingerprint; bad input stops here, before anything is written."""
    cfg = resolve_config(run_config)
    device = pick_device(cfg["device"])  # a GPU that cannot run stops here, in seconds
    runtime.configure(device, cfg["deterministic"], cfg["precision"])
    torch.manual_seed(cfg["seed"])
    generator = torch.Generator().manual_seed(cfg["seed"])
    run_data = load_run_data(cfg, device)
    meta = run_data.labels_meta
    input_sha256 = {"labels": meta["sha256"], "data": meta.get("data_sha256"), "init": init_checkpoint_sha256(cfg)}
    cfg["run"].update(noise=meta["noise"], rate=meta["rate"], n=str(meta["n"]))
    fp = fingerprint(cfg, input_sha256["labels"], input_sha256["init"], input_sha256["data"])
    return Run(cfg, Path(out_dir), device, fp, input_sha256, run_data, generator)


def start_or_resume(run, overwrite):
    """Build the run's networks and optimizer, from the first epoch or from its training state, and record the
    attempt and the config in its directory."""
    cfg, out = run.cfg, run.out
    # A refusal writes nothing: start_state decides before any file is touched.
    state, state_path, torn = start_state(out, cfg, run.fingerprint, run.input_sha256, overwrite)
    if state is not None:
        print(f"{out}: resuming at epoch {len(state['history'])} of {cfg['epochs']} from {state_path}", flush=True)
    if torn is not None:
        warnings.warn(f"{torn}; resuming from {state_path}, one checkpoint earlier", RuntimeWarning)
    out.mkdir(parents=True, exist_ok=True)
    (out / rundir.METRICS).unlink(missing_ok=True)  # a run directory with metrics.json is complete: not any more
    runtime.record_attempt(out, run.device)
    if get_method(cfg["method"]).every_class_per_batch:
        warn_batches_missing_a_class(cfg, run.run_data)
    classifier, q = build_networks(cfg, run.run_data.num_classes)
    run.ctx = Context(classifier.to(run.device), q.to(run.device) if q is not None else None)
    for model in _models(run.ctx).values():
        runtime.set_precision(model, cfg["precision"], run.device)
    if state is not None:
        resume(run, state)
    else:
        prepare_method(cfg, run.ctx, run.run_data, run.device)
        run.optimizer = make_optimizer(_models(run.ctx).values(), cfg["hparams"])
        run.epoch_sums = new_epoch_sums(run.run_data)
    # The config of the latest invocation (a resumed run may extend its epochs), and its fingerprint.
    rundir.write_json(out / rundir.CONFIG, {**cfg, "fingerprint": run.fingerprint, "input_sha256": run.input_sha256})


def resume(run, state):
    """Networks, method state, optimizer, random streams and progress as ``state.pt`` saved them."""
    for name, model in _models(run.ctx).items():
        model.load_state_dict(state["models"][name])
    run.ctx.extra = {k: v.to(run.device) for k, v in state["extra"].items()}
    run.optimizer = make_optimizer(_models(run.ctx).values(), run.cfg["hparams"])
    run.optimizer.load_state_dict(state["optimizer"])
    runtime.set_rng_state(state["rng"], run.generator)
    run.history, run.best = state["history"], state["best"]
    # A state written before epoch sums existed has none: the averages cover the epochs from here on.
    run.epoch_sums = {k: v.to(run.device) for k, v in state.get("epoch_sums", new_epoch_sums(run.run_data)).items()}


def warn_batches_missing_a_class(cfg, run_data):
    missing = batches_missing_a_class(run_data.train_noisy, run_data.num_classes, cfg["batch_size"], cfg["seed"])
    if missing > 0:
        warnings.warn(f"{cfg['method'].upper()}: {missing:.0%} of the training batches (batch size "
                      f"{cfg['batch_size']}, {run_data.num_classes} classes) miss a class; their determinant is 0 "
                      f"and their gradient zero, so the run stays near its CE start (docs/reproduction.md)",
                      RuntimeWarning)


def train_epochs(run, tracker):
    """Epoch -> validate -> keep the best -> stop early, up to the epoch budget; ``state.pt`` at the cadence
    ``checkpoint_every`` sets, but after the last epoch only when ``keep_state`` keeps it: otherwise the finished
    run would remove it at once (a kill before ``metrics.json`` resumes from the checkpoint before)."""
    epochs = run.cfg["epochs"]
    start = len(run.history)
    reporter = runtime.EpochReporter(epochs, run.out.name, start)
    cadence = CheckpointCadence(run.cfg["checkpoint_every"])
    while len(run.history) < epochs and not patience_spent(run):
        t0 = time.perf_counter()
        row = train_epoch(run)
        row.update(validate(run, row[EPOCH]))
        seconds = time.perf_counter() - t0
        row.update({EPOCH_SECONDS: seconds, IMAGES_PER_SECOND: len(run.run_data.train) / seconds})
        run.history.append(row)
        keep_best(run, row)
        done = len(run.history) - start
        last = patience_spent(run) or len(run.history) == epochs
        if run.cfg["keep_state"] if last else cadence.due(done):
            save_state(run)
            cadence.saved(done)
        if tracker is not None:
            tracker.log_epoch(row)
        reporter.epoch(row)
    reporter.close()


def patience_spent(run):
    """Early stopping: ``patience`` epochs trained since the best validation accuracy."""
    return bool(run.history) and len(run.history) - 1 - run.best[EPOCH] >= run.cfg["patience"]


def train_epoch(run):
    """One epoch on the noisy labels; its history row so far. A loss that is no longer finite stops the run."""
    epoch = len(run.history)
    row = {EPOCH: epoch, **run_epoch(run.ctx, LOSSES[run.cfg["method"]], run.run_data, run.cfg, run.optimizer,
                                       run.generator, run.epoch_sums)}
    for term in (TRAIN_LOSS, *LOSS_TERMS):
        if term in row and not math.isfinite(row[term]):
            raise TrainingError(f"epoch {epoch}: {term} became {row[term]}; the run stopped "
                                f"({rundir.STATE} keeps the last complete epoch, {epoch - 1})")
    return row


def validate(run, epoch):
    """The validation accuracy (what selects the best epoch), and every ``test_curve_every`` epochs the clean test
    accuracy of the test curve's examples."""
    cfg, data = run.cfg, run.run_data
    val_acc = validation_accuracy(run.ctx.classifier, data.val, data.val_labels, cfg["batch_size"], run.epoch_sums)
    run.epoch_sums["epochs"] += 1
    curve_labels = data.test_labels[:len(data.test_curve)]
    test_acc = (test_accuracy(run.ctx.classifier, data.test_curve, curve_labels, cfg["batch_size"])[0]
                if cfg["test_curve"] and epoch % cfg["test_curve_every"] == 0 else float("nan"))
    return {VAL_ACC: val_acc, TEST_ACC: test_acc}


def keep_best(run, row):
    """A better validation accuracy than any before: its networks and epoch sums become the run's best (best.pt)."""
    if row[VAL_ACC] > run.best[VAL_ACC]:
        run.best = {VAL_ACC: row[VAL_ACC], EPOCH: row[EPOCH],
                    "models": {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
                               for k, m in _models(run.ctx).items()},
                    "epoch_sums": {k: v.detach().cpu().clone() for k, v in run.epoch_sums.items()}}
        save_best(run.best, run.out)
        run.best_saved = True


def save_state(run):
    """state.pt: everything a resumed run needs to go on as if never stopped; and the history so far."""
    runtime.save_state(run.out, {"fingerprint": run.fingerprint, "init_sha256": run.input_sha256["init"],
                                 "models": {k: m.state_dict() for k, m in _models(run.ctx).items()},
                                 "optimizer": run.optimizer.state_dict(), "rng": runtime.rng_state(run.generator),
                                 "history": run.history, "best": run.best,
                                 "epoch_sums": {k: v.cpu() for k, v in run.epoch_sums.items()},
                                 "extra": {k: v.cpu() for k, v in run.ctx.extra.items()}})
    write_history(run.out, run.history)  # the epochs so far, readable without torch (mlflow-sync)


def write_history(out, history):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=rundir.HISTORY_COLUMNS)  # a method's missing terms: empty
    writer.writeheader()
    writer.writerows(history)
    rundir.write_text(out / rundir.HISTORY, text.getvalue())


def save_best(best, out):
    """best.pt: the best-validation networks (what FW, DMI and +init start from) and their epoch."""
    runtime.save_torch(out / rundir.BEST, {**best["models"], EPOCH: best[EPOCH]})


def finish(run, tracker):
    """Evaluate the best-validation networks on the clean test set and write the run's outputs, metrics.json last."""
    cfg, out, data, best = run.cfg, run.out, run.run_data, run.best
    for name, model in _models(run.ctx).items():
        model.load_state_dict(best["models"][name])
    if not run.best_saved:  # a resumed run may have rewritten best.pt for an epoch after its checkpoint
        save_best(best, out)
    acc, idx, logits = test_accuracy(run.ctx.classifier, data.test, data.test_labels, cfg["batch_size"])
    rundir.save_npz(out / rundir.TEST_OUTPUTS, logits=logits.cpu().numpy().astype(np.float32),
                    labels=data.test_labels[idx].cpu().numpy(), index=idx.cpu().numpy())
    if "epoch_sums" in best:  # (absent only when the best epoch came before a resume from an older version)
        sums = best["epoch_sums"]
        rundir.save_npz(out / rundir.EPOCH_SCORES, epochs=int(sums["epochs"]),
                        **{k: (v / sums["epochs"]).numpy() for k, v in sums.items() if k != "epochs"})
    if get_method(cfg["method"]).scores_labels:
        rundir.save_npz(out / rundir.TRAIN_SCORES, **limit_train_scores(run.ctx, data, cfg["batch_size"]))
    write_history(out, run.history)
    metrics = run_metrics(run, acc, idx)
    rundir.write_json(out / rundir.METRICS, metrics)
    if not cfg["keep_state"]:  # the run is complete: its training state is only storage now
        for name in (rundir.STATE, rundir.STATE_PREV):
            (out / name).unlink(missing_ok=True)
    if tracker is not None:
        tracker.finish(out)
    return metrics


def run_metrics(run, test_acc, test_idx):
    """metrics.json: the selected epoch, its validation and test accuracy, and what the run cost."""
    data, history = run.run_data, run.history
    metrics = {BEST_EPOCH: run.best[EPOCH], BEST_VAL_ACC: run.best[VAL_ACC], TEST_ACC: test_acc,
               TEST_EXAMPLES: len(test_idx), EPOCHS_RUN: len(history),
               WALL_SECONDS: sum(r[EPOCH_SECONDS] for r in history)}
    if dataset_info(run.cfg["dataset"]).streamed:  # images skipped because they cannot be decoded (datasets.clothing1m)
        metrics[TEST_UNREADABLE] = len(data.test) - len(test_idx)
        metrics[UNREADABLE_IMAGES] = len({p for split in (data.train, data.val, data.test) for p in split.unreadable})
    return metrics


def run_train(args):
    from limit.tracking.client import Tracker
    cfg = {**config.from_args(args), "run": {"experiment": args.experiment, "variant": args.variant or args.method}}
    tracker = None if args.no_tracking else Tracker(args.out, args.tracking_uri, interval=args.live_interval)
    metrics = train(cfg, args.out, tracker, overwrite=args.overwrite)
    print(json.dumps(metrics))
