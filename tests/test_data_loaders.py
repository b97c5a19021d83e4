"""Dataset readers on tiny fixtures in torchvision's on-disk formats, real Fashion-MNIST from Debian,
Clothing1M in its release layout, and the in-memory batches with CIFAR augmentation."""
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from limit import cli
from limit import data as D
from limit.data import DataError
from limit.datasets import standard as S
from limit.datasets.clothing1m import (
    KEY_LISTS,
    NUM_CLASSES,
    Clothing1MSplit,
    check_clothing1m_dir,
    clothing1m_labels,
    read_clothing1m_split,
    write_synthetic_release,
)

NORMALISATION = D.normalisation("clothing1m")


def write_idx(raw_dir, prefix, images, labels):
    raw_dir.mkdir(parents=True, exist_ok=True)
    n = len(images)
    (raw_dir / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    (raw_dir / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def write_mnist(data_dir, rng, sizes=(20, 10)):
    """Random MNIST IDX files of ``sizes`` (training, test) images: (train_x, train_y, test_x, test_y)."""
    train_x, test_x = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in sizes)
    train_y, test_y = (rng.integers(0, 10, n, dtype=np.uint8) for n in sizes)
    write_idx(data_dir / "MNIST" / "raw", "train", train_x, train_y)
    write_idx(data_dir / "MNIST" / "raw", "t10k", test_x, test_y)
    return train_x, train_y, test_x, test_y


def test_mnist_reads_exact_pixels_and_labels(tmp_path):
    train_x, train_y, test_x, test_y = write_mnist(tmp_path, np.random.default_rng(0))
    arrays = D.load_arrays("mnist", tmp_path)
    assert arrays.train_x.dtype == torch.uint8 and arrays.train_x.shape == (20, 1, 28, 28)
    assert arrays.test_x.shape == (10, 1, 28, 28)
    assert np.array_equal(arrays.train_x[:, 0].numpy(), train_x)
    assert np.array_equal(arrays.test_x[:, 0].numpy(), test_x)
    assert arrays.train_y.dtype == torch.int64 and np.array_equal(arrays.train_y.numpy(), train_y)
    assert np.array_equal(arrays.test_y.numpy(), test_y)


def test_a_truncated_idx_file_is_a_data_error(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated: 15580 values, its header says"):
        S.read_arrays("mnist", tmp_path)


def test_a_process_reads_a_dataset_once_until_its_files_change(tmp_path):
    rng = np.random.default_rng(0)
    write_mnist(tmp_path, rng)
    first, sha = D.dataset_in_memory("mnist", tmp_path)
    assert D.dataset_in_memory("mnist", tmp_path)[0] is first  # a pack's next run: the same tensors
    write_mnist(tmp_path, rng, sizes=(20, 11))
    again, other_sha = D.dataset_in_memory("mnist", tmp_path)
    assert again is not first and len(again.test_x) == 11 and other_sha != sha


def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return [path.name, hashlib.md5(path.read_bytes()).hexdigest()]


def cifar_batch(rng, n, label_key, num_classes):
    """A batch dict with images as (n, 3, 32, 32) for checking and rows of R, G, B planes as stored."""
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    return images, labels, {"data": images.reshape(n, 3072), label_key: labels,
                            "batch_label": "fixture", "filenames": [f"{i}.png" for i in range(n)]}


CIFAR_LAYOUTS = {  # name -> folder, training files, test file, meta file, label key, classes
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", 100),
}


def write_fake_cifar(data_dir, monkeypatch, name, per_file=4, seed=1):
    """A tiny CIFAR in torchvision's layout (its file list patched to match); returns the arrays written."""
    folder, train_files, test_file, meta_file, label_key, num_classes = CIFAR_LAYOUTS[name]
    rng = np.random.default_rng(seed)
    root = data_dir / folder
    train_list, train_x, train_y = [], [], []
    for file_name in train_files:
        images, labels, batch = cifar_batch(rng, per_file, label_key, num_classes)
        train_list.append(write_pickle(root / file_name, batch))
        train_x.append(images)
        train_y += labels
    test_x, test_y, batch = cifar_batch(rng, 3, label_key, num_classes)
    test_list = [write_pickle(root / test_file, batch)]
    meta_key = "label_names" if name == "cifar10" else "fine_label_names"
    _, meta_md5 = write_pickle(root / meta_file, {meta_key: [f"class{i}" for i in range(num_classes)]})
    cls = getattr(torchvision.datasets, D.DATASETS[name].torchvision_class)
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", {"filename": meta_file, "key": meta_key, "md5": meta_md5})
    return np.concatenate(train_x), train_y, test_x, test_y


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_exact_pixels_and_labels(tmp_path, monkeypatch, name):
    train_x, train_y, test_x, test_y = write_fake_cifar(tmp_path, monkeypatch, name)
    arrays = D.load_arrays(name, tmp_path)
    assert arrays.train_x.dtype == torch.uint8 and arrays.train_x.shape == (len(train_y), 3, 32, 32)
    assert np.array_equal(arrays.train_x.numpy(), train_x)
    assert arrays.train_y.tolist() == train_y
    assert np.array_equal(arrays.test_x.numpy(), test_x)
    assert arrays.test_y.tolist() == test_y


def test_fashion_mnist_from_debian(tmp_path):
    if not S.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({S.DEBIAN_FASHION_MNIST} absent)")
    S.prepare_dataset("fashion_mnist", tmp_path)
    arrays = D.load_arrays("fashion_mnist", tmp_path)
    assert arrays.train_x.shape == (60000, 1, 28, 28) and arrays.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(arrays.train_y).tolist() == [6000] * 10
    assert torch.bincount(arrays.test_y).tolist() == [1000] * 10


def test_prepare_says_where_the_files_came_from(tmp_path, capsys):
    """Into a directory that does not exist, `limit prepare` copies Debian's files and says so; it does not claim
    they were there."""
    if not S.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({S.DEBIAN_FASHION_MNIST} absent)")
    target = tmp_path / "nonexistent"
    assert cli.main(["prepare", "--dataset", "fashion_mnist", "--data-dir", str(target)]) == 0
    assert capsys.readouterr().out == (f"fashion_mnist: 4 files decompressed from Debian's package "
                                       f"({S.DEBIAN_FASHION_MNIST}) into {target / 'FashionMNIST' / 'raw'}\n")
    assert cli.main(["prepare", "--dataset", "fashion_mnist", "--data-dir", str(target)]) == 0
    assert capsys.readouterr().out == f"fashion_mnist: files present in {target}\n"


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_incomplete_dir_names_each_missing_file(tmp_path, name):
    required = S._REQUIRED_FILES[name]
    present, missing = required[0], required[1:]
    (tmp_path / present).parent.mkdir(parents=True)
    (tmp_path / present).write_bytes(b"")
    with pytest.raises(DataError) as err:
        S.prepare_dataset(name, tmp_path)
    message = str(err.value)
    assert all(f in message for f in missing)
    assert present not in message


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        S.prepare_dataset("imagenet", "/nonexistent")


CLOTHING_ENTRIES = ["images", "noisy_label_kv.txt", "clean_label_kv.txt", *KEY_LISTS.values()]


def test_clothing1m_splits_and_labels(tmp_path):
    root = tmp_path / "clothing1m"  # where docs/cluster.md puts the release in the data directory
    lists, _ = write_synthetic_release(root)
    check_clothing1m_dir(root)
    assert cli.main(["prepare", "--dataset", "clothing1m", "--data-dir", str(tmp_path)]) == 0

    paths, labels, true_labels = read_clothing1m_split(root, "train")
    assert paths == lists["train"] and len(paths) == 2 * NUM_CLASSES
    classes = np.repeat(np.arange(NUM_CLASSES), 2)
    assert labels.dtype == np.int64 and labels.tolist() == ((classes + np.tile([0, 1], NUM_CLASSES)) % 14).tolist()
    expected_true = np.where(np.tile([True, False], NUM_CLASSES), classes, -1)
    expected_true[6] = 4  # class 3's clean label was written as 4
    assert true_labels.tolist() == expected_true.tolist()
    arrays = clothing1m_labels(root)
    assert arrays["train_noisy"].tolist() == labels.tolist() and arrays["train_true"].tolist() == expected_true.tolist()
    assert arrays["is_corrupted"].tolist() == (np.arange(28) == 6).tolist()  # unknown clean labels count as clean
    assert arrays["val_noisy"].tolist() == arrays["val_true"].tolist() == list(range(NUM_CLASSES))

    for split in ("val", "test"):
        paths, labels, true_labels = read_clothing1m_split(root, split)
        assert paths == lists[split]
        assert labels.tolist() == true_labels.tolist() == list(range(NUM_CLASSES))


def test_clothing1m_batches(tmp_path):
    write_synthetic_release(tmp_path)
    size = 8
    train = Clothing1MSplit(tmp_path, "train", "cpu", NORMALISATION, augment=True, num_workers=0, image_size=size)
    test = Clothing1MSplit(tmp_path, "test", "cpu", NORMALISATION, num_workers=0, image_size=size)
    assert len(train) == 28 and len(test) == 14

    mean, std = D.normalisation("clothing1m")
    lo, hi = ((0 - mean) / std).min().item(), ((1 - mean) / std).max().item()
    for split, augment in ((train, True), (train, False), (test, False)):
        batches = list(split.batches(10, generator=torch.Generator().manual_seed(0), shuffle=True, augment=augment))
        assert [len(i) for i, _ in batches] == ([10, 10, 8] if split is train else [10, 4])
        idx = torch.cat([i for i, _ in batches])
        assert idx.dtype == torch.int64 and sorted(idx.tolist()) == list(range(len(split)))
        for _, x in batches:
            assert x.dtype == torch.float32 and x.shape[1:] == (3, size, size)
            assert lo - 1e-5 <= x.min() and x.max() <= hi + 1e-5

    # Unshuffled, unaugmented test images are the squashed JPEGs, normalised.
    idx, x = next(test.batches(14))
    assert idx.tolist() == list(range(14))
    with Image.open(tmp_path / test.paths[5]) as img:
        expected = torchvision.transforms.Compose([
            torchvision.transforms.Resize((size, size)), torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(mean.flatten().tolist(), std.flatten().tolist())])(img.convert("RGB"))
    assert torch.allclose(x[5], expected, atol=1e-5)

    def run(split, seed, augment=True):
        return list(split.batches(10, generator=torch.Generator().manual_seed(seed), shuffle=True, augment=augment))

    # Order and crops/flips come from the generator alone, whatever the number of workers.
    in_workers = Clothing1MSplit(tmp_path, "train", "cpu", NORMALISATION, augment=True, num_workers=2, image_size=size)
    first, again, other = run(train, 1), run(in_workers, 1), run(train, 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, run(train, 1, augment=False)))

    # Each augmented image is a size x size window of the image resized to 9 x 9 (256/224 scale), maybe flipped.
    resize = torchvision.transforms.Compose([torchvision.transforms.Resize((9, 9)), torchvision.transforms.ToTensor()])
    for i, x in zip(*first[0]):
        with Image.open(tmp_path / train.paths[i]) as img:
            big = (resize(img.convert("RGB")) - mean) / std
        windows = [big[:, r:r + size, c:c + size] for r in range(2) for c in range(2)]
        assert any(torch.allclose(x, w, atol=1e-5) or torch.allclose(x, w.flip(-1), atol=1e-5) for w in windows)


def test_clothing1m_missing_files_are_named(tmp_path):
    lists, _ = write_synthetic_release(tmp_path)
    (tmp_path / "clean_label_kv.txt").unlink()
    (tmp_path / "clean_test_key_list.txt").unlink()
    (tmp_path / lists["val"][0]).unlink()
    with pytest.raises(DataError) as err:
        check_clothing1m_dir(tmp_path)
    message = str(err.value)
    assert "missing clean_label_kv.txt" in message and "missing clean_test_key_list.txt" in message
    assert "missing noisy_label_kv.txt" not in message
    assert lists["val"][0] in message and "authors" in message and "--data-dir" in message

    with pytest.raises(DataError) as err:
        check_clothing1m_dir(tmp_path / "empty")
    assert all(f"missing {entry}" in str(err.value) for entry in CLOTHING_ENTRIES)


def test_random_crop_flip_is_a_window_of_the_padded_image():
    x = torch.randint(0, 256, (500, 3, 6, 5), dtype=torch.uint8)
    out = D.random_crop_flip(x, torch.Generator().manual_seed(0), padding=4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    # every 6 x 5 window of each padded image: (image, row, column, channel, height, width)
    windows = padded.unfold(2, 6, 1).unfold(3, 5, 1).permute(0, 2, 3, 1, 4, 5)
    same = lambda a: (a == out[:, None, None]).flatten(3).all(-1).flatten(1).any(-1)
    plain, mirrored = same(windows), same(windows.flip(-1))
    assert (plain | mirrored).all()
    assert 0.4 < (mirrored & ~plain).float().mean() < 0.6


def test_in_memory_split_batches_are_reproducible():
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    split = D.InMemorySplit(x, "cifar10", "cpu", augment=True)
    assert len(split) == 50

    def run(seed, augment=True):
        return list(split.batches(16, generator=torch.Generator().manual_seed(seed), shuffle=True, augment=augment))

    first, again, other = run(3), run(3), run(4)
    assert [len(i) for i, _ in first] == [16, 16, 16, 2]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    mean, std = D.normalisation("cifar10")
    for idx, images in run(3, augment=False):  # without augmentation: exactly the stored images, normalised
        assert torch.allclose(images, (x[idx].float() / 255 - mean) / std)


def test_clothing1m_persistent_workers_and_torchvision_decoding(tmp_path):
    """One loader per split and batch size, its workers alive across epochs; decode_jpeg gives the same batches
    (order, crops, flips) as PIL up to resizing's last bits."""
    write_synthetic_release(tmp_path)
    size = 8
    pil = Clothing1MSplit(tmp_path, "train", "cpu", NORMALISATION, augment=True, num_workers=2, image_size=size)
    tv = Clothing1MSplit(tmp_path, "train", "cpu", NORMALISATION, augment=True, num_workers=2, image_size=size,
                         decode="torchvision")

    def epoch(split, seed):
        return list(split.batches(10, generator=torch.Generator().manual_seed(seed), shuffle=True, augment=True))

    first = epoch(pil, 1)
    workers = pil.loaders[10]._iterator._workers
    second = epoch(pil, 2)
    assert pil.loaders[10]._iterator._workers == workers and all(w.is_alive() for w in workers)
    assert not torch.equal(first[0][0], second[0][0])  # a new epoch's order through the same workers
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, epoch(pil, 1)))
    for (i_pil, x_pil), (i_tv, x_tv) in zip(epoch(pil, 3), epoch(tv, 3)):
        assert torch.equal(i_pil, i_tv)
        assert (x_pil - x_tv).abs().mean() < 0.1  # normalised units: a few grey levels on average
    for split in (pil, tv):  # stop the workers now, not whenever a later test collects the loaders
        for loader in split.loaders.values():
            loader._iterator._shutdown_workers()


