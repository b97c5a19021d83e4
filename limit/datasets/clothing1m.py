"""Clothing1M (Xiao et al. 2015) streamed from a directory in its official release layout, ``<data_dir>/clothing1m``.

Train = ``noisy_train_key_list.txt`` with noisy labels; validation and test = the clean lists with clean
labels (the authors select models on the clean validation set). JPEGs are decoded and resized
in DataLoader workers and sent to the device as uint8; normalisation runs there, as for ``InMemorySplit``.
Each split keeps one loader whose workers persist across epochs. ``decode="torchvision"`` has the workers
only read the files and decodes, resizes, crops and flips with ``torchvision.io.decode_jpeg`` and tensor
ops on the training device (the GPU when there is one); its resizing differs from PIL's in the last bits.
Torch is imported by the loading functions only: checking a release and reading its labels need none.
The functions here take the release directory; ``release_dir`` finds it in a data directory (``--data-dir``).
"""
import warnings
from itertools import islice
from pathlib import Path

import numpy as np

from limit.registry import DATASETS, DataError

NUM_CLASSES = DATASETS["clothing1m"].num_classes
NOISY_LABELS = "noisy_label_kv.txt"
CLEAN_LABELS = "clean_label_kv.txt"
KEY_LISTS = {"train": "noisy_train_key_list.txt", "val": "clean_val_key_list.txt", "test": "clean_test_key_list.txt"}
REQUIRED = ["images", NOISY_LABELS, CLEAN_LABELS, *KEY_LISTS.values()]
IMAGES_CHECKED = 5  # listed images checked per key list: enough to catch a wrong root or an unpacked archive


def release_dir(data_dir):
    """The Clothing1M release in a data directory: its ``clothing1m`` folder, as every dataset has its own."""
    return Path(data_dir) / "clothing1m"


def check_clothing1m_dir(root):
    """Raise DataError naming every missing file of the official layout and how to get the dataset."""
    root = Path(root)
    problems = [f"missing {name}" for name in REQUIRED if not (root / name).exists()]
    for key_list in KEY_LISTS.values():
        if not (root / key_list).exists():
            continue
        with open(root / key_list) as f:
            first = [line.strip() for line in islice(f, IMAGES_CHECKED) if line.strip()]
        absent = [p for p in first if not (root / p).is_file()]
        if not first:
            problems.append(f"{key_list} is empty")
        elif absent:
            problems.append(f"{len(absent)} of the first {len(first)} images in {key_list} are missing: "
                            f"{', '.join(absent)}")
    if problems:
        raise DataError(
            f"{str(root)!r} is not a complete Clothing1M release: {'; '.join(problems)}. "
            "Clothing1M must be requested from its authors (https://github.com/Cysu/noisy_label); unpack it into "
            f"the clothing1m folder of the data directory (--data-dir, the config's data_dir), which then holds "
            f"{', '.join(REQUIRED)} (image paths relative to it, as in the release).")


def write_synthetic_release(root, per_class=2, eval_per_class=1, image_shape=(12, 20), seed=2,
                            unreadable_per_split=0):
    """Write a synthetic Clothing1M release in the official layout into ``root`` (a data directory's release is
    ``release_dir(data_dir)``): random-pixel JPEGs of ``image_shape`` (height, width; not square, so resizing
    squashes), ``per_class`` training images and ``eval_per_class`` validation and test images per class. For
    tests, the GPU check and rehearsals.

    Training image k of class c is labelled c for even k and c + k (mod 14) for odd k; only even k have a
    clean label, c, except class 3's first image, clean label 4 (a known corrupted label). Validation and test
    images carry their class as their clean label. ``unreadable_per_split`` images from the middle of each key
    list are cut to 100 bytes, as a truncated download leaves them. Returns (split -> relative image paths in
    key-list order, split -> the unreadable ones).
    """
    from PIL import Image
    root = Path(root)
    rng = np.random.default_rng(seed)
    lists = {split: [] for split in KEY_LISTS}
    noisy_kv, clean_kv = [], []
    for split in KEY_LISTS:
        for c in range(NUM_CLASSES):
            for k in range(per_class if split == "train" else eval_per_class):
                rel = f"images/{c % 10}/{split}{c}_{k}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (*image_shape, 3), dtype=np.uint8)).save(root / rel)
                lists[split].append(rel)
                if split != "train":
                    clean_kv.append(f"{rel} {c}")
                    continue
                noisy_kv.append(f"{rel} {(c + k) % NUM_CLASSES if k % 2 else c}")
                if k % 2 == 0:
                    clean_kv.append(f"{rel} {(c + 1) % NUM_CLASSES if (c, k) == (3, 0) else c}")
    (root / NOISY_LABELS).write_text("\n".join(noisy_kv) + "\n")
    (root / CLEAN_LABELS).write_text("\n".join(clean_kv) + "\n")
    unreadable = {}
    for split, name in KEY_LISTS.items():
        (root / name).write_text("\n".join(lists[split]) + "\n")
        middle = len(lists[split]) // 2  # neither end: dropping it shifts every later example
        unreadable[split] = lists[split][middle:middle + unreadable_per_split]
        for rel in unreadable[split]:
            (root / rel).write_bytes((root / rel).read_bytes()[:100])
    return lists, unreadable


