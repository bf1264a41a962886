"""Linear probe: lpclip's C search, the L-BFGS solution of sklearn's objective, and the method's interface."""

import math

import numpy as np
import pytest
import torch

from clipadapt import ClipadaptError
from clipadapt.features import FeatureSet
from clipadapt.methods import build_method
from clipadapt.methods.linear_probe import (
    COARSE_C_GRID,
    LinearProbe,
    fit_logistic_regression,
    logistic_objective,
    lpclip_search,
)

NAMES = ["ant", "bee", "cat", "dog", "eel"]


def clusters(per_class: int, seed: int, num_classes: int = 5, dim: int = 32) -> FeatureSet:
    """Gaussian clusters around fixed well-separated means (the same for every seed), offset from the origin as
    CLIP features are."""
    means = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0)) * 1.5 + 3.0
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return FeatureSet(features=means[labels] + noise, labels=labels)


def small_problem(num_classes: int = 3, n: int = 60, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping classes, so the optimum is finite and the penalty matters."""
    generator = torch.Generator().manual_seed(1)
    y = torch.arange(num_classes).repeat(n // num_classes)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64) + 0.8 * torch.nn.functional.one_hot(y, dim)
    return x, y


def lpclip_reference(val_accuracy, num_step: int = 8) -> float:
    """lpclip/linear_probe.py's search, transcribed with its numpy arithmetic, returning the last c_final."""
    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    c_peak = search_list[np.argmax([val_accuracy(c) for c in search_list])]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    for _ in range(num_step):
        acc_left, acc_right = val_accuracy(c_left), val_accuracy(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left, c_right = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            c_final = c_left
            c_right, c_left = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final


@pytest.mark.parametrize("peak", [-5.3, -0.4, 0.0, 0.7, 2.2, 6.5])
@pytest.mark.parametrize("plateau", [0.0, 0.5])
def test_search_follows_lpclip_schedule(peak, plateau):
    # A unimodal validation accuracy in log C; rounding to `plateau` steps creates ties, which decide the branch.
    def accuracy(c: float) -> float:
        score = 100 - 10 * abs(math.log10(c) - peak)
        return round(score / plateau) * plateau if plateau else score

    ours = lpclip_search(accuracy)
    assert ours == pytest.approx(lpclip_reference(accuracy), rel=1e-9)
    assert lpclip_search(accuracy, steps=0) in COARSE_C_GRID  # no refinement: the coarse grid's best


def test_fits_separable_clusters_and_records_the_search():
    train, val, test = clusters(20, seed=1), clusters(20, seed=2), clusters(50, seed=3)
    probe = build_method("linear_probe", None)
    probe.fit(train, NAMES, val=val)
    predictions = probe.logits(test.features, NAMES).argmax(dim=-1)
    assert (predictions == test.labels).float().mean() > 0.9
    # Every grid value, then at most one new C per step after the first (one end carries over, memoized).
    assert set(COARSE_C_GRID) <= set(probe.val_accuracies)
    assert len(probe.val_accuracies) <= len(COARSE_C_GRID) + 2 + 7
    grid_best = max(COARSE_C_GRID, key=probe.val_accuracies.get)
    assert grid_best / 10 <= probe.best_c <= grid_best * 10  # refined within the grid best's neighbours
    assert probe.val_accuracy == probe.val_accuracies[probe.best_c] > 90


def test_solution_is_the_optimum():
    x, y = small_problem()
    c = 0.5
    weight, bias = fit_logistic_regression(x, y, 3, c, tol=1e-10)
    weight.requires_grad_(), bias.requires_grad_()
    loss = logistic_objective(weight, bias, x, y, c)
    gradients = torch.autograd.grad(loss, [weight, bias])
    assert max(g.abs().max().item() for g in gradients) < 1e-8  # first-order optimality

    # Reference: long plain gradient descent with step 1/L, L bounding the objective's curvature.
    reference_w = torch.zeros_like(weight, requires_grad=True)
    reference_b = torch.zeros_like(bias, requires_grad=True)
    step = 1 / (
        torch.linalg.matrix_norm(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), ord=2) ** 2 / len(x)
        + 1 / (c * len(x))
    )
    for _ in range(5000):
        reference = logistic_objective(reference_w, reference_b, x, y, c)
        grad_w, grad_b = torch.autograd.grad(reference, [reference_w, reference_b])
        with torch.no_grad():
            reference_w -= step * grad_w
            reference_b -= step * grad_b
    reference = logistic_objective(reference_w, reference_b, x, y, c)
    assert loss.item() <= reference.item() + 1e-12
    torch.testing.assert_close(weight.detach(), reference_w.detach(), atol=1e-4, rtol=0)


def test_two_classes_match_sklearns_binary_model():
    # sklearn fits one weight vector for two classes: min C * sum(log(1 + exp(-s (d.x + b)))) + ||d||^2 / 2,
    # here divided by C N as in `logistic_objective`.
    x, y = small_problem(num_classes=2)
    c = 0.3
    weight, bias = fit_logistic_regression(x, y, 2, c, tol=1e-10)
    d = (weight[1] - weight[0]).requires_grad_()
    b = (bias[1] - bias[0]).requires_grad_()
    signs = 2 * y.to(x.dtype) - 1
    binary = torch.nn.functional.softplus(-signs * (x @ d + b)).mean() + d.pow(2).sum() / (2 * c * len(y))
    gradients = torch.autograd.grad(binary, [d, b])
    assert max(g.abs().max().item() for g in gradients) < 1e-7


def test_smaller_c_shrinks_the_weights():
    x, y = small_problem()
    strong, _ = fit_logistic_regression(x, y, 3, 1e-3)
    weak, _ = fit_logistic_regression(x, y, 3, 1e3)
    assert strong.norm() < 0.1 * weak.norm()


def test_fixed_c_without_validation_and_overrides():
    train = clusters(10, seed=1)
    probe = build_method("linear_probe", object(), {"c": 2, "search_steps": 3, "normalize": True})
    assert probe.config.c == 2.0 and probe.config.search_steps == 3 and probe.config.normalize
    probe.fit(train, NAMES, val=None)
    assert (probe.best_c, probe.val_accuracy, probe.val_accuracies) == (2.0, None, {})
    weight = probe.weight.clone()
    probe.fit(train, NAMES, val=FeatureSet(torch.zeros(0, 32), torch.zeros(0, dtype=torch.long)))
    assert probe.best_c == 2.0 and torch.equal(probe.weight, weight)  # empty val = no val; and deterministic
    # With normalize, each image's scale does not matter.
    scaled = train.features * torch.linspace(0.5, 4, len(train))[:, None]
    torch.testing.assert_close(probe.logits(scaled, NAMES), probe.logits(train.features, NAMES))
    with pytest.raises(ClipadaptError, match="unknown"):
        build_method("linear_probe", None, {"C": 1.0})


def test_logits_only_for_the_training_classes():
    probe = LinearProbe(None, LinearProbe.Config())
    with pytest.raises(ClipadaptError, match="fit"):
        probe.logits(torch.zeros(1, 32), NAMES)
    probe.fit(clusters(10, seed=1), NAMES)
    assert probe.logits(torch.zeros(4, 32), NAMES).shape == (4, 5)
    for other in (NAMES[:3], NAMES[::-1], NAMES[:4] + ["fox"]):
        with pytest.raises(ClipadaptError, match="trained on"):
            probe.logits(torch.zeros(4, 32), other)
