"""``python -m limit bench``: images/s of training steps for the MNIST CNN at batch 256.

Compares the package's own training code (``limit.train.run_epoch``) for CE and LIMIT with a bare
PyTorch loop over the same preloaded tensors (the floor) and with a per-item torchvision DataLoader
pipeline (PIL -> ToTensor -> Normalize, what the authors' code does). Random images: speed only.

``--pack K`` instead compares K runs packed (K processes at once, as ``python -m limit train-pack``)
with the same K runs one after another, and with K models taking turns in one process; the processes start
inside ``limit.pack.shared_gpu``, as train-pack's members.

Every measurement runs under the runs' own settings (``runtime.configure``: deterministic kernels and IEEE fp32
unless ``--no-deterministic`` or ``--precision bf16``, train's defaults).
"""
import argparse
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from limit import data as D
from limit.config import FIELD, PRECISIONS, TrainingError
from limit.methods import LOSSES, Context
from limit.models import make_optimizer, mnist_cnn
from limit.pack import shared_gpu, start_member
from limit.registry import get_method
from limit.runtime import DeviceError, configure, pick_device, resolve_device, set_precision
from limit.train import new_epoch_sums, run_epoch


def images_per_second(epoch, n_images, device, repeats=3):
    """Best of ``repeats`` timed epochs after one warm-up epoch (the machine's other load only slows)."""
    epoch()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        epoch()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def networks(two_networks, device, precision):
    """The MNIST CNN (and LIMIT's second network) on ``device`` in ``precision``, as a run builds them."""
    torch.manual_seed(0)
    f = set_precision(mnist_cnn().to(device), precision, device)
    return f, set_precision(mnist_cnn(fc_batchnorm=True).to(device), precision, device) if two_networks else None


def package_epoch(method_name, images, labels, device, batch_size, precision):
    """One epoch of the package's training loop over preloaded tensors, as a function."""
    ctx = Context(*networks(get_method(method_name).q_network, device, precision))
    optimizer = make_optimizer([ctx.classifier, ctx.q], {"lr": 1e-3, "weight_decay": 0.0})
    y = labels.to(device)
    split, no_val = D.InMemorySplit(images, "mnist", device), D.InMemorySplit(images[:0], "mnist", device)
    run_data = D.RunData(split, no_val, None, None, y, y, torch.zeros_like(y, dtype=torch.bool), None, None, None, 10,
                         {})
    cfg = {"batch_size": batch_size, "hparams": {"beta": 1.0, "lamb": 1.0, "sigma": 0.0}}
    gen = torch.Generator().manual_seed(0)
    epoch_sums = new_epoch_sums(run_data)
    return lambda: run_epoch(ctx, LOSSES[method_name], run_data, cfg, optimizer, gen, epoch_sums)


def package_rate(method_name, images, labels, device, batch_size, precision):
    """Whole epochs of the package's training loop over preloaded tensors."""
    epoch = package_epoch(method_name, images, labels, device, batch_size, precision)
    return images_per_second(epoch, len(images), device)


def bare_rate(two_networks, images, labels, device, batch_size, precision):
    """The floor: a plain loop, no accounting, over the same uint8 tensors on the device."""
    f, q = networks(two_networks, device, precision)
    opt = torch.optim.Adam(list(f.parameters()) + (list(q.parameters()) if q else []), lr=1e-3)
    x_all, y_all = images.to(device), labels.to(device)
    mean, std = 0.456, 0.224

    def epoch():
        order = torch.randperm(len(x_all), device=device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = (x_all[idx].float() / 255 - mean) / std
            y = y_all[idx]
            logits = f(x)
            if q is None:
                loss = F.cross_entropy(logits, y)
            else:
                probs = logits.detach().softmax(1)
                mu = probs - q(x).softmax(1)
                target = probs - F.one_hot(y, 10).float()
                loss = (logits * mu.detach()).sum() + ((mu - target) ** 2).sum(1).mean() + (mu ** 2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return images_per_second(epoch, len(x_all), device)


def dataloader_rate(two_networks, images, labels, device, batch_size, precision):
    """Per-item torchvision pipeline: uint8 -> PIL -> ToTensor -> Normalize, then the bare step."""
    from PIL import Image
    from torchvision import transforms
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.456,), (0.224,))])
    arr = images[:, 0].numpy()

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(arr)

        def __getitem__(self, i):
            return transform(Image.fromarray(arr[i], mode="L")), int(labels[i])

    loader = torch.utils.data.DataLoader(Items(), batch_size=batch_size, shuffle=True, num_workers=0)
    f, q = networks(two_networks, device, precision)
    opt = torch.optim.Adam(list(f.parameters()) + (list(q.parameters()) if q else []), lr=1e-3)

    def epoch():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = f(x)
            loss = F.cross_entropy(logits, y)
            if q is not None:
                loss = loss + F.cross_entropy(q(x), y)  # same cost shape as LIMIT's second network
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return images_per_second(epoch, len(arr), device)


def random_mnist(n):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, 10, (n,), generator=gen)


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# The methods of a benchmark pack's members, in turn: a pack mixes one-network and two-network runs.
PACK_METHODS = ("ce", "limit_l")
WARMUP_STEPS = 20  # a member's untimed warm-up (allocations, kernel selection), at most this many steps


def pack_worker(method_name, steps, batch_size, device_name, precision, deterministic):
    """One benchmark run in its own process: a warm-up, "ready", wait for "go", one timed epoch, "done"."""
    device = pick_device(device_name)
    configure(device, deterministic, precision)
    package_epoch(method_name, *random_mnist(min(steps, WARMUP_STEPS) * batch_size), device, batch_size, precision)()
    epoch = package_epoch(method_name, *random_mnist(steps * batch_size), device, batch_size, precision)
    _synchronize(device)
    print("ready", flush=True)
    sys.stdin.readline()
    epoch()
    _synchronize(device)
    print("done", flush=True)