def _read_key_list(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _read_label_kv(path):
    labels = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                key, label = line.split()
                labels[key] = int(label)
    return labels


def read_clothing1m_split(root, split):
    """(relative image paths, labels, true labels) of ``split`` in train / val / test, labels as int64.

    For train the labels are the noisy ones and the true label is the clean one where the image has
    one, -1 where unknown; for val / test both are the clean labels.
    """
    if split not in KEY_LISTS:
        raise DataError(f"unknown Clothing1M split {split!r}; choose one of {sorted(KEY_LISTS)}")
    root = Path(root)
    paths = _read_key_list(root / KEY_LISTS[split])
    clean = _read_label_kv(root / CLEAN_LABELS)
    given = _read_label_kv(root / NOISY_LABELS) if split == "train" else clean
    unlabelled = [p for p in paths if p not in given]
    if unlabelled:
        source = NOISY_LABELS if split == "train" else CLEAN_LABELS
        raise DataError(f"{len(unlabelled)} images in {KEY_LISTS[split]} have no label in {source}, "
                        f"e.g. {unlabelled[0]}")
    labels = np.array([given[p] for p in paths], dtype=np.int64)
    true_labels = np.array([clean.get(p, -1) for p in paths], dtype=np.int64)
    if labels.size and not (labels.min() >= 0 and labels.max() < NUM_CLASSES):
        raise DataError(f"Clothing1M labels must lie in 0..{NUM_CLASSES - 1}")
    return paths, labels, true_labels


def clothing1m_labels(root):
    """The labels-file arrays of Clothing1M (the same keys as ``limit.labels.make_noisy_labels``).

    Train keeps its real noisy labels; ``is_corrupted`` is True only where a clean label is known and
    differs (``train_true`` is -1 where unknown). Validation is the clean validation set, as the authors'.
    """
    _, train_noisy, train_true = read_clothing1m_split(root, "train")
    _, val_labels, _ = read_clothing1m_split(root, "val")
    return {"train_idx": np.arange(len(train_noisy)), "val_idx": np.arange(len(val_labels)),
            "train_true": train_true, "train_noisy": train_noisy,
            "is_corrupted": (train_true >= 0) & (train_noisy != train_true),
            "val_true": val_labels, "val_noisy": val_labels, "val_corrupted": np.zeros(len(val_labels), bool),
            "transition_matrix": np.eye(NUM_CLASSES)}


def _resize_crop_flip(img, seed, image_size, resize_size):
    """Evaluation (seed -1): Resize((S, S)). Training: Resize((256, 256)) -> RandomCrop(224) ->
    RandomHorizontalFlip, drawn from the example's seed. ``img``: a PIL image or a (3, H, W) uint8 tensor."""
    import torch
    from torchvision.transforms import functional as TF
    if seed < 0:
        return TF.resize(img, [image_size, image_size])
    img = TF.resize(img, [resize_size, resize_size])
    gen = torch.Generator().manual_seed(seed)
    top, left = torch.randint(0, resize_size - image_size + 1, (2,), generator=gen).tolist()
    img = TF.crop(img, top, left, image_size, image_size)
    return TF.hflip(img) if torch.rand(1, generator=gen).item() < 0.5 else img


class _JpegDataset:
    """Keyed by (index, augmentation seed); seed -1 means no augmentation. Returns (index, uint8 (3, S, S) or
    None, the error of an unreadable image or None), or with ``raw`` the file's bytes (decoded in the main
    process). A map-style dataset of ``torch.utils.data.DataLoader``."""

    def __init__(self, files, image_size, resize_size, raw=False):
        self.files, self.image_size, self.resize_size, self.raw = files, image_size, resize_size, raw

    def __len__(self):
        return len(self.files)

    def __getitem__(self, key):
        index, seed = key
        if self.raw:
            return index, seed, Path(self.files[index]).read_bytes()  # bytes: no tensor through the queue
        from PIL import Image
        from torchvision.transforms import functional as TF
        try:
            with Image.open(self.files[index]) as img:
                img = img.convert("RGB")  # decodes: a truncated file raises here
        except (OSError, ValueError, SyntaxError) as exc:  # what PIL raises for a broken image
            return index, None, f"{type(exc).__name__}: {exc}"
        return index, TF.pil_to_tensor(_resize_crop_flip(img, seed, self.image_size, self.resize_size)), None


class _EpochKeys:
    """The (index, seed) keys of the current epoch: set before each pass, so a persistent loader can be reused (the
    loader's sampler)."""

    def __init__(self):
        self.keys = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self):
        return len(self.keys)


