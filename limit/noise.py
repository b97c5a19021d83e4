"""Label-noise models as K x K transition matrices, and label corruption.

Rows are true classes, columns observed classes: ``T[i, j] = P(noisy = j | true = i)``.
"""
import numpy as np

from limit.registry import unknown_name

# CIFAR-10 pair noise: truck->automobile, bird->airplane, deer->horse, cat->dog.
CIFAR10_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5}
# Patrini et al. (2017) MNIST flips: 2->7, 3->8, 5<->6, 7->1.
MNIST_PAIRS = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
# Fashion-MNIST flips between look-alike classes: T-shirt/top->Shirt, Pullover->Coat, Sandal->Sneaker.
FASHION_MNIST_PAIRS = {0: 6, 2: 4, 5: 7}
# CIFAR-N human labels (Wei et al., ICLR 2022): noise model -> (dataset, key in the release's .pt file).
HUMAN_NOISE = {
    "human-aggre": ("cifar10", "aggre_label"), "human-worst": ("cifar10", "worse_label"),
    "human-random1": ("cifar10", "random_label1"), "human-random2": ("cifar10", "random_label2"),
    "human-random3": ("cifar10", "random_label3"), "human": ("cifar100", "noisy_label"),
}


def _uniform(k, p):
    t = np.full((k, k), p / (k - 1))
    np.fill_diagonal(t, 1.0 - p)
    return t


def _symmetric(k, p):
    return (1.0 - p) * np.eye(k) + p / k


def _flips(pairs):
    def build(k, p):
        t = np.eye(k)
        for src, dst in pairs.items():
            t[src, src], t[src, dst] = 1.0 - p, p
        return t
    return build


def _zero_rate_only(k):
    return np.nextafter(0.0, 1.0)  # the smallest positive rate is already too large: only p = 0 is valid


# name -> (matrix builder, datasets it applies to (None = all), rate limit (exclusive), why).
# A builder of None: the noisy labels come from a file, not from a matrix (CIFAR-N).
NOISE_MODELS = {
    "given": (lambda k, p: np.eye(k), None, _zero_rate_only,
              "labels are used as given: p = 0 (choose a synthetic model to add noise on top)"),
    "uniform": (_uniform, None, lambda k: (k - 1) / k,
                "a wrong class must stay less likely than the true one: p < (K-1)/K"),
    "symmetric": (_symmetric, None, lambda k: 1.0, "p < 1"),
    "pair": (_flips(CIFAR10_PAIRS), ("cifar10",), lambda k: 0.5,
             "a flipped class must stay less likely than the true one: p < 0.5"),
    "asymmetric-mnist": (_flips(MNIST_PAIRS), ("mnist",), lambda k: 0.5, "p < 0.5"),
    "asymmetric-fashion-mnist": (_flips(FASHION_MNIST_PAIRS), ("fashion_mnist",), lambda k: 0.5, "p < 0.5"),
    **{name: (None, (dataset,), _zero_rate_only, "the human labels set the noise: p = 0")
       for name, (dataset, _) in HUMAN_NOISE.items()},
}


def check_noise(noise, rate, dataset, num_classes):
    """Raise ValueError with a clear message unless (noise, rate) is valid for the dataset."""
    if noise not in NOISE_MODELS:
        raise ValueError(unknown_name("noise model", noise, NOISE_MODELS))
    _, datasets, limit, why = NOISE_MODELS[noise]
    if datasets is not None and dataset not in datasets:
        raise ValueError(f"noise model {noise!r} is defined only for {', '.join(datasets)}, not {dataset!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate {rate} is outside [0, 1)")
    if rate >= limit(num_classes):
        raise ValueError(f"noise rate {rate} is at or above the degenerate limit of {noise!r} noise ({why})")


def transition_matrix(noise, rate, num_classes):
    """The K x K transition matrix of a noise model (``check_noise`` validates the rate for a dataset)."""
    if noise not in NOISE_MODELS:
        raise ValueError(unknown_name("noise model", noise, NOISE_MODELS))
    if NOISE_MODELS[noise][0] is None:
        raise ValueError(f"noise model {noise!r} has no synthetic matrix: its labels come from a file")
    return NOISE_MODELS[noise][0](num_classes, rate)


def corrupt_labels(labels, matrix, rng):
    """Draw each label from its row of ``matrix``; return (noisy labels, is_corrupted mask).

    One uniform draw per example, in index order, inverted through the row's cumulative distribution
    (the same scheme as numpy's ``choice(K, p=row)``, vectorised).
    """
    labels = np.asarray(labels, dtype=np.int64)
    cumulative = np.cumsum(matrix, axis=1)
    u = rng.random(len(labels))
    noisy = (u[:, None] >= cumulative[labels]).sum(axis=1)
    noisy = np.minimum(noisy, matrix.shape[0] - 1)  # guards a row sum of 1 - 1e-16
    return noisy, noisy != labels
