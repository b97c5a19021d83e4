"""How a run uses its machine: device, determinism, precision, checkpoints and their cadence, RNG state, progress
and provenance.

Device: ``cuda`` (and ``auto`` inside a Slurm job that holds a GPU) must give a working GPU, or the run stops at
once with what torch reports: a GPU job never trains on the CPU until its time limit.

Determinism: ``torch.use_deterministic_algorithms(True)`` makes every op pick a deterministic kernel or
raise. The paper's networks use one op without a deterministic CUDA backward, adaptive average pooling
(the ResNets' global pool); ``limit.models`` replaces it by a mean over the spatial dimensions. cuBLAS
needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use for deterministic matrix products.

Precision: ``fp32`` is IEEE float32: TF32 (10-bit mantissa on Ampere and newer) is off for matrix products and
convolutions. ``bf16`` runs each network's forward (and so its backward) under bfloat16 autocast with
channels_last memory, and hands float32 outputs to the methods: losses, DMI's determinant, FW's ``@ T``
and LIMIT's gradient arithmetic stay in float32 (TF32 off there too). Parameters and Adam's state stay float32.

Checkpoints: ``state.pt`` (the full training state) is written every N epochs or every N minutes of wall time;
validation runs every epoch either way (early stopping and selection depend on it). A run killed between two
checkpoints redoes the epochs since the last one and, being a pure function of its state, ends with the same
numbers. Checkpoints load as data only (``weights_only=True``).

Provenance: ``job.json`` names the device model and the environment (the sha256 of the checkout's
``requirements.lock``, which ``./project`` installs) of every attempt; a change of either between attempts is
recorded and warned about, since numbers are bit-identical only on one device model with one set of libraries.
"""
import ctypes
import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from limit.config import PRECISIONS, TrainingError, parse_checkpoint_every
from limit.runs import rundir

__all__ = ["DeviceError", "resolve_device", "pick_device", "cuda_problem", "code_runs_on", "slurm_gpu_allocation",
           "driver_version", "configure", "set_precision", "CheckpointCadence", "rng_state", "set_rng_state",
           "EpochReporter", "job_info", "lock_sha256", "record_attempt", "save_torch", "load_checkpoint", "save_state",
           "load_state"]
# Set by Slurm in a job that holds GPUs (--gpus, --gres=gpu, --gpus-per-*).
SLURM_GPU_VARIABLES = ("SLURM_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS",
                       "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")


class DeviceError(ValueError):
    """The run's device cannot be used (one ``error:`` line, exit status 2)."""


def slurm_gpu_allocation(environ=os.environ):
    """The variable that shows this process is in a Slurm job holding a GPU (``NAME=value``), else None."""
    if "SLURM_JOB_ID" not in environ:
        return None
    for name in (*SLURM_GPU_VARIABLES, "CUDA_VISIBLE_DEVICES"):
        value = environ.get(name, "")
        # GPU indices (0 is a GPU) or counts (SLURM_GPUS_ON_NODE=0 is none)
        if value not in ("", "-1", "NoDevFiles") and not (name == "SLURM_GPUS_ON_NODE" and value == "0"):
            return f"{name}={value}"
    return None


# An entry of torch.cuda.get_arch_list(): sm_XY is a CUDA binary (suffix a: arch-specific, f: family), compute_XY PTX.
_ARCH_ENTRY = re.compile(r"(sm|compute)_(\d+)([af]?)")


def code_runs_on(entry, device_cc):
    """Whether the code of one ``torch.cuda.get_arch_list()`` entry runs on a GPU of compute capability
    ``device_cc`` (10 * major + minor). torch's own rule (``torch.cuda._check_capability``, private): a binary runs
    on the GPUs of its major version with an equal or higher minor, its suffix ignored (torch leaves the
    integrated Jetson GPUs out; no cluster has them). Plain PTX is compiled on the fly for any newer GPU too
    (CUDA's compatibility rule). A malformed entry runs nothing."""
    found = _ARCH_ENTRY.fullmatch(entry)
    if found is None:
        return False
    kind, code_cc, suffix = found.group(1), int(found.group(2)), found.group(3)
    if kind == "compute" and not suffix:
        return device_cc >= code_cc
    return device_cc // 10 == code_cc // 10 and device_cc >= code_cc


