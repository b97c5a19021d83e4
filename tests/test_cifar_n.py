"""CIFAR-10N / CIFAR-100N: the release's human-label files (tiny fakes in the official layout) become noise types."""
import numpy as np
import pytest
import torch
from test_data_loaders import write_fake_cifar

from limit import labels as L
from limit.cli import main
from limit.runs.grid import ConfigError, expand_runs

CIFAR10_KEYS = ["aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"]


def write_human_file(path, clean, keys, seed=0, num_classes=10):
    """The release's layout: torch.save of a dict of numpy int arrays, one label per CIFAR training image."""
    rng = np.random.default_rng(seed)
    content = {"clean_label": np.asarray(clean, dtype=np.int64)}
    for key in keys:
        noisy = content["clean_label"].copy()
        flip = rng.random(len(noisy)) < 0.4
        noisy[flip] = rng.integers(0, num_classes, flip.sum())
        content[key] = noisy
    torch.save(content, path)
    return content


@pytest.mark.parametrize("noise, key", [("human-aggre", "aggre_label"), ("human-worst", "worse_label"),
                                        ("human-random1", "random_label1"), ("human-random3", "random_label3")])
def test_cifar10n_noise_types_take_the_human_labels_and_keep_the_true_ones(tmp_path, monkeypatch, noise, key):
    _, train_y, _, _ = write_fake_cifar(tmp_path, monkeypatch, "cifar10", per_file=8)
    human = write_human_file(tmp_path / "CIFAR-10_human.pt", train_y, CIFAR10_KEYS)
    out = tmp_path / "labels.npz"
    assert main(["corrupt", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--noise", noise, "--rate", "0",
                 "--seed", "3", "--out", str(out)]) == 0
    arrays, meta = L.read_labels_file(out)
    assert meta["noise"] == noise
    idx = np.concatenate([arrays["train_idx"], arrays["val_idx"]])
    assert len(idx) == 40 and len(set(idx)) == 40  # the usual 80/20 split of the 40 images
    assert np.array_equal(arrays["train_noisy"], human[key][arrays["train_idx"]])
    assert np.array_equal(arrays["val_noisy"], human[key][arrays["val_idx"]])
    assert np.array_equal(arrays["train_true"], np.asarray(train_y)[arrays["train_idx"]])
    assert np.array_equal(arrays["is_corrupted"], arrays["train_noisy"] != arrays["train_true"])
    assert arrays["is_corrupted"].any()
    assert np.allclose(arrays["transition_matrix"][np.unique(train_y)].sum(1), 1.0)


def test_cifar100n_human_noise(tmp_path, monkeypatch):
    _, train_y, _, _ = write_fake_cifar(tmp_path, monkeypatch, "cifar100", per_file=30)
    human = write_human_file(tmp_path / "CIFAR-100_human.pt", train_y, ["noisy_label"], num_classes=100)
    out = tmp_path / "labels.npz"
    assert main(["corrupt", "--dataset", "cifar100", "--data-dir", str(tmp_path), "--noise", "human", "--rate", "0",
                 "--seed", "1", "--out", str(out)]) == 0
    arrays, _ = L.read_labels_file(out)
    assert np.array_equal(arrays["train_noisy"], human["noisy_label"][arrays["train_idx"]])
    assert np.array_equal(arrays["train_true"], np.asarray(train_y)[arrays["train_idx"]])


@pytest.mark.parametrize("case, message", [
    ("missing", "CIFAR-10_human.pt is missing: download"),
    ("other_images", "clean_label differs from the CIFAR training labels"),
    ("no_key", "has no 'aggre_label'"),
    ("short", "expected 40"),
    ("not_a_dict", "not the release's dict"),
    ("garbage", "not a CIFAR-N label file"),
])
def test_bad_cifar_n_files_give_one_error_line(tmp_path, monkeypatch, capsys, case, message):
    _, train_y, _, _ = write_fake_cifar(tmp_path, monkeypatch, "cifar10", per_file=8)
    path = tmp_path / "CIFAR-10_human.pt"
    if case == "other_images":
        write_human_file(path, (np.asarray(train_y) + 1) % 10, CIFAR10_KEYS)
    elif case == "no_key":
        write_human_file(path, train_y, ["worse_label"])
    elif case == "short":
        write_human_file(path, train_y[:30], CIFAR10_KEYS)
    elif case == "not_a_dict":
        torch.save(np.asarray(train_y), path)
    elif case == "garbage":
        path.write_bytes(b"not a torch file")
    assert main(["corrupt", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--noise", "human-aggre",
                 "--rate", "0", "--seed", "1", "--out", str(tmp_path / "l.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("dataset, noise, rate, message", [
    ("cifar100", "human-aggre", 0, "defined only for cifar10"),
    ("cifar10", "human", 0, "defined only for cifar100"),
    ("cifar10", "human-worst", 0.2, "the human labels set the noise"),
])
def test_human_noise_types_belong_to_their_dataset(dataset, noise, rate, message):
    with pytest.raises(ValueError, match=message):
        L.make_noisy_labels(np.zeros(50, dtype=np.int64), 10, dataset, noise, rate, seed=0,
                            human_labels=np.zeros(50, dtype=np.int64))


def test_cifar_n_config_needs_the_label_file_before_any_job(tmp_path):
    import yaml
    config = yaml.safe_load(open("config/cifar_n.yaml"))
    config["data_dir"] = str(tmp_path)
    with pytest.raises(ConfigError, match="CIFAR-10_human.pt is missing"):
        expand_runs(config)
    for name in ("CIFAR-10_human.pt", "CIFAR-100_human.pt"):
        (tmp_path / name).write_bytes(b"")
    rows = expand_runs(config)
    noises = {(r["dataset"], r["noise"]) for r in rows}
    assert noises == {("cifar10", n) for n in ["human-aggre", "human-worst", "human-random1", "human-random2",
                                               "human-random3"]} | {("cifar100", "human")}
    assert {r["method"] for r in rows} == {"ce", "limit_g", "limit_l"}
