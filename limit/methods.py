"""Every training method of the paper, as a loss over one batch (``LOSSES``); ``limit.registry.METHODS`` holds
their hyperparameters and networks. Where the paper and the authors' code differ, the code is followed
(docs/reproduction.md).

A method's ``loss(ctx, x, y, hp)`` returns ``(objective, logits, terms)``: ``objective`` is what
``backward()`` is called on, ``logits`` the classifier's outputs (for accuracy), ``terms`` a dict of
scalar tensors to log (``loss`` is the classification loss shown to the user).

Several methods need the gradient reaching the classifier's logits to be something other than the
gradient of their logged loss. They add ``(logits * g.detach()).sum()`` to the objective: its gradient
with respect to the logits is exactly ``g``, per example, and nothing else in the graph sees it.
Adding a method = one function and one ``LOSSES`` entry here, and one ``limit.registry.METHODS`` entry.
"""
import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from limit.models import copy_parameters, predict
from limit.registry import get_method
from limit.runs import rundir
from limit.runs.rundir import MU_SQ_NORM, Q_LOSS, SOFT_GRAD_TERM, SOFT_LABEL_TERM
from limit.runtime import load_checkpoint


@dataclass
class Context:
    """What a method's loss can reach: the networks and per-method state built before training."""
    classifier: torch.nn.Module
    q: torch.nn.Module | None = None
    extra: dict = field(default_factory=dict)  # e.g. FW's transition matrix


def _one_hot(y, k):
    return F.one_hot(y, k).to(torch.float32)


def ce_loss(ctx, x, y, hp):
    logits = ctx.classifier(x)
    loss = F.cross_entropy(logits, y)
    return loss, logits, {"loss": loss}


def _ce_with_gradient_noise(sample):
    def loss_fn(ctx, x, y, hp):
        """CE whose logit gradient gets i.i.d. noise of std sigma added in the backward pass.

        As the authors' code, the noise is added to the gradient of the batch-MEAN CE ((s(a) - y)/B per
        example), so it dominates the signal for the whole sigma grid.
        """
        logits = ctx.classifier(x)
        loss = F.cross_entropy(logits, y)
        noise = sample(logits, hp["sigma"])
        return loss + (logits * noise).sum(), logits, {"loss": loss}
    return loss_fn


def _gaussian(like, std):
    return torch.randn_like(like) * std


def _laplace(like, scale):
    # Inverse CDF of Laplace(0, scale) from U(-1/2, 1/2); clamp keeps log finite.
    u = torch.rand_like(like) - 0.5
    return -scale * torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7))


def mae_loss(ctx, x, y, hp):
    """Mean absolute error between one-hot labels and softmax: mean_b sum_k |y_k - s_k| = 2(1 - s_y)."""
    logits = ctx.classifier(x)
    prob_true = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    loss = (2.0 * (1.0 - prob_true)).mean()
    return loss, logits, {"loss": loss}


def forward_correction_matrix(probs, percentile=97.0):
    """Patrini et al.'s transition estimate from a CE model's softmax outputs on the noisy train set.

    Row i is the probability vector of the example with the largest P[:, i] below the column's
    97th percentile ("higher" interpolation). As the original code, the percentile filter zeroes the
    entries of P in place, so rows estimated later read a partially zeroed matrix.
    """
    probs = np.array(probs, dtype=np.float64)
    k = probs.shape[1]
    matrix = np.zeros((k, k))
    for i in range(k):
        column = probs[:, i]  # a view: the zeroing below writes into probs
        column[column >= np.percentile(column, percentile, method="higher")] = 0.0
        matrix[i] = probs[np.argmax(column)]
    return matrix / matrix.sum(axis=1, keepdims=True)


def fw_loss(ctx, x, y, hp):
    """Forward-corrected CE: -log((clamp(s(a)) T)_y), T estimated before training from the CE model."""
    logits = ctx.classifier(x)
    probs = logits.softmax(1).clamp(1e-10, 1 - 1e-10) @ ctx.extra["transition_matrix"]
    loss = -probs.gather(1, y[:, None]).log().mean()
    return loss, logits, {"loss": loss}


