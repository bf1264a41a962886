"""Linear probe: multinomial logistic regression on frozen image features, after CoOp's `lpclip` baseline.

lpclip (KaiyangZhou/CoOp, `lpclip/linear_probe.py`) fits scikit-learn's `LogisticRegression(solver="lbfgs",
max_iter=1000, penalty="l2", C=c)` on the raw CLIP image features (no L2 normalization) and chooses C on the
validation set: a coarse sweep over C in 1e6, 1e4, ..., 1e-6, then 8 halving steps in log space between the
best C's neighbours. Here the same objective is minimized with torch's full-batch L-BFGS, so no scikit-learn is needed
and the fit runs on the backbone's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint import load_method_weights, save_method_weights
from ..errors import CheckpointError, ClipadaptError
from ..features import FeatureSet
from .contract import Capabilities, Claim, register_method

COARSE_C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)  # lpclip's search_list, in its order (ties go to the first)


def logistic_objective(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: float
) -> torch.Tensor:
    """scikit-learn's L2-penalized multinomial logistic loss as its L-BFGS solver sees it: mean cross-entropy plus
    ||weight||^2 / (2 C N). That is sklearn's `C * sum(CE) + ||weight||^2 / 2` divided by C N (same minimizer, and
    the scale its gradient tolerance applies to); the bias is not penalized."""
    return F.cross_entropy(x @ weight.T + bias, y) + weight.pow(2).sum() / (2 * c * len(y))


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, max_iter: int = 1000, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [K, D], bias [K]) minimizing `logistic_objective` from zeros, as sklearn's lbfgs solver does: stop when
    the largest gradient component is <= `tol` or after `max_iter` iterations.

    For two classes sklearn fits a binary model (one weight vector, penalized once); the symmetric multinomial
    solution at C/2 has exactly that decision function, so C is halved to match it.
    """
    if num_classes == 2:
        c = c / 2
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    # Minimized at sklearn's own scale, C * sum(CE) + ||weight||^2 / 2 (C N times the mean form), whose curvature is at
    # least 1: torch's L-BFGS drops curvature pairs with s.y <= 1e-10, an absolute threshold that at the mean scale
    # stalls it near the optimum when C is small. The gradient tolerance is scaled alike, so the stopping rule is
    # sklearn's. The other settings are scipy's as sklearn passes them: history 10 (maxcor; it also keeps memory at
    # 20 copies of the weights where torch's default keeps 200) and ftol 64 eps. scipy caps iterations, not
    # evaluations: torch's evaluation cap is raised from 1.25 to 2 per iteration so that max_iter ends a long fit.
    scale = c * len(y)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tol * scale,
        tolerance_change=64 * torch.finfo(torch.float64).eps,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = scale * logistic_objective(weight, bias, x, y, c)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def lpclip_search(val_accuracy: Callable[[float], float], steps: int = 8) -> float:
    """The C that lpclip's search picks: the best of the coarse grid, then per step both ends of [left, right]
    (starting at that C / 10 and * 10) are scored, the better end is kept (the left, smaller C, on ties) and the
    interval shrinks to the half on its side in log space. The end kept by the last step wins."""
    best = max(COARSE_C_GRID, key=val_accuracy)  # max keeps the first of equals, as lpclip's np.argmax does
    left, right = best / 10, best * 10
    for _ in range(steps):
        middle = math.sqrt(left * right)
        if val_accuracy(left) < val_accuracy(right):
            best, left = right, middle
        else:
            best, right = left, middle
    return best


