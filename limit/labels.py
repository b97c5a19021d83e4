"""Labels files: one data setting's train/validation split and noisy labels (``limit corrupt``), torch-free.

Splits and label noise use one ``numpy.random.default_rng(seed)`` stream per data setting, in the
authors' order (permutation -> n-subset -> train labels -> validation labels). The authors seeded
numpy's legacy global RNG instead, so the drawn indices differ from theirs; the procedure is the same.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from limit import noise as noise_models
from limit.config import positive_int
from limit.datasets.standard import arrays_sha256, data_sha256, read_arrays
from limit.registry import DataError, dataset_info, dataset_name, split_sizes
from limit.runs.rundir import save_npz


def split_indices(num_train, rng, n=None, val_size=None):
    """The authors' split: seeded permutation, first 80% train, rest validation (``registry.split_sizes``),
    then an n-subset of train drawn without replacement from the same stream.

    ``val_size`` optionally keeps only the first ``val_size`` validation indices (laptop configs).
    """
    perm = rng.permutation(num_train)
    cut = split_sizes(num_train)[0]
    train_idx, val_idx = perm[:cut], perm[cut:]
    if n is not None:
        if n > len(train_idx):
            raise DataError(f"n = {n} is larger than the training split ({len(train_idx)} examples)")
        train_idx = rng.choice(train_idx, n, replace=False)
    if val_size is not None:
        if val_size > len(val_idx):
            raise DataError(f"val_size = {val_size} is larger than the validation split ({len(val_idx)} examples)")
        val_idx = val_idx[:val_size]
    return train_idx, val_idx


def make_noisy_labels(train_labels, num_classes, dataset, noise, rate, seed, n=None, val_size=None,
                      human_labels=None):
    """Split and corrupt one data setting. Returns a dict of numpy arrays (the labels file's content).

    ``human_labels``: noisy labels of the whole training set from a file (CIFAR-N) instead of synthetic noise;
    the transition matrix is then the empirical one of the whole training set.
    """
    noise_models.check_noise(noise, rate, dataset, num_classes)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = split_indices(len(train_labels), rng, n=n, val_size=val_size)
    true_train, true_val = train_labels[train_idx], train_labels[val_idx]
    if human_labels is None:
        matrix = noise_models.transition_matrix(noise, rate, num_classes)
        noisy_train, is_corrupted = noise_models.corrupt_labels(true_train, matrix, rng)
        noisy_val, val_corrupted = noise_models.corrupt_labels(true_val, matrix, rng)
    else:
        counts = np.zeros((num_classes, num_classes))
        np.add.at(counts, (train_labels, human_labels), 1)
        matrix = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        noisy_train, noisy_val = human_labels[train_idx], human_labels[val_idx]
        is_corrupted, val_corrupted = noisy_train != true_train, noisy_val != true_val
    return {
        "train_idx": train_idx, "val_idx": val_idx,
        "train_true": true_train, "train_noisy": noisy_train, "is_corrupted": is_corrupted,
        "val_true": true_val, "val_noisy": noisy_val, "val_corrupted": val_corrupted,
        "transition_matrix": matrix,
    }


def write_labels_file(path, arrays, meta):
    """Write the labels of one data setting atomically, with a content hash in its metadata."""
    meta = dict(meta, sha256=arrays_sha256(arrays))
    save_npz(path, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    return meta


LABELS_KEYS = ("train_idx", "val_idx", "train_true", "train_noisy", "is_corrupted", "val_true", "val_noisy")


def read_labels_file(path):
    """Read a labels file, verifying its hash. Returns (arrays, meta); a DataError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"labels file {path} is empty")
    not_ours = f"labels file {path} is not a labels file (write one with `python -m limit corrupt`)"
    try:
        with np.load(path, allow_pickle=False) as f:
            contents = {k: f[k] for k in f.files}
    except Exception as exc:  # numpy and zipfile raise many types for torn or foreign files
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # .npz archives start so
        raise DataError(f"labels file {path} is truncated or corrupt ({type(exc).__name__}: {exc})" if is_zip
                        else f"{not_ours}: {type(exc).__name__}") from None
    if "meta" not in contents or not set(LABELS_KEYS) <= set(contents):
        raise DataError(not_ours)
    try:
        meta = json.loads(str(contents.pop("meta")))
    except ValueError:
        raise DataError(f"{not_ours}: unreadable metadata") from None
    arrays = contents
    if arrays_sha256(arrays) != meta.get("sha256"):
        raise DataError(f"labels file {path} is corrupt: its content does not match its sha256")
    return arrays, meta


def _count(text):
    """argparse type of --n: a positive integer or 'all'."""
    if text != "all" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return text


def add_corrupt_arguments(parser):
    parser.add_argument("--dataset", required=True, help="a dataset name or an image cache (import-images)")
    parser.add_argument("--data-dir", default="data",
                        help="data directory: a folder per dataset (Clothing1M's release in clothing1m/), and the "
                             "CIFAR-N label files")
    parser.add_argument("--noise", required=True,
                        help="given (labels as they are), uniform, symmetric, pair (CIFAR-10), asymmetric-mnist, "
                             "asymmetric-fashion-mnist, human-aggre, human-worst, human-random1..3 (CIFAR-10N), "
                             "human (CIFAR-100N)")
    parser.add_argument("--rate", type=float, required=True, help="noise rate p in [0, 1)")
    parser.add_argument("--n", type=_count, default="all", help="training-set size: an integer or 'all'")
    parser.add_argument("--seed", type=int, required=True, help="seed of the split and of the noise")
    parser.add_argument("--val-size", type=positive_int, default=None,
                        help="keep only this many validation examples")
    parser.add_argument("--out", required=True, help="labels file to write (.npz)")


def run_corrupt(args):
    info = dataset_info(args.dataset)
    if info.streamed:
        from limit.datasets.clothing1m import clothing1m_labels, release_dir
        arrays = clothing1m_labels(release_dir(args.data_dir))
        data = arrays_sha256(arrays)  # its label lists: a million images are not read to write labels
    else:
        images = read_arrays(args.dataset, args.data_dir)
        train_labels = images.train_y
        human = None
        if args.noise in noise_models.HUMAN_NOISE:
            from limit.datasets.cifar_n import human_labels
            human = human_labels(args.data_dir, args.dataset, args.noise, train_labels)
        arrays = make_noisy_labels(train_labels, info.num_classes, args.dataset, args.noise, args.rate, args.seed,
                                   n=None if args.n == "all" else int(args.n), val_size=args.val_size,
                                   human_labels=human)
        data = data_sha256(images)
    # What made it: the workflow refuses a labels file its rule would make otherwise (grid.labels_difference)
    meta = {"dataset": dataset_name(args.dataset), "noise": args.noise, "rate": args.rate, "n": args.n,
            "seed": args.seed, "val_size": args.val_size, "data_sha256": data}
    meta = write_labels_file(args.out, arrays, meta)
    print(f"{args.out}: {len(arrays['train_idx'])} train ({arrays['is_corrupted'].mean():.3f} corrupted), "
          f"{len(arrays['val_idx'])} validation, sha256 {meta['sha256'][:12]}")
