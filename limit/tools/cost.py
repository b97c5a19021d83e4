"""``python -m limit cost``: device-hours of a config's grid on this device, before submitting it.

1. Times a few real training steps (the package's networks, methods, optimizer and precision) of every
   (architecture, method family, batch size, precision) of the grid, and evaluation steps, on the present
   device, with the run's threads on a CPU. On a CPU every network is timed at a small batch
   (``CPU_TIMING_BATCH``) and scaled per image (a CPU step's time grows with its images), and a step that takes
   over ``LONG_CPU_STEP`` is timed once, so the plan takes about a minute on a 2-core CPU.
2. Expected epochs of a run under early stopping: the run stops ``patience`` epochs after its best
   validation epoch, so E = min(epochs, ceil(BEST_EPOCH_FRACTION * epochs) + patience + 1), with the best
   epoch assumed at a tenth of the epoch budget (noisy-label runs peak before they memorise). ``--runs
   runs.csv`` of a previous run replaces the assumption by the mean ``epochs_run`` per (experiment, variant).
3. A run's time = E epochs x (its training steps + validation every epoch + the test curve every
   ``test_curve_every`` epochs) + the final test evaluation + the job's start-up (timed: a fresh Python
   importing the package).
5. Storage of a block: what its finished runs keep (best.pt, test outputs, the MLflow copy of best.pt unless
   log_checkpoints is off, state.pt and state.prev.pt with keep_state), and the training state (state.pt and
   state.prev.pt: the networks, Adam's two moments) its runs hold while they run, from the networks' sizes.
4. A pack's members run at the same time: it takes as long as its longest member, or as long as the
   device needs for all members' work at full load, whichever is more. Full load is the per-image time at
   a large batch (``SATURATION_BATCH``) on a GPU, where per-step overheads (Python, kernel launches) no longer
   count; on a CPU a step already keeps the cores busy, so a pack costs the sum of its members, as does a
   pack that trains its members one after another in one process (``pack_in_process``).
"""
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from limit import data as D
from limit.methods import LOSSES, Context
from limit.models import build_model, make_optimizer
from limit.registry import DATASETS, get_method
from limit.runs import rundir
from limit.runs.grid import expand_runs, load_config, pack_runs
from limit.runtime import configure, pick_device, set_precision

BEST_EPOCH_FRACTION = 0.1
CPU_TIMING_BATCH = {"cnn": 64, "mlp": 64, "resnet34": 2, "resnet50": 1}  # images per timed step on a CPU
SATURATION_BATCH = 4096
TIMED_STEPS = 2
LONG_CPU_STEP = 1.0  # seconds: a CPU step this long is timed once, with no warm-up
# Per dataset: training examples when n = "all", validation (20% split) and test examples.
FAMILIES = {False: "ce", True: "limit_l"}  # the method timed for one-network and two-network methods


def family(method):
    return "two networks" if get_method(method).q_network else "one network"


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _nets(arch, dataset, q_network):
    info = D.dataset_info(dataset)
    kw = dict(in_channels=info.channels, image_size=info.size)
    nets = [build_model(arch, info.num_classes, **kw)]
    if q_network:
        nets.append(build_model(arch, info.num_classes, q_network=True, **kw))
    return nets


def storage_bytes(row, model_bytes):
    """(bytes a finished run keeps, bytes of its state.pt + state.prev.pt). ``model_bytes``: a cache of the
    networks' state-dict bytes by (arch, dataset, two networks)."""
    key = (row["arch"], row["dataset"], get_method(row["method"]).q_network)
    if key not in model_bytes:
        nets = _nets(*key)
        weights = sum(t.numel() * t.element_size() for n in nets for t in n.state_dict().values())
        params = sum(p.numel() * p.element_size() for n in nets for p in n.parameters())
        model_bytes[key] = (weights, weights + 2 * params)  # best.pt; state.pt (+ Adam's two moments)
    best, state = model_bytes[key]
    n_test = DATASETS[row["dataset"]].split_sizes[2]
    outputs = n_test * D.dataset_info(row["dataset"]).num_classes * 4 + n_test * 8  # test logits and labels
    kept = best + outputs + (best if row["log_checkpoints"] else 0) + (2 * state if row["keep_state"] else 0)
    return kept, 2 * state


