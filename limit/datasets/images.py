"""Your own images: an ImageFolder tree (``root/<class>/<image>``) or a CSV of ``path,label`` next to its images,
decoded once into a uint8 cache that trains like a built-in dataset (``--dataset CACHE_DIR``).

``python -m limit import-images`` checks the whole source first (unreadable images, class folders without
images, labels outside the class list, mixed image sizes without a resize) and then decodes every image once,
with a progress bar, into ``CACHE_DIR/images.npz``; ``CACHE_DIR/dataset.json`` (classes, channels, size,
normalisation) is written last and marks a complete cache. Torch-free: the workflow checks sources when it parses.
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from limit.registry import IMAGE_CACHE_INFO
from limit.runs import rundir

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CACHE_ARRAYS = "images.npz"


class ImageSourceError(ValueError):
    """An image source that cannot become a dataset; the message names the file and the fix."""


@dataclass
class ImageSource:
    paths: list      # absolute paths
    labels: np.ndarray
    classes: list


def _image_files(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_imagefolder(root, classes=None):
    """``root/<class>/<image>``: one class per sub-folder (sorted names unless ``classes`` gives the order)."""
    folders = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    if not folders:
        raise ImageSourceError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    if classes is None:
        classes = folders
    paths, labels = [], []
    for name in folders:
        if name not in classes:
            raise ImageSourceError(f"{root}/{name}: label {name!r} is not in the class list {list(classes)}")
        files = _image_files(Path(root) / name)
        if not files:
            raise ImageSourceError(f"{root}/{name}: class folder has no images "
                                   f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths += [str(f.resolve()) for f in files]
        labels += [classes.index(name)] * len(files)
    return ImageSource(paths, np.array(labels, dtype=np.int64), list(classes))


def scan_csv(csv_path, classes=None):
    """A CSV with a header ``path,label``; paths relative to the CSV's folder; classes sorted unless given."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise ImageSourceError(f"{csv_path}: needs a header with the columns path,label "
                                   f"(found {reader.fieldnames})")
        rows = [(reader.line_num, r["path"], r["label"]) for r in reader]
    if not rows:
        raise ImageSourceError(f"{csv_path}: no images listed")
    if classes is None:
        classes = sorted({label for _, _, label in rows})
    paths, labels = [], []
    for line, path, label in rows:
        if label not in classes:
            raise ImageSourceError(f"{csv_path}, line {line}: label {label!r} is not in the class list "
                                   f"{list(classes)}")
        full = (csv_path.parent / path).resolve()
        if not full.is_file():
            raise ImageSourceError(f"{csv_path}, line {line}: image {path!r} does not exist ({full})")
        paths.append(str(full))
        labels.append(classes.index(label))
    return ImageSource(paths, np.array(labels, dtype=np.int64), list(classes))


def scan_source(source, classes=None):
    """An ImageFolder root (a directory) or a CSV file."""
    source = Path(source)
    if source.is_dir():
        return scan_imagefolder(source, classes)
    if source.is_file() and source.suffix.lower() == ".csv":
        return scan_csv(source, classes)
    if not source.exists():
        raise ImageSourceError(f"{source}: no such file or directory")
    raise ImageSourceError(f"{source}: neither an ImageFolder directory nor a .csv file")


def headers_cache(data_dir):
    """Where the image headers read are remembered: beside the decoded caches (``import_images`` writes it)."""
    return Path(data_dir) / ".image_headers"


def image_geometry(paths, size=None, cache_dir=None, remember=False):
    """Open every image's header: (channels, side). Channels are 1 when every image is greyscale, else 3.

    Without ``size`` every image must have the same square size. ``cache_dir``: answers already found there,
    keyed by every file's path, size and modification time, are not read again; ``remember``: the answer is
    written there (the import job does; parsing the workflow only reads, so a dry run writes nothing).
    """
    if cache_dir is None:
        return _read_geometry(paths, size)
    import hashlib
    listing = [(p, st.st_size, st.st_mtime_ns) for p in paths for st in [Path(p).stat()]]
    key = hashlib.sha256(json.dumps([listing, size]).encode()).hexdigest()
    cached = Path(cache_dir) / f"{key}.json"
    if cached.exists():
        return tuple(json.loads(cached.read_text()))
    geometry = _read_geometry(paths, size)
    if remember:
        rundir.write_json(cached, list(geometry))
    return geometry


def _read_geometry(paths, size):
    from PIL import Image
    sizes, grey = {}, True
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size, path)
                grey &= image.mode in ("1", "L", "LA", "I", "I;16", "F")
        except Exception as exc:  # PIL raises several types for foreign or broken files
            raise ImageSourceError(f"{path}: unreadable image ({exc})") from None
    if size is None:
        if len(sizes) > 1:
            (a, pa), (b, pb) = list(sizes.items())[:2]
            raise ImageSourceError(f"mixed image sizes without a resize: {pa} is {a[0]}x{a[1]}, {pb} is "
                                   f"{b[0]}x{b[1]}; set size to resize every image to size x size")
        (w, h), path = next(iter(sizes.items()))
        if w != h:
            raise ImageSourceError(f"{path} is {w}x{h}, not square; set size to resize every image to size x size")
        size = w
    return (1 if grey else 3), size


