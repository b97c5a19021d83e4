"""CIFAR-10N / CIFAR-100N: human re-annotations of the CIFAR training sets (Wei et al., ICLR 2022).

The user supplies the release's label files (https://github.com/UCSC-REAL/cifar-10-100n, folder ``data/``) in
the data directory: ``CIFAR-10_human.pt`` (``clean_label``, ``aggre_label``, ``worse_label``,
``random_label1..3``) and ``CIFAR-100_human.pt`` (``clean_label``, ``noisy_label``), each a dict of 50,000 labels
in the order of torchvision's CIFAR training set. ``clean_label`` must equal CIFAR's own labels: the true labels are
known, so memorisation and detection are measured as for synthetic noise.
"""
from pathlib import Path

import numpy as np

from limit.noise import HUMAN_NOISE

HUMAN_LABEL_FILES = {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}


class CifarNError(ValueError):
    """A missing or malformed CIFAR-N label file."""


def label_file(data_dir, dataset):
    path = Path(data_dir) / HUMAN_LABEL_FILES[dataset]
    if not path.is_file():
        raise CifarNError(f"{path} is missing: download {HUMAN_LABEL_FILES[dataset]} from the folder data/ of "
                          f"https://github.com/UCSC-REAL/cifar-10-100n into {data_dir}")
    return path


def read_label_file(path):
    """The release's dict of label arrays, loaded as data only (numpy arrays are allowed, nothing else)."""
    import torch  # here, not above: checking a config for these files must not import torch
    reconstruct = np._core.multiarray._reconstruct
    numpy_globals = [np.ndarray, np.dtype, np.dtypes.Int64DType, np.dtypes.Int32DType, np.dtypes.UInt8DType,
                     reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct")]  # files pickled by numpy 1.x
    try:
        with torch.serialization.safe_globals(numpy_globals):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CifarNError(f"{path} is not a CIFAR-N label file: {exc}") from None
    if not isinstance(content, dict):
        raise CifarNError(f"{path} holds a {type(content).__name__}, not the release's dict of labels")
    return {k: np.asarray(v, dtype=np.int64) for k, v in content.items()}


def human_labels(data_dir, dataset, noise, train_labels):
    """The human labels of one noise type for the whole CIFAR training set, checked against its true labels."""
    expected, key = HUMAN_NOISE[noise]
    if dataset != expected:
        raise CifarNError(f"noise {noise!r} is a {expected} annotation, not one of {dataset}")
    path = label_file(data_dir, dataset)
    labels = read_label_file(path)
    for needed in ("clean_label", key):
        if needed not in labels:
            raise CifarNError(f"{path} has no {needed!r} (keys: {sorted(labels)})")
        if labels[needed].shape != (len(train_labels),):
            raise CifarNError(f"{path}: {needed!r} holds {labels[needed].shape} labels, expected "
                              f"{len(train_labels)} (one per CIFAR training image)")
    if not np.array_equal(labels["clean_label"], train_labels):
        raise CifarNError(f"{path}: clean_label differs from the CIFAR training labels in {data_dir} "
                          f"({int((labels['clean_label'] != train_labels).sum())} images); the files do not belong "
                          f"together")
    return labels[key]