@register_method("linear_probe")
class LinearProbe:
    """A linear classifier over the training classes. It cannot score class names it was not trained on.

    With a validation set, C is chosen by lpclip's search on validation accuracy (the test set is never seen);
    without one (val=None or empty), `config.c` is used as is. After `fit`, `best_c` is the C used, `val_accuracy`
    its validation accuracy in percent (None without a validation set) and `val_accuracies` every C tried.
    """

    @dataclass
    class Config:
        c: float = 0.316  # C without a validation set: the value in CLIP's README linear-probe example
        search_steps: int = 8  # lpclip's --num_step: log-space halvings after the coarse sweep
        max_iter: int = 1000  # L-BFGS iterations per fit, sklearn's max_iter in lpclip
        tol: float = 1e-4  # stop when max |gradient| of the mean objective is below this (sklearn's default tol)
        normalize: bool = False  # L2-normalize features first; lpclip fits the raw features

    # One weight vector per training class: base2new reports its base accuracy only.
    capabilities = Capabilities(trains=True, scores_unseen_classes=False)
    claims = (Claim("fewshot", "accuracy", "zeroshot", +1, "CoOp (IJCV 2022), Fig. 3: 16 shots", min_shots=16),)

    def __init__(self, backbone, config: LinearProbe.Config):
        self.config = config
        self.device = torch.device(getattr(backbone, "device", "cpu"))  # the backbone is otherwise unused
        self.classnames: list[str] | None = None
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.best_c: float | None = None
        self.val_accuracy: float | None = None
        self.val_accuracies: dict[float, float] = {}

    def _inputs(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.device, torch.float64)  # sklearn's lbfgs works in float64
        return F.normalize(x, dim=-1) if self.config.normalize else x

    def fit(
        self,
        train: FeatureSet,
        classnames: Sequence[str],
        val: FeatureSet | None = None,
        template_key: str | None = None,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> dict:
        """Search C on `val` and fit (`out_dir` is unused: the fit is deterministic and takes seconds)."""
        self.classnames = list(classnames)
        x, y = self._inputs(train.features), train.labels.to(self.device)

        def solve(c: float) -> tuple[torch.Tensor, torch.Tensor]:
            return fit_logistic_regression(x, y, len(self.classnames), c, self.config.max_iter, self.config.tol)

        self.val_accuracies = {}
        if val is None or len(val) == 0:
            self.best_c, self.val_accuracy = self.config.c, None
        else:
            x_val, y_val = self._inputs(val.features), val.labels.to(self.device)

            def val_accuracy(c: float) -> float:
                # Memoized: one end of lpclip's interval carries over from each step to the next.
                if c not in self.val_accuracies:
                    weight, bias = solve(c)
                    predictions = (x_val @ weight.T + bias).argmax(dim=-1)
                    self.val_accuracies[c] = 100.0 * (predictions == y_val).float().mean().item()
                return self.val_accuracies[c]

            # At most 7 coarse fits plus 2 per refinement step: the bar counts fits.
            bar = tqdm(
                total=len(COARSE_C_GRID) + 2 * self.config.search_steps,
                desc="linear probe: search C",
                unit="fit",
                disable=not progress,
            )

            def counted(c: float) -> float:
                bar.update(c not in self.val_accuracies)
                return val_accuracy(c)

            self.best_c = lpclip_search(counted, self.config.search_steps)
            bar.close()
            self.val_accuracy = self.val_accuracies[self.best_c]
        # Refit rather than keep every C's weights during the search; the fit is deterministic, so it is the same one.
        self.weight, self.bias = solve(self.best_c)
        return {"best_c": self.best_c, "val_accuracy": self.val_accuracy}

    @torch.no_grad()
    def logits(
        self, features: torch.Tensor, classnames: Sequence[str], template_key: str | None = None
    ) -> torch.Tensor:
        if self.weight is None:
            raise ClipadaptError("linear_probe must be fit before it can score images")
        if list(classnames) != self.classnames:
            raise ClipadaptError(
                "linear_probe scores only the classes it was trained on, in the same order "
                f"({len(self.classnames)} classes); it cannot score other class names, e.g. base2new's new classes"
            )
        return (self._inputs(features) @ self.weight.T + self.bias).float()

    def save(self, path: str | Path, **header: Any) -> None:
        """Weight and bias as safetensors, with the config, the training class names and the C in the metadata."""
        if self.weight is None:
            raise ClipadaptError("linear_probe has nothing to save: fit it first")
        tensors = {"weight": self.weight.float(), "bias": self.bias.float()}
        save_method_weights(
            path, tensors, "linear_probe", self.config, classnames=self.classnames, c=self.best_c, **header
        )

    def load(self, path: str | Path) -> None:
        tensors, metadata = load_method_weights(path, "linear_probe")
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if weight is None or bias is None or len(weight) != len(metadata["classnames"]):
            raise CheckpointError(f"{path} holds no linear probe of its {len(metadata['classnames'])} classes")
        self.weight, self.bias = weight.to(self.device, torch.float64), bias.to(self.device, torch.float64)
        self.classnames, self.best_c = list(metadata["classnames"]), metadata["c"]
