import os
from pathlib import Path

import pytest

from limit import data as D

REPO = Path(__file__).resolve().parents[1]
# Tests marked `system` start Slurm, PostgreSQL or Chromium as root: only on opt-in (.ci/run opts in).
SYSTEM_TESTS = os.environ.get("LIMIT_SYSTEM_TESTS") == "1"


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    config.addinivalue_line("markers", "system: starts system services as root; runs only with LIMIT_SYSTEM_TESTS=1")


def pytest_collection_modifyitems(config, items):
    if SYSTEM_TESTS:
        return
    skip = pytest.mark.skip(reason="system test (installs and starts Slurm, PostgreSQL or Chromium as root): "
                                   "set LIMIT_SYSTEM_TESTS=1 to run it")
    for item in items:
        if "system" in item.keywords:
            item.add_marker(skip)


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
    if not D.DEBIAN_FASHION_MNIST.exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    root = tmp_path_factory.mktemp("data")
    D.prepare_dataset("fashion_mnist", root)
    return root


@pytest.fixture(scope="session")
def make_labels(fmnist_dir, tmp_path_factory):
    """Write (once per setting) a labels file for a small Fashion-MNIST setting."""
    cache = {}
    out_dir = tmp_path_factory.mktemp("labels")
    train_y = D.load_arrays("fashion_mnist", fmnist_dir).train_y.numpy()

    def make(rate=0.5, n=512, seed=42, val_size=512, noise="uniform"):
        key = (rate, n, seed, val_size, noise)
        if key not in cache:
            arrays = D.make_noisy_labels(train_y, 10, "fashion_mnist", noise, rate, seed, n=n, val_size=val_size)
            path = out_dir / f"{noise}-{rate}-{n}-{seed}-{val_size}.npz"
            D.write_labels_file(path, arrays, {"dataset": "fashion_mnist", "noise": noise, "rate": rate, "n": n,
                                               "seed": seed, "val_size": val_size})
            cache[key] = path
        return cache[key]
    return make
