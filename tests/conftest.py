import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The suite runs many processes at once on few cores (two workers, their training subprocesses, Slurm jobs). An
# OpenMP thread that waits for work spins by default, burning the CPU the other processes need: 4 two-thread
# trainings at once took 31-37 s and 61-73 CPU seconds on 2 cores, 12 s and 23-24 CPU seconds with waiting threads
# asleep. Set before torch loads its OpenMP runtime, and inherited by every process a test starts. The numbers
# trained are the same (when a thread waits, not what it computes).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from limit import labels as L  # noqa: E402
from limit.datasets import standard as S  # noqa: E402

from mlflow_helpers import postgres  # noqa: E402, F401 (the fixture, for every test module)
from pipeline_helpers import git  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "cluster"
# Tests marked `system` start Slurm, PostgreSQL or Chromium as root: only on opt-in (.ci/run opts in).
SYSTEM_TESTS = os.environ.get("LIMIT_SYSTEM_TESTS") == "1"


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker per CPU and one more. The pipeline and system tests spend part of their time waiting on
    Slurm's polling, a tracking server's restart or a Snakemake shutdown; the extra worker's tests use it."""
    return (os.cpu_count() or 1) + 1


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # Tiers: `./project test -m unit` is the quick loop; `./project test` runs all three.
    config.addinivalue_line("markers", "unit: in one process, no Snakemake (every test not marked otherwise)")
    config.addinivalue_line("markers", "pipeline: runs Snakemake or the command line in subprocesses")
    config.addinivalue_line("markers", "system: starts system services as root; runs only with LIMIT_SYSTEM_TESTS=1")
    config.addinivalue_line("markers", "slurm: uses the host's Slurm configuration (one local cluster per host)")


@pytest.hookimpl(tryfirst=True)  # before xdist's hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    # system tests, then pipeline tests, then unit tests: the parallel workers start the long tests first and fill
    # the end with short ones (pyproject.toml turns xdist's own reordering off); the Slurm tests that need no
    # cluster run before the one that starts it
    items.sort(key=lambda item: (0 if "system" in item.keywords else 1 if "pipeline" in item.keywords else 2,
                                 "slurm_cluster" in item.fixturenames))
    for item in items:
        if "pipeline" not in item.keywords and "system" not in item.keywords:
            item.add_marker(pytest.mark.unit)
        group = worker_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if SYSTEM_TESTS:
        return
    skip = pytest.mark.skip(reason="system test (installs and starts Slurm, PostgreSQL or Chromium as root): "
                                   "set LIMIT_SYSTEM_TESTS=1 to run it")
    for item in items:
        if "system" in item.keywords:
            item.add_marker(skip)


def worker_group(item):
    """The tests that parallel workers (pytest-xdist, ``--dist loadgroup``) run one after another on one worker:
    those that read the tiny pipeline (it runs once per worker that asks for it), those that use the host's Slurm
    configuration (a Slurm cluster is one per host), and those of a module that shares a fixture or a service.
    Every other test goes to whichever worker is free."""
    if "tiny_pipeline" in item.fixturenames:
        return "tiny_pipeline"
    if "slurm" in item.keywords:
        return "slurm"
    fixtures = item._fixtureinfo.name2fixturedefs
    shared = "system" in item.keywords or any(fixtures[name][-1].scope == "module" for name in item.fixturenames
                                              if fixtures.get(name))
    return item.module.__name__ if shared else None


# The one process a unit test may start: the package's own `git rev-parse HEAD`, which each attempt of a run
# records in job.json (limit.runtime).
ALLOWED_IN_UNIT_TESTS = ["git", "rev-parse"]


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request, monkeypatch):
    """The unit tier runs in one process (README): a unit test that starts another fails, saying so."""
    if request.node.get_closest_marker("unit") is None:
        return
    start = subprocess.Popen.__init__

    def refuse(self, args, *more, **options):
        command = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if command[:2] != ALLOWED_IN_UNIT_TESTS:
            raise RuntimeError(f"a unit test started a process ({command[:3]}): call it in process "
                               f"(limit.cli.main), or mark the test @pytest.mark.pipeline")
        start(self, args, *more, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With LIMIT_SYSTEM_TESTS=1 a skipped system test fails: CI must not pass without them."""
    report = (yield).get_result()
    if SYSTEM_TESTS and report.skipped and "system" in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"LIMIT_SYSTEM_TESTS=1, but this system test was skipped: {reason}"


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory):
    """Real Fashion-MNIST from Debian's dataset-fashion-mnist package."""
    if not S.DEBIAN_FASHION_MNIST.exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    root = tmp_path_factory.mktemp("data")
    S.prepare_dataset("fashion_mnist", root)
    return root


@pytest.fixture(scope="session")
def make_labels(fmnist_dir, tmp_path_factory):
    """Write (once per setting) a labels file for a small Fashion-MNIST setting."""
    cache = {}
    out_dir = tmp_path_factory.mktemp("labels")
    train_y = S.read_arrays("fashion_mnist", fmnist_dir).train_y

    def make(rate=0.5, n=512, seed=42, val_size=512, noise="uniform"):
        key = (rate, n, seed, val_size, noise)
        if key not in cache:
            arrays = L.make_noisy_labels(train_y, 10, "fashion_mnist", noise, rate, seed, n=n, val_size=val_size)
            path = out_dir / f"{noise}-{rate}-{n}-{seed}-{val_size}.npz"
            L.write_labels_file(path, arrays, {"dataset": "fashion_mnist", "noise": noise, "rate": rate, "n": n,
                                               "seed": seed, "val_size": val_size})
            cache[key] = path
        return cache[key]
    return make


@pytest.fixture(scope="session")
def tiny_pipeline(fmnist_dir, tmp_path_factory):
    """The tiny config's whole default workflow (report included), run once per test session inside a git
    checkout of this tree; tests that only read its results share it, tests that change them work on a copy."""
    work = tmp_path_factory.mktemp("pipeline")
    for name in git(REPO, "ls-files", "-z").split("\0"):
        if name and (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes((REPO / name).read_bytes())
    git(work, "init", "-q")
    git(work, "add", "-A")
    git(work, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "checkout")
    result = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-s", str(work / "Snakefile"), "-d",
                             str(work), "--cores", "2", "--configfile", str(work / "config" / "test.yaml"),
                             "--config", f"data_dir={fmnist_dir}"], capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A throw-away single-node Slurm cluster on 127.0.0.1 (tests/cluster/slurm-up.sh): its state directory; its
    daemons are always stopped at the end of the session."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("a local Slurm cluster needs root and apt-get (Debian packages slurmctld, slurmd, munge)")
    state = tmp_path_factory.mktemp("slurm")
    try:
        up = subprocess.run(["bash", str(CLUSTER / "slurm-up.sh"), str(state)], capture_output=True, text=True,
                            timeout=600, stdin=subprocess.DEVNULL)
        assert up.returncode == 0, f"slurm-up.sh failed:\n{up.stdout}\n{up.stderr}"
        yield state
    finally:
        subprocess.run(["bash", str(CLUSTER / "slurm-down.sh"), str(state)], timeout=120,
                       stdin=subprocess.DEVNULL)
        # the host as it was: slurm-down.sh removed what slurm-up.sh created
        assert not Path("/etc/slurm/slurm.conf").exists() and not (state / "slurmctld.pid").exists()
