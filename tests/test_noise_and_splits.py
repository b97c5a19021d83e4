import json
import subprocess
import sys

import numpy as np
import pytest

from limit import data as D
from limit import labels as L
from limit import noise as noise_models


@pytest.mark.parametrize("noise,rate,k", [("uniform", 0.8, 10), ("uniform", 0.4, 100), ("symmetric", 0.6, 10),
                                          ("pair", 0.4, 10), ("asymmetric-mnist", 0.3, 10),
                                          ("asymmetric-fashion-mnist", 0.4, 10)])
def test_empirical_transition_rates_match_the_matrix(noise, rate, k):
    matrix = noise_models.transition_matrix(noise, rate, k)
    assert np.allclose(matrix.sum(1), 1.0)
    per_class = 20000 if k == 10 else 2000
    labels = np.repeat(np.arange(k), per_class)
    noisy, is_corrupted = noise_models.corrupt_labels(labels, matrix, np.random.default_rng(0))
    counts = np.zeros((k, k))
    np.add.at(counts, (labels, noisy), 1)
    observed = counts / per_class
    binomial_std = np.sqrt(matrix * (1 - matrix) / per_class)
    assert np.all(np.abs(observed - matrix) <= 5 * binomial_std + 1e-12)
    assert np.array_equal(is_corrupted, noisy != labels)


def test_exact_structure_of_each_model():
    uniform = noise_models.transition_matrix("uniform", 0.89, 10)
    assert uniform[3, 3] == pytest.approx(0.11) and uniform[3, 4] == pytest.approx(0.89 / 9)
    assert np.allclose(noise_models.transition_matrix("symmetric", 0.5, 10), 0.5 * np.eye(10) + 0.05)
    pair = noise_models.transition_matrix("pair", 0.3, 10)
    for src, dst in {9: 1, 2: 0, 4: 7, 3: 5}.items():
        assert pair[src, dst] == pytest.approx(0.3) and pair[src, src] == pytest.approx(0.7)
    for clean in (0, 1, 5, 6, 7, 8):
        assert pair[clean, clean] == 1.0
    assert pair[1, 9] == 0.0  # one-directional
    mnist = noise_models.transition_matrix("asymmetric-mnist", 0.2, 10)
    assert mnist[5, 6] == mnist[6, 5] == mnist[7, 1] == pytest.approx(0.2) and mnist[1, 7] == 0.0


def test_given_labels_stay_as_they_are_and_take_no_rate():
    labels = np.random.default_rng(0).integers(0, 5, 200)
    arrays = L.make_noisy_labels(labels, 5, "fashion_mnist", "given", 0.0, seed=1)
    assert np.array_equal(arrays["train_noisy"], arrays["train_true"]) and not arrays["is_corrupted"].any()
    with pytest.raises(ValueError, match="labels are used as given"):
        noise_models.check_noise("given", 0.1, "fashion_mnist", 5)
    fashion = noise_models.transition_matrix("asymmetric-fashion-mnist", 0.4, 10)
    assert fashion[0, 6] == fashion[2, 4] == fashion[5, 7] == pytest.approx(0.4) and fashion[6, 0] == 0.0


def test_same_seed_same_labels_different_seed_different():
    labels = np.random.default_rng(1).integers(0, 10, 60000)
    a = L.make_noisy_labels(labels, 10, "mnist", "uniform", 0.5, seed=42, n=1000)
    b = L.make_noisy_labels(labels, 10, "mnist", "uniform", 0.5, seed=42, n=1000)
    c = L.make_noisy_labels(labels, 10, "mnist", "uniform", 0.5, seed=43, n=1000)
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["train_noisy"], c["train_noisy"])
    assert not np.array_equal(a["train_idx"], c["train_idx"])
    # train labels are the true labels of their indices; only corruption changes them
    assert np.array_equal(a["train_true"], labels[a["train_idx"]])
    assert np.array_equal(a["is_corrupted"], a["train_noisy"] != a["train_true"])
    assert 0.45 < a["is_corrupted"].mean() < 0.55 and 0.45 < a["val_corrupted"].mean() < 0.55
    zero = L.make_noisy_labels(labels, 10, "mnist", "uniform", 0.0, seed=42)
    assert not zero["is_corrupted"].any() and np.array_equal(zero["val_noisy"], zero["val_true"])