def _raw_batch(items):
    import torch
    indices, seeds, data = zip(*items)
    return torch.tensor(indices), list(seeds), list(data)


def _decoded_batch(items):
    """(indices of the readable images, their stacked images or None, {index: error} of the others)."""
    import torch
    good = [(i, x) for i, x, _ in items if x is not None]
    failed = {i: error for i, _, error in items if error is not None}
    return (torch.tensor([i for i, _ in good], dtype=torch.int64), torch.stack([x for _, x in good]) if good else None,
            failed)


def _decode_on_device(data, device):
    """decode_jpeg of a batch; a batch with a file it cannot decode is decoded one file at a time, and the
    unreadable ones come back as their errors: (images, {position: error})."""
    import torchvision
    mode = torchvision.io.ImageReadMode.RGB
    try:
        return torchvision.io.decode_jpeg(data, mode=mode, device=device), {}
    except RuntimeError:
        images, failed = [], {}
        for k, one in enumerate(data):
            try:
                images.append(torchvision.io.decode_jpeg(one, mode=mode, device=device))
            except RuntimeError as exc:
                images.append(None)
                failed[k] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        return images, failed


class Clothing1MSplit:
    """One Clothing1M split streamed from disk, with the interface of ``limit.data.InMemorySplit``.

    ``labels`` / ``true_labels`` (numpy) hold the split's labels, as from ``read_clothing1m_split``.
    An image that cannot be decoded (a truncated file, not a JPEG) is skipped wherever it comes, warned about
    once with its path, and kept in ``unreadable`` (path -> error); the run counts them in its metrics.
    """

    def __init__(self, root, split, device, normalisation, augment=False, num_workers=4, image_size=224,
                 decode="pil"):
        import torch
        self.root = Path(root)
        self.paths, self.labels, self.true_labels = read_clothing1m_split(root, split)
        self.device = torch.device(device)
        self.augment = augment
        self.decode = decode
        self.mean, self.std = (t.to(self.device) for t in normalisation)  # limit.data.normalisation
        self.image_size, self.resize_size = image_size, round(image_size * 256 / 224)
        dataset = _JpegDataset([str(self.root / p) for p in self.paths], self.image_size, self.resize_size,
                               raw=decode == "torchvision")
        self.keys = _EpochKeys()
        self.unreadable = {}
        self.loaders = {}  # batch size -> loader whose workers persist across epochs
        self.make_loader = lambda size: torch.utils.data.DataLoader(
            dataset, batch_size=size, sampler=self.keys, num_workers=num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
            collate_fn=_raw_batch if decode == "torchvision" else _decoded_batch)

    def __len__(self):
        return len(self.paths)

    def batches(self, batch_size, generator=None, shuffle=False, augment=False):
        """Yield (indices on the device, normalised float images); order and augmentation draw from ``generator``
        in the main process, so they do not depend on the number of workers."""
        import torch
        n = len(self.paths)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if augment and self.augment:
            seeds = torch.randint(0, 2 ** 62, (n,), generator=generator)
        else:
            seeds = torch.full((n,), -1, dtype=torch.int64)
        self.keys.keys = list(zip(order.tolist(), seeds.tolist()))
        if batch_size not in self.loaders:
            self.loaders[batch_size] = self.make_loader(batch_size)
        pin = self.device.type == "cuda"
        for batch in self.loaders[batch_size]:
            if self.decode == "torchvision":
                idx, seeds, files = batch
                data = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
                images, failed = _decode_on_device(data, self.device)
                failed = {int(idx[k]): error for k, error in failed.items()}
                keep = [k for k, img in enumerate(images) if img is not None]
                x = torch.stack([_resize_crop_flip(images[k], seeds[k], self.image_size, self.resize_size)
                                 for k in keep]) if keep else None
                idx = idx[keep]
            else:
                idx, x, failed = batch
            self._skipped(failed)
            if x is None:
                continue
            idx = idx.to(self.device, non_blocking=pin)
            x = x.to(self.device, non_blocking=pin)
            yield idx, (x.float().div_(255.0) - self.mean) / self.std

    def _skipped(self, failed):
        for index, error in failed.items():
            path = self.paths[index]
            if path not in self.unreadable:
                self.unreadable[path] = error
                warnings.warn(f"{path}: unreadable image, skipped ({error})", RuntimeWarning)