def dmi_loss(ctx, x, y, hp):
    """L_DMI = -log(|det(Y^T softmax(a))| + 0.001) with the un-normalised count matrix."""
    logits = ctx.classifier(x)
    joint = _one_hot(y, logits.shape[1]).T @ logits.softmax(1)
    loss = -torch.log(torch.linalg.det(joint).abs() + 0.001)
    return loss, logits, {"loss": loss}


def soft_reg_loss(ctx, x, y, hp):
    """Paper Eq. (11): CE + lamb * ||z||^2 ||y - s(r)||^2 + beta * ||z||^2 ||s(a) - s(r)||^2.

    z is the penultimate (post-ReLU FC-128) feature and the last layer has no bias, so ||z||^2 times the
    squared logit-gradient norm is the squared norm of the last layer's gradient. All terms are
    differentiable (no detach), as in the authors' code.
    """
    z = ctx.classifier.features(x)
    logits = ctx.classifier.head(z)
    q_probs = ctx.q(x).softmax(1)
    z_sq = (z ** 2).sum(1)
    ce = F.cross_entropy(logits, y)
    label_term = (z_sq * ((_one_hot(y, logits.shape[1]) - q_probs) ** 2).sum(1)).mean()
    grad_term = (z_sq * ((logits.softmax(1) - q_probs) ** 2).sum(1)).mean()
    objective = ce + hp["lamb"] * label_term + hp["beta"] * grad_term
    return objective, logits, {"loss": ce, SOFT_LABEL_TERM: label_term, SOFT_GRAD_TERM: grad_term}


def _limit(distance, sample=None):
    def loss_fn(ctx, x, y, hp):
        """LIMIT: the classifier's logit gradient is replaced, per example and without 1/B,
        by mu = stopgrad(s(a)) - s(r_q(x)) (or a sample around it); q learns to predict the CE gradient
        s(a) - y with an MSE (Gaussian) or MAE (Laplace) loss plus beta * ||mu||^2.
        The logged CE value's own gradient is discarded.
        """
        logits = ctx.classifier(x)
        probs = logits.detach().softmax(1)
        mu = probs - ctx.q(x).softmax(1)
        ce_grad = probs - _one_hot(y, logits.shape[1])
        mu_sq = (mu ** 2).sum(1).mean()
        q_loss = distance(mu - ce_grad).sum(1).mean()
        grad = mu.detach()
        if sample is not None:
            grad = grad + sample(grad, hp["lamb"])
        objective = (logits * grad).sum() + q_loss + hp["beta"] * mu_sq
        ce = F.cross_entropy(logits.detach(), y)
        return objective, logits, {"loss": ce, Q_LOSS: q_loss, MU_SQ_NORM: mu_sq}
    return loss_fn


def _gaussian_from_lamb(like, lamb):
    # The code's lambda sets only the sampling noise: sigma = sqrt(1 / (2 lambda)).
    return _gaussian(like, (1.0 / (2.0 * lamb)) ** 0.5)


def _laplace_from_lamb(like, lamb):
    return _laplace(like, 1.0 / lamb)  # Laplace scale b = 1 / lambda


_squared = torch.square
_absolute = torch.abs

LOSSES = {  # the flags and hyperparameters of each method are in limit.registry.METHODS
    "ce": ce_loss,
    "ce_gn": _ce_with_gradient_noise(_gaussian),
    "ce_ln": _ce_with_gradient_noise(lambda like, s: _laplace(like, s / 2 ** 0.5)),
    "mae": mae_loss,
    "fw": fw_loss,
    "dmi": dmi_loss,
    "soft_reg": soft_reg_loss,
    "limit_g": _limit(_squared),
    "limit_l": _limit(_absolute),
    "limit_g_s": _limit(_squared, _gaussian_from_lamb),
    "limit_l_s": _limit(_absolute, _laplace_from_lamb),
    "limit_g_init": _limit(_squared),
    "limit_l_init": _limit(_absolute),
}