def test_split_sizes_nesting_and_determinism():
    rng = lambda s: np.random.default_rng(s)
    train, val = L.split_indices(60000, rng(42))
    assert (len(train), len(val)) == (48000, 12000)
    assert len(np.intersect1d(train, val)) == 0 and len(np.union1d(train, val)) == 60000
    small_train, small_val = L.split_indices(60000, rng(42), n=1000)
    assert len(small_train) == 1000 and len(np.unique(small_train)) == 1000
    assert np.isin(small_train, train).all() and np.array_equal(small_val, val)
    assert len(np.intersect1d(small_train, small_val)) == 0
    again, _ = L.split_indices(60000, rng(42), n=1000)
    assert np.array_equal(again, small_train)
    other, other_val = L.split_indices(60000, rng(43), n=1000)
    assert not np.array_equal(other, small_train) and not np.array_equal(other_val, val)
    cifar_train, cifar_val = L.split_indices(50000, rng(42))
    assert (len(cifar_train), len(cifar_val)) == (40000, 10000)
    _, short_val = L.split_indices(60000, rng(42), val_size=500)
    assert np.array_equal(short_val, val[:500])


@pytest.mark.parametrize("call,message", [
    (lambda: noise_models.check_noise("gaussian", 0.1, "mnist", 10), "unknown noise model"),
    (lambda: noise_models.check_noise("uniform", -0.1, "mnist", 10), "outside [0, 1)"),
    (lambda: noise_models.check_noise("uniform", 1.0, "mnist", 10), "outside [0, 1)"),
    (lambda: noise_models.check_noise("uniform", 0.9, "mnist", 10), "degenerate limit"),
    (lambda: noise_models.check_noise("uniform", 0.995, "cifar100", 100), "degenerate limit"),
    (lambda: noise_models.check_noise("pair", 0.2, "mnist", 10), "only for cifar10"),
    (lambda: noise_models.check_noise("pair", 0.5, "cifar10", 10), "degenerate limit"),
    (lambda: noise_models.check_noise("asymmetric-mnist", 0.2, "cifar10", 10), "only for mnist"),
    (lambda: D.dataset_info("svhn"), "unknown dataset"),
    (lambda: L.split_indices(60000, np.random.default_rng(0), n=50000), "larger than the training split"),
])
def test_bad_input_is_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        call()
    noise_models.check_noise("uniform", 0.89, "mnist", 10)  # just under the limit is fine


def test_labels_file_round_trip_and_tamper_detection(tmp_path):
    labels = np.random.default_rng(1).integers(0, 10, 1000)
    arrays = L.make_noisy_labels(labels, 10, "mnist", "uniform", 0.5, seed=1)
    path = tmp_path / "labels.npz"
    meta = L.write_labels_file(path, arrays, {"dataset": "mnist"})
    back, back_meta = L.read_labels_file(path)
    assert back_meta["sha256"] == meta["sha256"] and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    tampered = dict(back, train_noisy=(back["train_noisy"] + 1) % 10)
    np.savez(path, meta=np.array(json.dumps(back_meta)), **tampered)  # old hash, new labels
    with pytest.raises(D.DataError, match="corrupt"):
        L.read_labels_file(path)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "limit", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args,message", [
    (["--dataset", "fashion_mnist", "--noise", "uniform", "--rate", "0.95"], "degenerate limit"),
    (["--dataset", "fashion_mnist", "--noise", "pair", "--rate", "0.2"], "only for cifar10"),
    (["--dataset", "fashion_mnist", "--noise", "uniform", "--rate", "0.2", "--n", "60000"], "larger than"),
    (["--dataset", "imagenet", "--noise", "uniform", "--rate", "0.2"], "unknown dataset"),
    (["--dataset", "mnist", "--noise", "uniform", "--rate", "0.2"], "MNIST/raw/train-images-idx3-ubyte"),
])
@pytest.mark.pipeline
def test_cli_bad_input_exits_non_zero_and_writes_nothing(fmnist_dir, tmp_path, args, message):
    data_dir = fmnist_dir if "mnist" != args[1] else tmp_path / "empty"
    out = tmp_path / "labels.npz"
    result = run_cli("corrupt", *args, "--seed", "1", "--data-dir", str(data_dir), "--out", str(out))
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stderr.count("error:") == 1
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.pipeline
def test_corrupt_cli_writes_a_hashed_labels_file_without_loading_torch(fmnist_dir, tmp_path):
    # a labels job reads the MNIST family's files with numpy: 0.3 s instead of 3.4 s with torch and torchvision
    out = tmp_path / "labels.npz"
    result = subprocess.run([sys.executable, "-c", "import sys; from limit.cli import main; code = main(); "
                             "print('torch' in sys.modules); sys.exit(code)", "corrupt", "--dataset", "fashion_mnist",
                             "--data-dir", str(fmnist_dir), "--noise", "uniform", "--rate", "0.8", "--n", "1000",
                             "--seed", "42", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False", result.stdout
    arrays, meta = L.read_labels_file(out)
    assert len(arrays["train_idx"]) == 1000 and len(arrays["val_idx"]) == 12000
    assert meta["rate"] == 0.8 and meta["seed"] == 42 and len(meta["sha256"]) == 64