def cuda_problem(device):
    """Why ``device`` (a CUDA device) cannot run this build of torch, in torch's words; None when it can."""
    build = f"torch {torch.__version__}"
    if torch.version.cuda is None:
        return f"{build} is a CPU-only build (install a CUDA wheel, docs/cluster.md)"
    if not torch.cuda.is_available():
        try:  # is_available() only says no; init() raises with the reason (no driver, driver too old, ...)
            torch.cuda.init()
            reason = "no CUDA device visible"
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, AssertionError or others
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{build} (built for CUDA {torch.version.cuda}) finds no usable GPU: {reason}"
    index = device.index or 0
    if index >= torch.cuda.device_count():
        return f"no GPU {index}: {build} sees {torch.cuda.device_count()}"
    major, minor = torch.cuda.get_device_capability(index)
    archs = torch.cuda.get_arch_list()
    if not any(code_runs_on(entry, 10 * major + minor) for entry in archs):
        return (f"{torch.cuda.get_device_name(index)} is sm_{major}{minor} (compute capability {major}.{minor}); "
                f"{build} has code for {' '.join(archs) or 'no GPU'}, and CUDA code runs only on its own major "
                f"version at an equal or higher minor: install a torch build with sm_{major}{minor} code (its "
                f"torch.cuda.get_arch_list() lists it), docs/cluster.md section 1")
    try:
        (torch.ones(2, device=device) * 2).sum().item()
    except RuntimeError as exc:
        return f"a first kernel on {torch.cuda.get_device_name(index)} failed: {str(exc).strip().splitlines()[0]}"
    return None


def resolve_device(name, environ=os.environ):
    """The device name a run on ``name`` uses, found without a CUDA context: ``auto`` is ``cuda`` when torch sees
    a GPU or this is a Slurm job holding one, else ``cpu``; any other name as it is."""
    if name != "auto":
        return name
    return "cuda" if slurm_gpu_allocation(environ) or torch.cuda.is_available() else "cpu"


def pick_device(name, environ=os.environ):
    """The torch device of a run (``resolve_device``): a Slurm job holding a GPU must be able to use it. A CUDA
    device that cannot run raises DeviceError at once."""
    allocation = slurm_gpu_allocation(environ)
    name = resolve_device(name, environ)
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"--device {name}: {exc}") from None
    if device.type == "cuda":
        problem = cuda_problem(device)
        if problem:
            held = f"this Slurm job holds a GPU ({allocation}) but " if allocation else ""
            raise DeviceError(f"--device {name}: {held}{problem}")
    return device


def driver_version():
    """The NVIDIA kernel driver's version (from /proc), or None without one."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def configure(device=torch.device("cpu"), deterministic=True, precision="fp32"):
    """Process-wide settings of a run on ``device``; call before the first CUDA op."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    torch.use_deterministic_algorithms(deterministic)
    # No kernel reads memory it did not write; the fill of every new tensor is a kernel per allocation (and
    # one queued on the current stream, behind work of other streams that writes the same buffer).
    torch.utils.deterministic.fill_uninitialized_memory = False
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # float32 stays float32 in both precisions (bf16 runs only the networks under autocast)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    else:
        keep_freed_memory()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(mmap_below=256 << 20, trim_above=1 << 30):
    """Let the C library's malloc keep what a CPU run frees, for its next batch; False where it cannot (not glibc).

    glibc maps each block above a threshold (128 KiB, raised as blocks are freed, to 32 MiB at most) afresh and
    unmaps it when freed, and returns the heap's free top to the system once it passes twice that threshold. On a
    CPU, a batch's activations and gradients (tens of MB) were then faulted in page by page at every step: a tenth
    of a run's CPU time, in the kernel (docs/default-pipeline-time.md). Blocks below ``mmap_below`` now come from
    the heap, which keeps up to ``trim_above`` of free memory.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_below)) and bool(mallopt(M_TRIM_THRESHOLD, trim_above))


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

class CheckpointCadence:
    def __init__(self, every):
        self.unit, self.every = parse_checkpoint_every(every)
        self.last_epochs, self.last_time = 0, time.monotonic()

    def due(self, epochs_done):
        """Is a checkpoint due after ``epochs_done`` epochs of this invocation?"""
        if self.unit == "epochs":
            return epochs_done - self.last_epochs >= self.every
        return time.monotonic() - self.last_time >= 60 * self.every

    def saved(self, epochs_done):
        self.last_epochs, self.last_time = epochs_done, time.monotonic()


def rng_state(generator):
    state = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    generator.set_state(state["batches"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
            self.bar.set_postfix(val=f"{row[rundir.VAL_ACC]:.4f}", test=f"{row[rundir.TEST_ACC]:.4f}")
        else:
            print(f"{self.name} epoch {row[rundir.EPOCH]}: loss {row[rundir.TRAIN_LOSS]:.4f} "
                  f"train {row[rundir.TRAIN_ACC]:.4f} val {row[rundir.VAL_ACC]:.4f} test {row[rundir.TEST_ACC]:.4f} "
                  f"({row[rundir.EPOCH_SECONDS]:.1f}s)", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


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


LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"  # in a checkout; absent from an installed package


def lock_sha256(lock=LOCK):
    """The sha256 of the checkout's lock file (the environment ./project installs), or None outside a checkout."""
    try:
        return hashlib.sha256(lock.read_bytes()).hexdigest()
    except OSError:
        return None


