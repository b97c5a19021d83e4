"""Every training method of the paper (spec 6), as a loss over one batch plus a registry entry.

A method's ``loss(ctx, x, y, hp)`` returns ``(objective, logits, terms)``: ``objective`` is what
``backward()`` is called on, ``logits`` the classifier's outputs (for accuracy), ``terms`` a dict of
scalar tensors to log (``loss`` is the classification loss shown to the user).

Several methods need the gradient reaching the classifier's logits to be something other than the
gradient of their logged loss. They add ``(logits * g.detach()).sum()`` to the objective: its gradient
with respect to the logits is exactly ``g``, per example, and nothing else in the graph sees it.
Adding a method = one function here and one ``METHODS`` entry.
"""
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Context:
    """What a method's loss can reach: the networks and per-method state built before training."""
    classifier: torch.nn.Module
    q: torch.nn.Module | None = None
    extra: dict = field(default_factory=dict)  # e.g. FW's transition matrix


@dataclass(frozen=True)
class Method:
    loss: Callable
    hparams: tuple = ()            # method-specific hyperparameters (lr, dropout, weight_decay are generic)
    q_network: bool = False        # trains an auxiliary label-free network q
    init_from_ce: str | None = None  # "classifier" (FW, DMI) or "q" (+init): parameters from the best CE model
    head_bias: bool = True         # Soft reg.'s last layer U has no bias
    sampling: bool = False         # lamb is a sampling precision (noise std ~ 1/sqrt(lamb)): it must be > 0
    description: str = ""


def _one_hot(y, k):
    return F.one_hot(y, k).to(torch.float32)


def ce_loss(ctx, x, y, hp):
    logits = ctx.classifier(x)
    loss = F.cross_entropy(logits, y)
    return loss, logits, {"loss": loss}


def _ce_with_gradient_noise(sample):
    def loss_fn(ctx, x, y, hp):
        """CE whose logit gradient gets i.i.d. noise of std sigma added in the backward pass (spec 6.3).

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
    entries of P in place, so rows estimated later read a partially zeroed matrix (spec 13.19).
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
    """L_DMI = -log(|det(Y^T softmax(a))| + 0.001) with the un-normalised count matrix (spec 6.5)."""
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
    return objective, logits, {"loss": ce, "q_loss": label_term, "mu_sq_norm": grad_term}


def _limit(distance, sample=None):
    def loss_fn(ctx, x, y, hp):
        """LIMIT (spec 6.6): the classifier's logit gradient is replaced, per example and without 1/B,
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
        return objective, logits, {"loss": ce, "q_loss": q_loss, "mu_sq_norm": mu_sq}
    return loss_fn


def _gaussian_from_lamb(like, lamb):
    # The code's lambda sets only the sampling noise: sigma = sqrt(1 / (2 lambda)) (spec 13.2).
    return _gaussian(like, (1.0 / (2.0 * lamb)) ** 0.5)


def _laplace_from_lamb(like, lamb):
    return _laplace(like, 1.0 / lamb)  # Laplace scale b = 1 / lambda (spec 6.6)


_squared = torch.square
_absolute = torch.abs

METHODS = {
    "ce": Method(ce_loss, description="cross-entropy"),
    "ce_gn": Method(_ce_with_gradient_noise(_gaussian), ("sigma",),
                    description="CE with Gaussian noise on the logit gradient"),
    "ce_ln": Method(_ce_with_gradient_noise(lambda like, s: _laplace(like, s / 2 ** 0.5)), ("sigma",),
                    description="CE with Laplace noise (std sigma) on the logit gradient"),
    "mae": Method(mae_loss, description="mean absolute error"),
    "fw": Method(fw_loss, init_from_ce="classifier", description="forward loss correction"),
    "dmi": Method(dmi_loss, init_from_ce="classifier", description="determinant-based mutual information loss"),
    "soft_reg": Method(soft_reg_loss, ("lamb", "beta"), q_network=True, head_bias=False,
                       description="soft regularisation, Eq. (11)"),
    "limit_g": Method(_limit(_squared), ("beta",), q_network=True, description="LIMIT_G without sampling"),
    "limit_l": Method(_limit(_absolute), ("beta",), q_network=True, description="LIMIT_L without sampling"),
    "limit_g_s": Method(_limit(_squared, _gaussian_from_lamb), ("beta", "lamb"), q_network=True, sampling=True,
                        description="LIMIT_G with Gaussian sampling"),
    "limit_l_s": Method(_limit(_absolute, _laplace_from_lamb), ("beta", "lamb"), q_network=True, sampling=True,
                        description="LIMIT_L with Laplace sampling"),
    "limit_g_init": Method(_limit(_squared), ("beta",), q_network=True, init_from_ce="q",
                           description="LIMIT_G, q initialised from the best CE model"),
    "limit_l_init": Method(_limit(_absolute), ("beta",), q_network=True, init_from_ce="q",
                           description="LIMIT_L, q initialised from the best CE model"),
}

GENERIC_HPARAMS = ("lr", "dropout", "weight_decay")


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def hparam_problem(method, name, value):
    """What is wrong with a hyperparameter value of a method (None if nothing): checked before any job runs."""
    if not math.isfinite(value):
        return "must be a finite number"
    if name == "lr" and value <= 0:
        return "must be > 0"
    if name == "dropout" and not 0 <= value < 1:
        return "must be in [0, 1)"
    if name == "lamb" and get_method(method).sampling and value <= 0:
        return f"must be > 0 for {method} (the sampling precision)"
    if value < 0:
        return "must be >= 0"
    return None


def is_limit(name):
    return name.startswith("limit_")