@pytest.mark.parametrize("decode", ["pil", "torchvision"])
def test_clothing1m_unreadable_images_are_skipped_named_and_counted(tmp_path, decode):
    """A truncated JPEG and a file that is no image never stop an epoch: skipped, warned about once with their
    paths, and kept in the split's ``unreadable``."""
    _, unreadable = write_synthetic_release(tmp_path, unreadable_per_split=1)  # train image 14: truncated
    train = Clothing1MSplit(tmp_path, "train", "cpu", NORMALISATION, augment=True, num_workers=0, image_size=8,
                            decode=decode)
    assert unreadable["train"] == [train.paths[14]]
    (tmp_path / train.paths[10]).write_text("not a JPEG")
    with pytest.warns(RuntimeWarning, match="unreadable image, skipped") as caught:
        batches = list(train.batches(10, generator=torch.Generator().manual_seed(0), shuffle=True, augment=True))
    assert sorted(torch.cat([i for i, _ in batches]).tolist()) == sorted(set(range(28)) - {14, 10})
    assert all(len(i) == len(x) for i, x in batches)
    assert set(train.unreadable) == {train.paths[14], train.paths[10]}
    assert len([w for w in caught if "unreadable" in str(w.message)]) == 2
    list(train.batches(10))  # a second pass warns no more, skips the same
    assert len(train.unreadable) == 2