def job_info(device):
    """Where and with what this attempt runs (``job.json``; MLflow tags)."""
    try:
        version = importlib.metadata.version("limit-pipeline")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"slurm_job_id": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(), "device": str(device),
            "device_name": _device_name(device), "driver": driver_version(), "cuda": torch.version.cuda,
            "git_commit": _git_commit(), "torch_version": torch.__version__, "limit_version": version,
            "lock_sha256": lock_sha256(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# job.json key -> the key that records its changes across attempts, and what it names
CHANGES = {"device_name": ("device_change", "device model"), "lock_sha256": ("environment_change", "environment")}


def record_attempt(out, device):
    """Write ``job.json``: this attempt at the top level (MLflow tags) and every attempt under ``attempts``. A
    retry on another device model or in another environment (lock file) warns (numbers are bit-identical only
    on the same model with the same libraries) and adds ``device_change`` or ``environment_change`` (MLflow
    tags); attempts that predate a key are not compared on it."""
    path = out / rundir.JOB
    old = rundir.read_json(path) if path.exists() else {}
    attempts = old.get("attempts", [old] if old else [])  # a job.json without attempts: one attempt
    attempts = [*attempts, job_info(device)]
    job = {**attempts[-1], "attempts": attempts}
    for key, (change, what) in CHANGES.items():
        values = [a[key] for a in attempts if a.get(key) is not None]
        if len(set(values)) > 1:
            job[change] = " -> ".join(v for i, v in enumerate(values) if i == 0 or v != values[i - 1])
        last, now = (a.get(key) for a in attempts[-2:]) if len(attempts) > 1 else (None, None)
        if None not in (last, now) and last != now:
            warnings.warn(f"{out}: attempt {len(attempts)} runs on {now}, attempt {len(attempts) - 1} ran on "
                          f"{last}: a run resumed on another {what} is not bit-identical to one run on one {what}",
                          RuntimeWarning)
    rundir.write_json(path, job)


def save_torch(path, obj):
    rundir.write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path):
    """torch.load a checkpoint as data only (never code); a clear error if it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise TrainingError(f"checkpoint {path} is corrupt or not a checkpoint of this package: {exc}") from exc


def save_state(run_dir, state):
    """Write state.pt, keeping the previous one as state.prev.pt. The new state is written whole before the old
    one moves: a run stopped while it writes (the slow part: Ctrl-C, kill -9) still has state.pt as it was."""
    run_dir = Path(run_dir)
    new = run_dir / f".{rundir.STATE}.new"
    save_torch(new, state)
    if (run_dir / rundir.STATE).exists():
        os.replace(run_dir / rundir.STATE, run_dir / rundir.STATE_PREV)
    os.replace(new, run_dir / rundir.STATE)
    rundir.sync_directory(run_dir)


def load_state(run_dir):
    """The training state to resume from, its file, and why state.pt was not read: (state.pt's, state.pt, None),
    or (state.prev.pt's, state.prev.pt, the error) when state.pt is torn; (None, None, None) when there is none."""
    path, prev = Path(run_dir) / rundir.STATE, Path(run_dir) / rundir.STATE_PREV
    if not path.exists() and not prev.exists():
        return None, None, None
    try:
        return load_checkpoint(path), path, None
    except TrainingError as exc:
        if not prev.exists():
            raise
        return load_checkpoint(prev), prev, exc