def time_steps(arch, dataset, q_network, batch, precision, device):
    """(seconds per training step, seconds per evaluation step) of ``batch`` random images."""
    info = D.dataset_info(dataset)
    method_name = FAMILIES[q_network]
    torch.manual_seed(0)
    nets = [set_precision(n.to(device), precision, device) for n in _nets(arch, dataset, q_network)]
    ctx = Context(*nets)
    optimizer = make_optimizer(nets, {"lr": 1e-3, "weight_decay": 0.0})
    x = torch.randn(batch, info.channels, info.size, info.size, device=device)
    y = torch.randint(0, info.num_classes, (batch,), device=device)
    hp = {"beta": 1.0, "lamb": 1.0, "sigma": 0.0}

    def train_step():
        objective = LOSSES[method_name](ctx, x, y, hp)[0]
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step():
        nets[0].eval()
        nets[0](x).argmax(1)
        nets[0].train()

    return _seconds(train_step, device), _seconds(eval_step, device)


def _seconds(step, device):
    t0 = time.perf_counter()
    step()  # warm-up: allocations, kernel selection
    _synchronize(device)
    first = time.perf_counter() - t0
    if device.type == "cpu" and first >= LONG_CPU_STEP:
        return first  # one-time costs are small against it (a bf16 ResNet step: within 10% of the next steps)
    t0 = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    _synchronize(device)
    return (time.perf_counter() - t0) / TIMED_STEPS


def startup_seconds():
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import limit.train"], check=True, capture_output=True)
    return time.perf_counter() - t0


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "CPU")
    return f"{model}, {os.cpu_count()} cores"


def expected_epochs(row, previous):
    if (row["experiment"], row["variant"]) in previous:
        return previous[(row["experiment"], row["variant"])]
    return min(row["epochs"], math.ceil(BEST_EPOCH_FRACTION * row["epochs"]) + row["patience"] + 1)


def previous_epochs(runs_csv):
    """Mean epochs_run per (experiment, variant) of a previous run table."""
    if runs_csv is None:
        return {}
    import pandas as pd
    runs = pd.read_csv(runs_csv)
    return runs.groupby(["experiment", "variant"])[rundir.EPOCHS_RUN].mean().to_dict()


def train_size(row):
    n_all, n_val, n_test = DATASETS[row["dataset"]].split_sizes
    return n_all if row["n"] == "all" else int(row["n"]), row["val_size"] or n_val, n_test


def time_configurations(rows, device, out):
    """Seconds per training image and per evaluated image (and per image at the device's full load, for packs of
    processes on a GPU) of each (arch, q-network, batch size, precision, deterministic) the runs use."""
    timings = {}
    for r in rows:
        q = get_method(r["method"]).q_network
        # the dataset changes only the head: not timed apart
        key = (r["arch"], q, r["batch_size"], r["precision"], r["deterministic"])
        if key not in timings:
            configure(device, r["deterministic"], r["precision"])  # the kernels the runs get
            if device.type == "cpu":  # a CPU run uses its job's threads (contended extra threads only slow it)
                torch.set_num_threads(min(r["threads"], os.cpu_count()))
            batch = r["batch_size"] if device.type == "cuda" else min(r["batch_size"],
                                                                       CPU_TIMING_BATCH.get(r["arch"], r["batch_size"]))
            train_s, eval_s = time_steps(r["arch"], r["dataset"], q, batch, r["precision"], device)
            saturated = None  # on a CPU a training step keeps the cores busy: full load is the step itself
            if r["pack"] > 1 and not r["pack_in_process"] and device.type == "cuda":
                big = max(SATURATION_BATCH, batch)
                saturated = time_steps(r["arch"], r["dataset"], q, big, r["precision"], device)[0] / big
            timings[key] = (train_s / batch, eval_s / batch, saturated)
            out(f"timed {r['arch']} / {family(r['method'])} / batch {r['batch_size']} / {r['precision']}: "
                f"{1 / timings[key][0]:,.1f} training images/s"
                + ("" if r["deterministic"] else ", nondeterministic") + (f" (timed at batch {batch})"
                                                                   if batch != r["batch_size"] else ""))
    return timings


def run_seconds(rows, timings, previous):
    """Per run: its device seconds alone, its seconds at the device's full load, and its expected epochs."""
    seconds, busy, epochs = {}, {}, {}
    for r in rows:
        per_train, per_eval, saturated = timings[(r["arch"], get_method(r["method"]).q_network, r["batch_size"],
                                                  r["precision"], r["deterministic"])]
        n_train, n_val, n_test = train_size(r)
        curve = r["test_curve_size"] or n_test
        e = epochs[r["run_id"]] = expected_epochs(r, previous)
        train_images = e * n_train
        eval_images = e * n_val + math.ceil(e / r["test_curve_every"]) * curve + n_test
        seconds[r["run_id"]] = train_images * per_train + eval_images * per_eval
        busy[r["run_id"]] = train_images * (saturated or per_train) + eval_images * per_eval
    return seconds, busy, epochs