def processes_rate(k, args, device_name, together):
    """images/s of K benchmark runs, each its own process with ``args.threads`` threads: all at once (a pack)
    or one after another (K separate jobs). Start-up and warm-up are not timed."""
    procs = []

    def wait_for(proc, word):
        lines = []
        for line in proc.stdout:  # warnings may come first
            if line.strip() == word:
                return
            lines.append(line)
        last = lines[-1].strip().removeprefix("error: ") if lines else f"exit status {proc.wait()}"
        raise TrainingError(f"a benchmark run ({' '.join(proc.args[3:])}) failed: {last}")

    def start(i):
        argv = [sys.executable, "-m", "limit.tools.bench", PACK_METHODS[i % len(PACK_METHODS)], str(args.steps),
                str(args.batch_size), device_name, args.precision, str(args.deterministic)]
        procs.append(start_member(argv, args.threads, stdin=subprocess.PIPE))
        wait_for(procs[-1], "ready")
        return procs[-1]

    def go(procs):
        t0 = time.perf_counter()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            wait_for(proc, "done")
        seconds = time.perf_counter() - t0
        for proc in procs:
            proc.wait()
        return seconds

    try:
        if together:
            return k * args.steps * args.batch_size / go([start(i) for i in range(k)])
        return k * args.steps * args.batch_size / sum(go([start(i)]) for i in range(k))
    finally:
        for proc in procs:  # a failed run leaves the others waiting for "go"
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def one_process_rate(k, args, device):
    """images/s of K models taking turns in this process (``args.threads`` threads), an epoch each in turn."""
    torch.set_num_threads(args.threads)
    images, labels = random_mnist(args.steps * args.batch_size)
    epochs = [package_epoch(PACK_METHODS[i % len(PACK_METHODS)], images, labels, device, args.batch_size,
                            args.precision) for i in range(k)]
    return k * images_per_second(lambda: [epoch() for epoch in epochs], len(images), device, repeats=1)


def pack_main(args):
    """The runs' processes share the GPU as train-pack's do (shared_gpu); this process makes no CUDA context
    until they are done (an EXCLUSIVE_PROCESS GPU takes one)."""
    k, name = args.pack, resolve_device(args.device)
    print(f"device {name}, torch {torch.__version__}, {k} runs of the MNIST CNN ({', '.join(PACK_METHODS)} in "
          f"turn), {args.threads} thread(s) per run, {args.steps} steps of batch {args.batch_size} per run, "
          f"{args.precision}, deterministic {args.deterministic}", flush=True)
    separate = args.separate or k  # the separate rate: this many of the runs, one after another
    with shared_gpu([f"--dataset mnist --device {name}"]):
        rows = {f"{separate} separate runs, one after another": processes_rate(separate, args, name, False),
                f"{k} runs packed (train-pack: {k} processes)": processes_rate(k, args, name, True)}
    if not args.no_turns:
        device = pick_device(name)
        configure(device, args.deterministic, args.precision)
        rows[f"{k} models taking turns in one process"] = one_process_rate(k, args, device)
    for name, rate in rows.items():
        print(f"{name:48s} {rate:10.0f} images/s")
    separate, packed = list(rows.values())[:2]
    print(f"packed / separate: {packed / separate:.2f}x")


def add_bench_arguments(parser):
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of the steps")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda ...")
    parser.add_argument("--precision", choices=PRECISIONS, default=FIELD["precision"].default,
                        help="as train's --precision")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                        default=FIELD["deterministic"].default, help="as train's --deterministic")
    parser.add_argument("--pack", type=int, metavar="K", help="images/s of K runs packed against K separate runs")
    parser.add_argument("--threads", type=int, default=1, help="with --pack: CPU threads per run (default 1)")
    parser.add_argument("--separate", type=int, metavar="N",
                        help="with --pack: time N of the runs one after another for the separate rate (default K)")
    parser.add_argument("--no-turns", action="store_true",
                        help="with --pack: skip K models taking turns in one process")


def run_bench(args):
    if args.pack:
        return pack_main(args)
    device = pick_device(args.device)
    configure(device, args.deterministic, args.precision)
    images, labels = random_mnist(args.steps * args.batch_size)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.steps} steps of batch {args.batch_size} per measurement, {args.precision}, "
          f"deterministic {args.deterministic}")
    data = (images, labels, device, args.batch_size, args.precision)
    rows = {
        "bare loop, CE": bare_rate(False, *data),
        "package, CE": package_rate("ce", *data),
        "bare loop, LIMIT": bare_rate(True, *data),
        "package, LIMIT": package_rate("limit_g", *data),
        "per-item DataLoader, CE": dataloader_rate(False, *data),
        "per-item DataLoader, two networks": dataloader_rate(True, *data),
    }
    for name, rate in rows.items():
        print(f"{name:36s} {rate:10.0f} images/s")
    print(f"package LIMIT / bare LIMIT: {rows['package, LIMIT'] / rows['bare loop, LIMIT']:.3f} "
          f"(target >= 0.90)")
    print(f"package CE / package LIMIT (LIMIT's cost in CE steps): "
          f"{rows['package, CE'] / rows['package, LIMIT']:.2f}x (target <= 2.2x)")
    print(f"package CE / per-item DataLoader CE: {rows['package, CE'] / rows['per-item DataLoader, CE']:.2f}x")


if __name__ == "__main__":  # a member of `bench --pack`: METHOD STEPS BATCH_SIZE DEVICE PRECISION DETERMINISTIC
    try:
        pack_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6] == "True")
    except DeviceError as exc:
        sys.exit(f"error: {exc}")