def decode(paths, channels, size, desc):
    """Every image as uint8 (N, C, size, size), decoded once, with a progress bar on a terminal."""
    from PIL import Image
    from tqdm import tqdm
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="image", disable=None)):
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except Exception as exc:
            raise ImageSourceError(f"{path}: unreadable image ({exc})") from None
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


def check_sources(source, test=None, classes=None, size=None, channels=None, cache_dir=None, remember=False):
    """Everything ``import_images`` checks before decoding; returns (train source, test source, channels, size).
    ``cache_dir``, ``remember``: image headers already read (see ``image_geometry``)."""
    train = scan_source(source, classes)
    test_source = scan_source(test, train.classes) if test else None
    paths = train.paths + (test_source.paths if test_source else [])
    found_channels, size = image_geometry(paths, size, cache_dir, remember)
    if channels not in (None, 1, 3):
        raise ImageSourceError(f"channels must be 1 or 3, not {channels}")
    return train, test_source, channels or found_channels, size


def import_images(source, out_dir, test=None, classes=None, size=None, channels=None, mean=None, std=None):
    """Check ``source`` (and the optional ``test`` source, same classes), decode it once into ``out_dir``.

    ``mean``/``std`` (per channel, on the 0-1 scale) default to the statistics of the training images.
    Returns the cache's info (the content of ``dataset.json``).
    """
    headers = headers_cache(Path(out_dir).resolve().parent)  # the next parse of the workflow reads it
    train, test_source, channels, size = check_sources(source, test, classes, size, channels, headers, remember=True)
    train_x = decode(train.paths, channels, size, "decoding training images")
    test_x = (decode(test_source.paths, channels, size, "decoding test images") if test_source
              else np.empty((0, channels, size, size), dtype=np.uint8))
    if mean is None or std is None:
        pixels = train_x.transpose(1, 0, 2, 3).reshape(channels, -1) / 255.0
        mean, std = pixels.mean(1).tolist() if mean is None else mean, pixels.std(1).tolist() if std is None else std
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ImageSourceError(f"mean and std need {channels} values each (std > 0), got {mean} and {std}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / IMAGE_CACHE_INFO).unlink(missing_ok=True)  # a cache is complete only once dataset.json is back
    rundir.save_npz(out / CACHE_ARRAYS, train_x=train_x, train_y=train.labels,
                    train_paths=np.array(train.paths, dtype=str), test_x=test_x,
                    test_y=test_source.labels if test_source else np.empty(0, dtype=np.int64),
                    test_paths=np.array(test_source.paths if test_source else [], dtype=str))
    info = {"name": out.resolve().name, "source": str(source), "test": str(test) if test else None,
            "classes": train.classes,
            "channels": channels, "size": size, "mean": list(mean), "std": list(std),
            "num_train": len(train.paths), "num_test": len(test_x)}
    rundir.write_json(out / IMAGE_CACHE_INFO, info)
    return info


def cache_classes(cache_dir):
    return json.loads((Path(cache_dir) / IMAGE_CACHE_INFO).read_text())["classes"]


class CacheArrays(NamedTuple):
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray   # empty without a test source: runs then report accuracy on the validation split
    test_y: np.ndarray
    train_paths: np.ndarray
    test_paths: np.ndarray


def read_cache(cache_dir):
    with np.load(Path(cache_dir) / CACHE_ARRAYS, allow_pickle=False) as f:
        return CacheArrays(*(f[k] for k in CacheArrays._fields))


def add_import_images_arguments(parser):
    parser.description = ("SOURCE is an ImageFolder tree (root/<class>/<image>) or a CSV with the columns path,label "
                          "(paths relative to the CSV). The cache directory --out is then a dataset: `corrupt "
                          "--dataset OUT --noise given --rate 0`, `train --dataset OUT`.")
    parser.add_argument("source", help="ImageFolder root or CSV file of the training images")
    parser.add_argument("--test", help="optional test images (same layout and classes); without them, runs report "
                                       "accuracy on the validation split")
    parser.add_argument("--classes", nargs="+", help="the class list, in label order (default: sorted names)")
    parser.add_argument("--size", type=int, help="resize every image to SIZE x SIZE (default: all must share one "
                                                 "size)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 (greyscale) or 3 (RGB); default: 1 if "
                                                                     "every image is greyscale")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean on the 0-1 scale (default: "
                                                              "computed over the training images)")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std (default: computed likewise)")
    parser.add_argument("--out", required=True, help="cache directory to write")


def run_import_images(args):
    info = import_images(args.source, args.out, test=args.test, classes=args.classes, size=args.size,
                         channels=args.channels, mean=args.mean, std=args.std)
    print(f"{args.out}: {info['num_train']} training and {info['num_test']} test images, {len(info['classes'])} "
          f"classes, {info['channels']} x {info['size']} x {info['size']}, mean {info['mean']}, std {info['std']}; "
          f"train with --dataset {args.out}")