def prepare_method(cfg, ctx, run_data, device):
    """Initialisation from the best CE model (FW, DMI, +init) and FW's transition matrix."""
    method = get_method(cfg["method"])
    if not method.init_from_ce:
        return
    ce_state = load_checkpoint(Path(cfg["init_from"]) / rundir.BEST)["classifier"]
    if method.transition_matrix:
        # The full CE model (BatchNorm statistics included) estimates T on the noisy training set.
        ce_model = copy.deepcopy(ctx.classifier)
        ce_model.load_state_dict(ce_state)
        gen = torch.Generator().manual_seed(cfg["seed"])
        # CIFAR: the authors' train dataset still applied train-time augmentation here.
        probs = predict(ce_model, run_data.train, cfg["batch_size"], augment=True, generator=gen)[1].softmax(1)
        matrix = forward_correction_matrix(probs.cpu().numpy())
        ctx.extra["transition_matrix"] = torch.tensor(matrix, dtype=torch.float32, device=device)
    target = ctx.q if method.init_from_ce == "q" else ctx.classifier
    copy_parameters(ce_state, target, "the q-network" if method.init_from_ce == "q" else "the classifier")


def batches_missing_a_class(labels, num_classes, batch_size, seed):
    """The fraction of an epoch's training batches (shuffled as the run's first epoch) whose labels miss a
    class. DMI's loss is -log|det(U)| of the batch's joint matrix U: with a class missing, a row of U is zero,
    |det| is 0 and the batch's gradient is zero (docs/reproduction.md, DMI on CIFAR-100)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    batches = torch.as_tensor(labels).cpu()[order].split(batch_size)
    return sum(len(b.unique()) < num_classes for b in batches) / len(batches)


def loss_and_margin(logits, labels):
    """Per example: cross-entropy of the given label, and max other-class probability minus its probability."""
    probs = logits.float().softmax(1)
    given = probs.gather(1, labels[:, None]).squeeze(1)
    others = probs.scatter(1, labels[:, None], -1.0).max(1).values
    return F.cross_entropy(logits.float(), labels, reduction="none"), others - given


def noise_transition(probs, labels):
    """The noise transition T (rows: clean class, columns: given label) from a classifier's probabilities on its
    training examples and their given labels: the mean of FW's anchor estimate (noise the classifier learned shows
    in its own predictions) and the confusion of its predicted class with the given label (noise it did not learn
    shows as disagreement). A class it never predicts keeps its label."""
    k = probs.shape[1]
    confusion = np.eye(k)[np.asarray(probs).argmax(1)].T @ np.eye(k)[labels]
    counts = confusion.sum(1, keepdims=True)
    confusion = np.where(counts > 0, confusion / np.maximum(counts, 1), np.eye(k))
    return (forward_correction_matrix(probs) + confusion) / 2


def mislabel_posterior(probs, labels, transition):
    """Per example, the posterior that its clean class differs from its given label y, under class-dependent
    noise: 1 - p(y|x) T[y, y] / sum_c p(c|x) T[c, y], with T (rows: clean class, columns: given label) the noise
    transition and p(.|x) the classifier's probabilities taken as clean-class probabilities."""
    probs, transition = np.asarray(probs, dtype=np.float64), np.asarray(transition, dtype=np.float64)
    given = probs[np.arange(len(labels)), labels] * transition[labels, labels]
    total = (probs * transition[:, labels].T).sum(1)
    return 1.0 - given / np.maximum(total, np.finfo(np.float64).tiny)


@torch.no_grad()
def limit_train_scores(ctx, run_data, batch_size):
    """Per training example: ||mu|| and ||mu - g_CE|| = ||y - s(q(x))|| (the mislabel detector). Every array is
    over the examples the split can read (an unreadable image has no score), each row with its own example's labels."""
    ctx.classifier.eval()
    ctx.q.eval()
    positions, mu_norm, distance, predicted = [], [], [], []
    for idx, x in run_data.train.batches(batch_size):
        probs, q_probs = ctx.classifier(x).softmax(1), ctx.q(x).softmax(1)
        onehot = F.one_hot(run_data.train_noisy[idx], run_data.num_classes).float()
        positions.append(idx)
        mu_norm.append((probs - q_probs).norm(dim=1))
        distance.append((onehot - q_probs).norm(dim=1))
        predicted.append(probs.argmax(1))
    cat = lambda xs: torch.cat(xs).cpu().numpy()
    idx = cat(positions)
    return {"mu_norm": cat(mu_norm), "grad_distance": cat(distance),
            "is_corrupted": run_data.is_corrupted.cpu().numpy()[idx],
            "noisy_label": run_data.train_noisy.cpu().numpy()[idx],
            "true_label": run_data.train_true.cpu().numpy()[idx], "predicted": cat(predicted),
            "train_idx": run_data.train_idx[idx]}
