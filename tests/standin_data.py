"""Stand-in datasets in their real on-disk layouts, for tests that run the command line in subprocesses
(scripts/gpu-check, the rehearsal): MNIST-style IDX files and CIFAR pickles. (Clothing1M:
``limit.datasets.clothing1m.write_synthetic_release``.)

The images are learnable: each class lights its own cell of a grid over noise, so a network trained a few steps
is above chance and an accuracy check means something.

torchvision checks the CIFAR files against the real files' MD5 checksums. ``write_cifar`` records the stand-in's
checksums in ``<data_dir>/standin_checksums.json``; a subprocess started with ``standin_env(data_dir)`` checks them
instead (``tests/standin_site/sitecustomize.py``). The package itself always checks the real checksums.
"""
import hashlib
import json
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from limit.registry import DATASETS

SITE = Path(__file__).resolve().parent / "standin_site"
CHECKSUMS = "standin_checksums.json"
# name -> folder, training files, test file, meta file, label key, meta key
CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def class_images(labels, num_classes, channels, size, rng):
    """uint8 images (n, channels, size, size): noise below 100, and the cell of the label's class at 255."""
    grid = math.ceil(math.sqrt(num_classes))
    cell = size // grid
    images = rng.integers(0, 100, (len(labels), channels, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), grid)
        images[i, :, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = 255
    return images


def write_mnist_idx(data_dir, n_train, n_test, name="mnist", seed=0):
    """``<data_dir>/<MNIST|FashionMNIST>/raw/``: the four IDX files; returns (train_labels, test_labels)."""
    raw = Path(data_dir) / DATASETS[name].torchvision_class / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = class_images(labels, 10, 1, 28, rng)[:, 0]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
        out.append(labels)
    return tuple(out)


def _write_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return [path.name, hashlib.md5(path.read_bytes()).hexdigest()]


def write_cifar(data_dir, name, n_train, n_test, seed=0):
    """``<data_dir>/cifar-10-batches-py/`` or ``cifar-100-python/`` as released (CIFAR-10's training set in five
    batches), their checksums recorded for ``standin_env``; returns (train_labels, test_labels)."""
    folder, train_files, test_file, meta_file, label_key, meta_key = CIFAR_LAYOUTS[name]
    num_classes = DATASETS[name].num_classes
    root = Path(data_dir) / folder
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels = rng.integers(0, num_classes, n_train)
    test_labels = rng.integers(0, num_classes, n_test)

    def batch(labels):
        images = class_images(labels, num_classes, 3, 32, rng)
        return {"data": images.reshape(len(labels), 3072), label_key: labels.tolist(), "batch_label": "stand-in",
                "filenames": [f"{i}.png" for i in range(len(labels))]}

    lists = {"train_list": [_write_pickle(root / f, batch(part)) for f, part in
                            zip(train_files, np.array_split(train_labels, len(train_files)))],
             "test_list": [_write_pickle(root / test_file, batch(test_labels))]}
    _, meta_md5 = _write_pickle(root / meta_file, {meta_key: [f"class{i}" for i in range(num_classes)]})
    lists["meta"] = {"filename": meta_file, "key": meta_key, "md5": meta_md5}
    path = Path(data_dir) / CHECKSUMS
    recorded = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**recorded, DATASETS[name].torchvision_class: lists}, indent=1))
    return train_labels, test_labels


def standin_env(data_dir, environ=os.environ):
    """The environment of a subprocess that reads the stand-in data of ``data_dir`` (and of its children)."""
    path = os.pathsep.join(p for p in (str(SITE), environ.get("PYTHONPATH", "")) if p)
    return {**environ, "PYTHONPATH": path, "LIMIT_STANDIN_CHECKSUMS": str(Path(data_dir).resolve() / CHECKSUMS)}
