"""A run's data on its device: images held in memory as uint8 tensors (or streamed), its labels file's labels, and
batches; normalisation and CIFAR's crop + flip run on whole batches on the device. Clothing1M streams from disk
(``limit.datasets.clothing1m``, which uses this module's normalisation). The files and the labels files:
``limit.datasets.standard`` and ``limit.labels`` (torch-free).
"""
import functools
from dataclasses import dataclass

import numpy as np
import torch

from limit.datasets.standard import data_sha256, dataset_files, read_arrays
from limit.labels import read_labels_file
from limit.registry import DATASETS, DataError, dataset_info, dataset_name

# ImageNet statistics everywhere, as the authors' code (docs/reproduction.md).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


@dataclass
class ImageArrays:
    """A whole in-memory dataset: uint8 images (N, C, H, W) and int64 labels."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list  # class names, indexed by label (torchvision's, e.g. "T-shirt/top", "airplane", "0 - zero")


def load_arrays(name, data_dir):
    """A dataset in memory as tensors (``datasets.standard.read_arrays``)."""
    arrays = read_arrays(name, data_dir)
    classes = arrays.classes
    if classes is None:  # the MNIST family's names are torchvision's (whose import a training job makes anyway)
        import torchvision
        classes = list(getattr(torchvision.datasets, DATASETS[name].torchvision_class).classes)
    return ImageArrays(*(torch.as_tensor(a) for a in arrays[:4]), classes=classes)


def dataset_in_memory(name, data_dir):
    """``load_arrays`` and the data's sha256, read once per process while the files stay as they are: the runs of a
    pack trained one after another in one process share them."""
    stamps = []
    for path in dataset_files(name, data_dir):
        try:
            stat = path.stat()
            stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((str(path), None, None))  # load_arrays says what is missing
    return _dataset_in_memory(name, str(data_dir), tuple(stamps))


@functools.lru_cache(maxsize=1)
def _dataset_in_memory(name, data_dir, stamps):
    images = load_arrays(name, data_dir)
    return images, data_sha256(images)


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
        images, sha256 = dataset_in_memory(cfg["dataset"], cfg["data_dir"])
        if meta.get("data_sha256") and meta["data_sha256"] != sha256:  # (older files: no record)
            raise DataError(f"labels file {cfg['labels']} was made from other {meta['dataset']} data than "
                            f"{cfg['data_dir']} holds; write it again with `limit corrupt`")
        test_x, test_labels = images.test_x, images.test_y
        if len(test_x) == 0:  # your own images without a test set: the validation images, labels as given
            test_x, test_labels = images.train_x[arrays["val_idx"]], t(arrays["val_true"]).cpu()
        curve_size = cfg["test_curve_size"] or len(test_x)
        splits = [InMemorySplit(images.train_x[arrays["train_idx"]], cfg["dataset"], device, info.augment),
                  InMemorySplit(images.train_x[arrays["val_idx"]], cfg["dataset"], device),
                  InMemorySplit(test_x, cfg["dataset"], device),
                  InMemorySplit(test_x[:curve_size], cfg["dataset"], device)]
    return RunData(*splits, t(arrays["train_noisy"]), t(arrays["train_true"]),
                   torch.as_tensor(arrays["is_corrupted"], device=device), t(arrays[val_key]), t(test_labels),
                   arrays["train_idx"], info.num_classes, meta)
