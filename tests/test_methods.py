"""The gradient each method sends into the classifier's logits, against hand computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from limit.methods import LOSSES, Context, forward_correction_matrix
from limit.models import build_model, copy_parameters, mnist_cnn, resnet34_cifar
from limit.registry import METHODS
from limit.runs import rundir

K, B = 4, 6


class Logits(nn.Module):
    """A 'network' whose output is a free parameter per example, so d loss / d logits is its .grad."""

    def __init__(self, values):
        super().__init__()
        self.a = nn.Parameter(values.clone())
        self.features = nn.Identity()

    def forward(self, x):
        return self.a[x]


def setup(seed=0, q=True, batch=B):
    g = torch.Generator().manual_seed(seed)
    a, r = torch.randn(batch, K, generator=g), torch.randn(batch, K, generator=g)
    y = torch.randint(0, K, (batch,), generator=g)
    ctx = Context(Logits(a), Logits(r) if q else None)
    return ctx, torch.arange(batch), y, a, r


def logit_grad(name, hp=None, seed=0, extra=None, batch=B):
    ctx, x, y, a, r = setup(seed, METHODS[name].q_network, batch)
    ctx.extra = extra or {}
    objective, _, terms = LOSSES[name](ctx, x, y, {"beta": 0.0, "lamb": 1.0, "sigma": 0.0, **(hp or {})})
    objective.backward()
    return ctx, a, r, y, terms


def test_ce():
    ctx, a, _, y, _ = logit_grad("ce")
    assert torch.allclose(ctx.classifier.a.grad, (a.softmax(1) - F.one_hot(y, K)) / B, atol=1e-6)


def test_mae():
    ctx, a, _, y, terms = logit_grad("mae")
    s = a.softmax(1)
    s_y = s.gather(1, y[:, None])
    expected = -2 * s_y * (F.one_hot(y, K) - s) / B  # d/da of 2(1 - s_y), batch mean
    assert torch.allclose(ctx.classifier.a.grad, expected, atol=1e-6)
    assert terms["loss"].item() == pytest.approx((s - F.one_hot(y, K)).abs().sum(1).mean().item(), abs=1e-6)


@pytest.mark.parametrize("name", ["limit_g", "limit_l", "limit_g_init", "limit_l_init"])
@pytest.mark.parametrize("beta", [0.0, 3.0])
def test_limit_classifier_receives_exactly_mu(name, beta):
    ctx, a, r, y, _ = logit_grad(name, {"beta": beta})
    mu = a.softmax(1) - r.softmax(1)
    assert torch.allclose(ctx.classifier.a.grad, mu, atol=1e-6)  # per example, no 1/B


@pytest.mark.parametrize("name,distance", [("limit_g", torch.square), ("limit_l", torch.abs)])
def test_limit_q_gets_only_its_own_loss(name, distance):
    beta = 2.0
    ctx, a, r, y, terms = logit_grad(name, {"beta": beta})
    r_leaf = r.clone().requires_grad_(True)
    s_a = a.softmax(1)
    mu = s_a - r_leaf.softmax(1)
    q_loss = distance(mu - (s_a - F.one_hot(y, K))).sum(1).mean() + beta * (mu ** 2).sum(1).mean()
    q_loss.backward()
    assert torch.allclose(ctx.q.a.grad, r_leaf.grad, atol=1e-6)
    # and the equivalent view of the method: mu - g_CE = y - s(r)
    assert terms["q_loss"].item() == pytest.approx(distance(F.one_hot(y, K) - r.softmax(1)).sum(1).mean().item(),
                                                   abs=1e-6)


@pytest.mark.parametrize("name,lamb,std", [("limit_g_s", 50.0, (1 / 100) ** 0.5), ("limit_l_s", 10.0, 2 ** 0.5 / 10)])
def test_limit_sampling_adds_noise_of_the_right_scale(name, lamb, std):
    torch.manual_seed(0)
    ctx, a, r, y, _ = logit_grad(name, {"lamb": lamb}, batch=20000)
    noise = ctx.classifier.a.grad - (a.softmax(1) - r.softmax(1))
    assert abs(noise.mean().item()) < 0.01 * std * 5
    assert noise.std().item() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("name,kurtosis", [("ce_gn", 3.0), ("ce_ln", 6.0)])
def test_gradient_noise_on_the_mean_ce_gradient(name, kurtosis):
    ctx, a, _, y, _ = logit_grad(name, {"sigma": 0.0})
    assert torch.allclose(ctx.classifier.a.grad, (a.softmax(1) - F.one_hot(y, K)) / B, atol=1e-6)
    torch.manual_seed(0)
    ctx, a, _, y, _ = logit_grad(name, {"sigma": 0.1}, batch=20000)
    noise = ctx.classifier.a.grad - (a.softmax(1) - F.one_hot(y, K)) / 20000
    assert noise.std().item() == pytest.approx(0.1, rel=0.02)
    k = ((noise - noise.mean()) ** 4).mean() / noise.var() ** 2
    assert k.item() == pytest.approx(kurtosis, rel=0.1)  # Gaussian 3, Laplace 6


def test_fw_with_a_known_transition_matrix():
    t = torch.full((K, K), 0.1) + 0.6 * torch.eye(K)
    ctx, a, _, y, _ = logit_grad("fw", extra={"transition_matrix": t})
    s = a.softmax(1)
    p = s @ t
    p_y = p.gather(1, y[:, None])
    t_y = t[:, y].T  # T[k, y_b]
    expected = -s * (t_y - p_y) / p_y / B
    assert torch.allclose(ctx.classifier.a.grad, expected, atol=1e-6)


def test_dmi_loss_is_the_log_determinant_of_the_count_matrix():
    ctx, x, y, a, _ = setup(q=False)
    loss, _, _ = LOSSES["dmi"](ctx, x, y, {})
    joint = F.one_hot(y, K).double().numpy().T @ a.double().softmax(1).numpy()
    assert loss.item() == pytest.approx(-np.log(abs(np.linalg.det(joint)) + 0.001), rel=1e-5)


def test_soft_reg_matches_equation_11():
    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(B, 5, generator=g))
    head = nn.Linear(5, K, bias=False)
    classifier = nn.Module()
    classifier.features, classifier.head = Logits(z), head
    r = torch.randn(B, K, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    ctx = Context(classifier, Logits(r))
    lamb, beta = 0.03, 10.0
    objective, _, terms = LOSSES["soft_reg"](ctx, torch.arange(B), y, {"lamb": lamb, "beta": beta})
    a = head(z)
    s_r = r.softmax(1)
    z2 = (z ** 2).sum(1)
    label_term = (z2 * ((F.one_hot(y, K) - s_r) ** 2).sum(1)).mean()
    grad_term = (z2 * ((a.softmax(1) - s_r) ** 2).sum(1)).mean()
    expected = F.cross_entropy(a, y) + lamb * label_term + beta * grad_term
    assert objective.item() == pytest.approx(expected.item(), rel=1e-6)
    # its history columns are its own terms, not LIMIT's q loss and ||mu||^2
    assert set(terms) == {"loss", rundir.SOFT_LABEL_TERM, rundir.SOFT_GRAD_TERM}
    assert terms[rundir.SOFT_LABEL_TERM].item() == pytest.approx(label_term.item(), rel=1e-6)
    assert terms[rundir.SOFT_GRAD_TERM].item() == pytest.approx(grad_term.item(), rel=1e-6)
    objective.backward()
    assert ctx.q.a.grad is not None and head.weight.grad is not None  # no detach in Eq. (11)


def test_forward_correction_matrix_reproduces_the_in_place_filter():
    probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1],
                      [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    matrix = forward_correction_matrix(probs, percentile=97.0)
    # column 0: the top value 0.9 is filtered (zeroed in place); the argmax is row 1
    assert np.allclose(matrix[0], [0.7, 0.2, 0.1])
    # column 1: 0.8 filtered; largest remaining 0.7 is row 2
    assert np.allclose(matrix[1], [0.2, 0.7, 0.1])
    # column 2: 0.8 filtered; then row 5 (0.4); row 0 was NOT changed in column 2
    assert np.allclose(matrix[2], np.array([0.3, 0.3, 0.4]))
    assert np.allclose(matrix.sum(1), 1)


def test_every_method_is_registered_with_its_hyperparameters():
    assert set(METHODS) == set(LOSSES) == {"ce", "ce_gn", "ce_ln", "mae", "fw", "dmi", "soft_reg", "limit_g",
                                           "limit_l", "limit_g_s", "limit_l_s", "limit_g_init", "limit_l_init"}
    assert METHODS["limit_g_s"].hparams == ("beta", "lamb") and METHODS["ce_gn"].hparams == ("sigma",)
    assert METHODS["limit_l_init"].init_from_ce == "q" and METHODS["fw"].init_from_ce == "classifier"


def test_parameter_counts():
    assert sum(p.numel() for p in mnist_cnn().parameters()) == pytest.approx(218_000, rel=0.02)
    assert sum(p.numel() for p in resnet34_cifar().parameters()) == pytest.approx(21.3e6, rel=0.01)
    assert sum(p.numel() for p in build_model("mlp", 10).parameters()) == pytest.approx(1.2e6, rel=0.05)
    q = build_model("cnn", 10, q_network=True)
    assert any(isinstance(m, nn.BatchNorm1d) for m in q.features)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in mnist_cnn().features)


def test_init_copies_ce_parameters_into_q_but_not_batchnorm_statistics():
    torch.manual_seed(0)
    ce = mnist_cnn()
    ce.features[1].running_mean.fill_(5.0)
    q = build_model("cnn", 10, q_network=True)
    copy_parameters(ce.state_dict(), q, "the q-network")
    for name, p in ce.named_parameters():
        assert torch.equal(dict(q.named_parameters())[name], p)
    assert torch.all(q.features[1].running_mean == 0)
    with pytest.raises(Exception, match="shape"):
        copy_parameters(mnist_cnn(num_classes=5).state_dict(), mnist_cnn(), "the classifier")
