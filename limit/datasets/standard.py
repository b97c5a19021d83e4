"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 on disk, torch-free: their files where torchvision's dataset classes
put them (Debian's offline copy of Fashion-MNIST decompressed there, or a download), and their arrays.

The MNIST family's IDX files are read here with numpy (as torchvision reads them: a labels job then starts in a
fraction of a second, without torch); CIFAR's pickles through torchvision, which checks each file's md5 first.
"""
import gzip
import hashlib
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from limit.registry import DATASETS, DataError, dataset_info
from limit.runs.rundir import write_atomic

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Datasets a Debian package installs offline: name -> (package, folder of its gzipped files).
DEBIAN_PACKAGES = {"fashion_mnist": ("dataset-fashion-mnist", DEBIAN_FASHION_MNIST)}

_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"]
_REQUIRED_FILES = {
    "mnist": [f"MNIST/raw/{f}" for f in _MNIST_FILES],
    "fashion_mnist": [f"FashionMNIST/raw/{f}" for f in _MNIST_FILES],
    "cifar10": [f"cifar-10-batches-py/{f}" for f in
                ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]],
    "cifar100": [f"cifar-100-python/{f}" for f in ["train", "test", "meta"]],
}


def _install_debian_files(dataset, data_dir):
    """Decompress a Debian package's files of ``dataset`` into torchvision's raw layout, if present. Returns the
    files it wrote."""
    raw = Path(data_dir) / DATASETS[dataset].torchvision_class / "raw"
    written = []
    for name in _MNIST_FILES:
        src = DEBIAN_PACKAGES[dataset][1] / f"{name}.gz"
        if (raw / name).exists() or not src.exists():
            continue
        with gzip.open(src, "rb") as fin:
            write_atomic(raw / name, lambda fout: shutil.copyfileobj(fin, fout))
        written.append(raw / name)
    return written


def prepare_dataset(name, data_dir, download=False):
    """Make sure a torchvision dataset's files are in ``data_dir``; download them if allowed. Returns the files
    decompressed from a Debian package into ``data_dir`` (none if they were there).

    Raises DataError naming the missing files and how to get them. (Clothing1M: ``check_clothing1m_dir``.)
    """
    dataset_info(name)
    if name not in DATASETS:
        return []  # an image cache: dataset_info has checked it
    if name not in _REQUIRED_FILES:
        raise DataError(f"{name} is not a torchvision dataset")
    copied = _install_debian_files(name, data_dir) if name in DEBIAN_PACKAGES else []
    missing = [f for f in _REQUIRED_FILES[name] if not (Path(data_dir) / f).exists()]
    if missing and download:
        import torchvision
        cls = getattr(torchvision.datasets, DATASETS[name].torchvision_class)
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
        missing = [f for f in _REQUIRED_FILES[name] if not (Path(data_dir) / f).exists()]
    if missing:
        hint = f"install Debian's package {DEBIAN_PACKAGES[name][0]} (offline), or " if name in DEBIAN_PACKAGES else ""
        raise DataError(
            f"data directory {str(data_dir)!r} lacks {name} files: {', '.join(missing)}. To get them, {hint}run "
            f"`python -m limit prepare --dataset {name} --data-dir {data_dir} --download` on a machine with internet.")
    return copied


class DatasetArrays(NamedTuple):
    """A whole in-memory dataset: uint8 images (N, C, H, W) and int64 labels, as numpy arrays."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list | None  # class names by label (CIFAR's, an image cache's); None for the MNIST family (torchvision's)


def read_idx(path):
    """An IDX file (the MNIST family's format: a magic number whose last byte is the rank, big-endian int32 sizes,
    then uint8 data) as a numpy array, as torchvision's ``read_sn3_pascalvincent_tensor`` reads it."""
    raw = np.fromfile(path, dtype=np.uint8)
    magic = int.from_bytes(raw[:4].tobytes(), "big")
    if magic >> 8 != 0x08:  # uint8 data: every file of the MNIST family
        raise DataError(f"{path} is not an IDX file of uint8 data (magic number {magic:#x})")
    rank = magic & 0xFF
    shape = [int(n) for n in raw[4:4 * (rank + 1)].view(">i4")]
    data = raw[4 * (rank + 1):]
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {data.size} values, its header says {shape}")
    return data.reshape(shape)


def dataset_files(name, data_dir):
    """The files a dataset is read from (an image cache: its arrays)."""
    if name not in DATASETS:
        from limit.datasets.images import CACHE_ARRAYS
        return [Path(name) / CACHE_ARRAYS]
    return [Path(data_dir) / f for f in _REQUIRED_FILES.get(name, ())]


def read_arrays(name, data_dir):
    """A dataset's images and labels (an image cache: as ``limit import-images`` wrote them)."""
    prepare_dataset(name, data_dir)
    if name not in DATASETS:
        from limit.datasets.images import cache_classes, read_cache
        cache = read_cache(name)
        return DatasetArrays(*cache[:4], classes=cache_classes(name))
    if DATASETS[name].torchvision_class in ("MNIST", "FashionMNIST"):
        train_x, train_y, test_x, test_y = (read_idx(Path(data_dir) / f) for f in _REQUIRED_FILES[name])
        return DatasetArrays(train_x[:, None], train_y.astype(np.int64), test_x[:, None], test_y.astype(np.int64),
                             classes=None)
    import torchvision
    cls = getattr(torchvision.datasets, DATASETS[name].torchvision_class)
    out = []
    for train in (True, False):
        ds = cls(str(data_dir), train=train, download=False)
        out += [np.ascontiguousarray(np.asarray(ds.data).transpose(0, 3, 1, 2)),
                np.asarray(ds.targets, dtype=np.int64)]
    return DatasetArrays(*out, classes=list(ds.classes))


def arrays_sha256(arrays):
    """sha256 of named arrays (a labels file's content, a dataset's), in the order of their names."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def data_sha256(images):
    """The identity of an in-memory dataset's content, not of its path: sha256 of its images and labels."""
    return arrays_sha256({"train_x": images.train_x, "train_y": images.train_y,
                          "test_x": images.test_x, "test_y": images.test_y})


def add_prepare_arguments(parser):
    parser.add_argument("--dataset", required=True, help=f"one of {sorted(DATASETS)}")
    parser.add_argument("--data-dir", default="data",
                        help="data directory: a folder per dataset (Clothing1M's release in clothing1m/)")
    parser.add_argument("--download", action="store_true", help="download missing files (needs internet)")


def run_prepare(args):
    copied = []
    if dataset_info(args.dataset).streamed:
        from limit.datasets.clothing1m import check_clothing1m_dir, release_dir
        check_clothing1m_dir(release_dir(args.data_dir))
    else:
        copied = prepare_dataset(args.dataset, args.data_dir, download=args.download)
    if copied:
        print(f"{args.dataset}: {len(copied)} files decompressed from Debian's package "
              f"({DEBIAN_PACKAGES[args.dataset][1]}) into {copied[0].parent}")
    else:
        print(f"{args.dataset}: files present in {args.data_dir}")