def plan(config, device, runs_csv=None, out=print):
    """Print the per-block table and the total line; return (packed hours, unpacked hours)."""
    rows = expand_runs({**config, "results": config.get("results", "results")})
    previous = previous_epochs(runs_csv)
    timings = time_configurations(rows, device, out)
    start = startup_seconds()
    out(f"job start-up: {start:.1f} s")
    seconds, busy, epochs = run_seconds(rows, timings, previous)
    packs = pack_runs(rows)
    packed_of = {m["run_id"]: name for name, members in packs.items() for m in members}
    pack_seconds = {name: start + max(max(seconds[m["run_id"]] for m in members),
                                      sum(busy[m["run_id"]] for m in members))
                    for name, members in packs.items()}

    model_bytes = {}
    storage = {r["run_id"]: storage_bytes(r, model_bytes) for r in rows}
    out(f"\n{'block':18s} {'runs':>6s} {'jobs':>6s} {'epochs':>7s} {'packed h':>10s} {'unpacked h':>11s} "
        f"{'largest job h':>14s} {'kept GB':>8s} {'state GB':>9s}")
    totals = [0.0, 0.0, 0.0, 0.0]
    for experiment in config["experiments"]:
        block = [r for r in rows if r["experiment"] == experiment]
        unpacked = [start + seconds[r["run_id"]] for r in block]
        block_packs = {packed_of[r["run_id"]] for r in block if r["run_id"] in packed_of}
        # a pack that spans two blocks is counted in each in proportion to its members' time there
        packed = [start + seconds[r["run_id"]] for r in block if r["run_id"] not in packed_of]
        packed += [pack_seconds[p] * sum(seconds[r["run_id"]] for r in block if packed_of.get(r["run_id"]) == p)
                   / sum(seconds[m["run_id"]] for m in packs[p]) for p in block_packs]
        jobs = len(block) - sum(r["run_id"] in packed_of for r in block) + len(block_packs)
        largest = max([start + seconds[r["run_id"]] for r in block if r["run_id"] not in packed_of]
                      + [pack_seconds[p] for p in block_packs])
        mean_epochs = sum(epochs[r["run_id"]] for r in block) / len(block)
        totals[0] += sum(packed) / 3600
        totals[1] += sum(unpacked) / 3600
        kept, state = (sum(storage[r["run_id"]][i] for r in block) / 1e9 for i in (0, 1))
        totals[2] += kept
        totals[3] += state
        out(f"{experiment:18s} {len(block):6d} {jobs:6d} {mean_epochs:7.0f} {sum(packed) / 3600:10.2f} "
            f"{sum(unpacked) / 3600:11.2f} {largest / 3600:14.2f} {kept:8.1f} {state:9.1f}")
    out(f"total: {totals[0]:,.2f} device-hours packed, {totals[1]:,.2f} unpacked ({device_name(device)}); "
        f"{totals[2]:,.1f} GB kept, {totals[3]:,.1f} GB of training state if every run were in flight at once")
    out("kept GB: best.pt, test outputs, MLflow's copy of best.pt (log_checkpoints), state files (keep_state). "
        "state GB: state.pt + state.prev.pt of each run, removed when it finishes.\n"
        "Left out of the hours: data loading and JPEG decoding (Clothing1M), checkpoint and MLflow I/O, queue "
        "waits and retries; packed members are assumed to overlap perfectly up to the device's full load.")
    return tuple(totals[:2])


def add_cost_arguments(parser):
    parser.description = ("Times a few real training steps of every architecture, method family and batch size of "
                          "the config on this device and prints device-hours per block.")
    parser.add_argument("--configfile", required=True, help="workflow config, e.g. config/paper.yaml")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda ...")
    parser.add_argument("--runs", help="runs.csv of a previous run: its mean epochs per variant replace the estimate")


def run_cost(args):
    config = load_config(args.configfile)
    t0 = time.perf_counter()
    plan(config, pick_device(args.device), args.runs, out=lambda line: print(line, flush=True))
    print(f"(planned in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
