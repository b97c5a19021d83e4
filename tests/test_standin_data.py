"""The stand-in datasets of tests/standin_data.py are what the package reads in a subprocess, and the real CIFAR
checksums still hold everywhere else."""
import json
import subprocess
import sys

import numpy as np
import pytest

from limit import data as D

from standin_data import standin_env, write_cifar, write_mnist_idx

NAMES = ["mnist", "fashion_mnist", "cifar10", "cifar100"]
READ = ("import json, sys; from limit import data as D; arrays = [D.load_arrays(name, sys.argv[1]) for name in "
        f"{NAMES}]; print(json.dumps([[a.train_y.tolist(), a.test_y.tolist(), len(a.classes)] for a in arrays]))")


@pytest.mark.pipeline
def test_a_subprocess_reads_the_stand_ins_exactly(tmp_path):
    written = [write_mnist_idx(tmp_path, 23, 7, name=name) if "mnist" in name else write_cifar(tmp_path, name, 23, 7)
               for name in NAMES]
    done = subprocess.run([sys.executable, "-c", READ, str(tmp_path)], capture_output=True, text=True,
                          env=standin_env(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[train.tolist(), test.tolist(), 100 if name == "cifar100" else 10]
                                       for name, (train, test) in zip(NAMES, written)]


def test_without_the_stand_in_environment_the_real_checksums_refuse_it(tmp_path):
    write_cifar(tmp_path, "cifar10", 10, 5)
    with pytest.raises(RuntimeError, match="corrupted"):
        D.load_arrays("cifar10", tmp_path)


def test_the_stand_in_images_are_learnable():
    """Each class lights its own cell: the brightest cell of an image names its label."""
    rng = np.random.default_rng(0)
    from standin_data import class_images
    labels = rng.integers(0, 100, 200)
    images = class_images(labels, 100, 3, 32, rng)
    cells = images[:, 0, :30, :30].reshape(200, 10, 3, 10, 3).mean(axis=(2, 4)).reshape(200, 100)
    assert (cells.argmax(1) == labels).all()
