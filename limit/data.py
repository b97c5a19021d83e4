"""Datasets, the paper's train/validation splits, noisy-label files, and on-device batches.

MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 are read through torchvision's dataset classes and held in
memory as uint8 tensors; normalisation and CIFAR's crop + flip run on whole batches on the device.
Clothing1M streams from disk (``limit.datasets.clothing1m``, which uses this module's normalisation).

Splits and label noise use one ``numpy.random.default_rng(seed)`` stream per data setting, in the
authors' order (permutation -> n-subset -> train labels -> validation labels). The authors seeded
numpy's legacy global RNG instead, so the drawn indices differ from theirs; the procedure is the same.
"""
import argparse
import gzip
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from limit import noise as noise_models
from limit.config import positive_int
from limit.registry import DATASETS, DataError, dataset_info, dataset_name, split_sizes
from limit.runs.rundir import save_npz, write_atomic

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Datasets a Debian package installs offline: name -> (package, folder of its gzipped files).
DEBIAN_PACKAGES = {"fashion_mnist": ("dataset-fashion-mnist", DEBIAN_FASHION_MNIST)}

# ImageNet statistics everywhere, as the authors' code (docs/reproduction.md).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def normalisation(name):
    """(mean, std) per channel, as tensors shaped (C, 1, 1)."""
    info = dataset_info(name)
    if info.mean is not None:
        mean, std = info.mean, info.std
    elif info.channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = IMAGENET_MEAN[1:2], IMAGENET_STD[1:2]
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)


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


@dataclass
class ImageArrays:
    """A whole in-memory dataset: uint8 images (N, C, H, W) and int64 labels."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list  # class names, indexed by label (torchvision's, e.g. "T-shirt/top", "airplane", "0 - zero")


def load_arrays(name, data_dir):
    """Read MNIST / Fashion-MNIST / CIFAR through torchvision into uint8 tensors (N, C, H, W)."""
    import torchvision
    prepare_dataset(name, data_dir)
    if name not in DATASETS:
        from limit.datasets.images import cache_classes, read_cache
        return ImageArrays(*(torch.as_tensor(a) for a in read_cache(name)[:4]), classes=cache_classes(name))
    cls = getattr(torchvision.datasets, DATASETS[name].torchvision_class)
    out = []
    for train in (True, False):
        ds = cls(str(data_dir), train=train, download=False)
        x = torch.as_tensor(np.asarray(ds.data))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        out += [x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)]
    return ImageArrays(*out, classes=list(ds.classes))


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


def labels_hash(arrays):
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def data_sha256(images):
    """The identity of an in-memory dataset's content, not of its path: sha256 of its images and labels."""
    return labels_hash({"train_x": images.train_x.numpy(), "train_y": images.train_y.numpy(),
                        "test_x": images.test_x.numpy(), "test_y": images.test_y.numpy()})


def write_labels_file(path, arrays, meta):
    """Write the labels of one data setting atomically, with a content hash in its metadata."""
    meta = dict(meta, sha256=labels_hash(arrays))
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
    if labels_hash(arrays) != meta.get("sha256"):
        raise DataError(f"labels file {path} is corrupt: its content does not match its sha256")
    return arrays, meta


def to_float(x_uint8, mean, std):
    """uint8 (B, C, H, W) on the device -> normalised float32."""
    return (x_uint8.float().div_(255.0) - mean) / std


def random_crop_flip(x, generator, padding=4):
    """CIFAR augmentation on a whole uint8 batch: zero-pad by 4, random crop back, random horizontal flip.

    Offsets and flips are drawn on the CPU from ``generator`` so a run is reproducible and resumable
    on any device.
    """
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


class InMemorySplit:
    """Images of one split held on the device as uint8; yields normalised float batches.

    ``limit.datasets.clothing1m.Clothing1MSplit`` has the same interface for data streamed from disk.
    """

    def __init__(self, x_uint8, dataset, device, augment=False):
        self.x = x_uint8.to(device)
        self.mean, self.std = (t.to(device) for t in normalisation(dataset))
        self.augment = augment
        self.device = device

    def __len__(self):
        return len(self.x)

    def batches(self, batch_size, generator=None, shuffle=False, augment=False):
        """Yield (indices on the device, normalised float images); shuffle/augment draw from ``generator``."""
        order = torch.randperm(len(self.x), generator=generator) if shuffle else torch.arange(len(self.x))
        order = order.to(self.device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = self.x[idx]
            if augment and self.augment:
                x = random_crop_flip(x, generator)
            yield idx, to_float(x, self.mean, self.std)


@dataclass
class RunData:
    train: object          # InMemorySplit or Clothing1MSplit
    val: object
    test: object
    test_curve: object      # the test examples whose accuracy is logged every epoch (a prefix of test)
    train_noisy: torch.Tensor
    train_true: torch.Tensor
    is_corrupted: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    train_idx: np.ndarray
    num_classes: int
    labels_meta: dict  # the labels file's metadata: data setting and sha256


def load_run_data(cfg, device):
    """The data of one run: images on the device (or streamed), noisy labels from the labels file."""
    info = dataset_info(cfg["dataset"])
    arrays, meta = read_labels_file(cfg["labels"])
    if dataset_name(meta["dataset"]) != dataset_name(cfg["dataset"]):
        raise ValueError(f"labels file {cfg['labels']} is for {meta['dataset']!r}, not {cfg['dataset']!r}")
    val_key = "val_true" if cfg["clean_validation"] else "val_noisy"
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.int64, device=device)
    if info.streamed:
        from limit.datasets.clothing1m import Clothing1MSplit, release_dir
        splits = [Clothing1MSplit(release_dir(cfg["data_dir"]), s, device, normalisation(cfg["dataset"]),
                                  augment=s == "train" and info.augment,
                                  num_workers=cfg["num_workers"], decode=cfg["decode"])
                  for s in ("train", "val", "test")]
        test_labels = splits[2].labels
        splits.append(splits[2])
    else:
        images = load_arrays(cfg["dataset"], cfg["data_dir"])
        if meta.get("data_sha256") and meta["data_sha256"] != data_sha256(images):  # (older files: no record)
            raise DataError(f"labels file {cfg['labels']} was made from other {meta['dataset']} data than "
                            f"{cfg['data_dir']} holds; write it again with `limit corrupt`")
        if len(images.test_x) == 0:  # your own images without a test set: the validation images, labels as given
            images.test_x, images.test_y = images.train_x[arrays["val_idx"]], t(arrays["val_true"]).cpu()
        curve_size = cfg["test_curve_size"] or len(images.test_x)
        splits = [InMemorySplit(images.train_x[arrays["train_idx"]], cfg["dataset"], device, info.augment),
                  InMemorySplit(images.train_x[arrays["val_idx"]], cfg["dataset"], device),
                  InMemorySplit(images.test_x, cfg["dataset"], device),
                  InMemorySplit(images.test_x[:curve_size], cfg["dataset"], device)]
        test_labels = images.test_y
    return RunData(*splits, t(arrays["train_noisy"]), t(arrays["train_true"]),
                   torch.as_tensor(arrays["is_corrupted"], device=device), t(arrays[val_key]), t(test_labels),
                   arrays["train_idx"], info.num_classes, meta)


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
        data = labels_hash(arrays)  # its label lists: a million images are not read to write labels
    else:
        images = load_arrays(args.dataset, args.data_dir)
        train_labels = images.train_y.numpy()
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
