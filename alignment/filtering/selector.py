r"""Bilevel data selector: one logit per candidate row and the penalty objective it minimises.

Problem (REFERENCES §4.3, §5). Golden (trusted) set G, candidate pool C of N rows with per-row losses
:math:`\ell_i(\theta)`, selector logits :math:`z \in \mathbb{R}^N` and weights

.. math::  w(z) = N\cdot\mathrm{softmax}(z) \quad\text{or}\quad w_i(z) = 2\,\sigma(z_i)

(both start at exactly 1 for :math:`z = 0`). The bilevel problem

.. math::  \min_z L_G(\theta^*(z)) \quad\text{s.t.}\quad
           \theta^*(z) \in \arg\min_\theta \tfrac1N\textstyle\sum_i w_i(z)\,\ell_i(\theta)

is replaced by the penalty problem (value function :math:`v(z) = \min_\theta \tfrac1N\sum_i w_i(z)\ell_i(\theta)`)

.. math::  \min_{\theta, z}\; F_\rho(\theta, z) = \rho\,L_G(\theta)
           + (1-\rho)\Big[\tfrac1N\textstyle\sum_i w_i(z)\,\ell_i(\theta) - v(z)\Big].

Single-loop first-order updates on a step with golden batch :math:`G_t` and candidate batch :math:`I_t` (B rows):

* model θ:  :math:`\nabla_\theta\big[\rho\,\overline{\ell}_{G_t}(\theta) + (1-\rho)\,\tfrac1B
  \sum_{b} w_{I_b}\,\ell_{I_b}(\theta)\big]` with w held fixed (:func:`model_objective`);
* proxy θ' (lower-level solver, approximates the argmin in v): :math:`\nabla_{\theta'}\tfrac1B\sum_b
  w_{I_b}\,\ell_{I_b}(\theta')` (:func:`proxy_objective`);
* selector z: by Danskin's theorem :math:`\nabla_z v(z) = \tfrac1N\sum_i \nabla_z w_i(z)\,\ell_i(\theta'^*)`, so

  .. math::  \nabla_z F_\rho \propto \tfrac1B\textstyle\sum_b \nabla_z w_{I_b}(z)\,
             \big[\ell_{I_b}(\theta) - \ell_{I_b}(\theta')\big]

  (:func:`selector_objective`; losses are constants here, and :math:`\ell(\theta')` is taken after the proxy's
  step on the batch, see :func:`alignment.filtering.bilevel.train_selector`). The factor :math:`(1-\rho)` is
  dropped: it is a positive constant within an epoch, which Adam ignores and SGD folds into its learning rate,
  and it would stop the selector at ρ = 1 where SEAL already learns it. Without the v term (``value_function=False``, the BiPOST/SEAL code) the bracket is just
  :math:`\ell_{I_b}(\theta)`.

For softmax weights, with :math:`s = \mathrm{softmax}(z)` and :math:`d_b` the bracket,
:math:`\partial/\partial z_j = \tfrac{N}{B}\sum_b d_b\, s_{I_b}(\delta_{j I_b} - s_j)`; for sigmoid weights
:math:`\partial/\partial z_j = \tfrac{2}{B}\sum_b d_b\,\sigma(z_j)(1-\sigma(z_j))\,\delta_{j I_b}`.

Batch baseline (softmax only, ``center=True`` in :func:`selector_objective`). Softmax weights are invariant to a
common shift of z, and the full-pool gradient is :math:`\tfrac1N s_j N (d_j - \textstyle\sum_i s_i d_i)`: each
row is compared with the pool's weighted mean gap *at the same parameters*. The batch estimate above gives a
row seen at step t its raw :math:`d_b(t)` and spreads the mean over all N logits (a near-uniform, hence
irrelevant, shift). In a run of one or two passes each row is seen once or twice while θ and θ' move, so the
raw gaps of rows seen at different steps sit on different baselines (θ' starts equal to θ, and in the first
steps every gap may have the same sign), and that drift, not the row, decides much of the ranking.
Subtracting the batch mean gap :math:`\bar d` (the batch estimate of the pool mean at step t) is a control
variate: for fixed θ and θ', in expectation over batches it leaves each row's gradient unchanged up to the
factor :math:`(1 - 1/B)` and a uniform shift, and it removes the drift. For sigmoid weights (no shift invariance) the raw gap is used.

Effect of v. Without it, weight flows to rows the golden-trained θ already fits (low :math:`\ell(\theta)`),
which also penalises hard but clean rows. With it, a row is penalised by how much *better* the candidate-only
proxy fits it than θ, i.e. by what fitting it costs on the golden objective: a row both models find hard
keeps its weight, a row only the proxy can fit (memorised noise) loses it.

ρ follows :func:`rho_at_epoch`: :math:`\rho_e = \max(\rho_{\min}, \rho_0 - e\,\Delta\rho)`; a decreasing ρ is an
increasing penalty constant (1-ρ)/ρ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ACTIVATIONS = ("softmax", "sigmoid")


class Selector(torch.nn.Module):
    """Selection logits ``z [N]``, one per distinct candidate id (rows sharing an id share a logit)."""

    def __init__(self, ids: Sequence[str], activation: str = "softmax"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of {list(ACTIVATIONS)}")
        self.ids: list[str] = list(dict.fromkeys(ids))
        if not self.ids:
            raise ValueError("the selector needs at least one candidate id")
        self.position = {row_id: index for index, row_id in enumerate(self.ids)}
        self.activation = activation
        self.logits = torch.nn.Parameter(torch.zeros(len(self.ids)))

    def weights(self) -> torch.Tensor:
        """Weights ``w [N]``: ``N·softmax(z)`` (sums to N) or ``2·σ(z)`` (each in (0, 2)); 1 at z = 0."""
        return selection_weights(self.logits, self.activation)

    def indices(self, ids: Sequence[str]) -> torch.Tensor:
        """Positions ``[B]`` (int64, on the logits' device) of a batch's row ids; unknown ids raise KeyError."""
        try:
            positions = [self.position[row_id] for row_id in ids]
        except KeyError as exc:
            raise KeyError(f"row id {exc.args[0]!r} is not a candidate of this selector") from None
        return torch.tensor(positions, dtype=torch.long, device=self.logits.device)

    def weight_map(self) -> dict[str, float]:
        """Final weight of every candidate id."""
        with torch.no_grad():
            values = self.weights().tolist()
        return dict(zip(self.ids, values, strict=True))


def selection_weights(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Weights of logits ``[N]``: ``N·softmax(z)`` or ``2·σ(z)``."""
    if activation == "softmax":
        return logits.numel() * torch.softmax(logits, dim=0)
    if activation == "sigmoid":
        return 2.0 * torch.sigmoid(logits)
    raise ValueError(f"activation={activation!r} is not one of {list(ACTIVATIONS)}")


def model_objective(rho: float, golden_losses: torch.Tensor, candidate_losses: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """θ's loss ``ρ·mean(ℓ_G) + (1-ρ)·mean(w·ℓ_C)``; the weights are detached (z does not move here).

    Args:
        golden_losses: ``[Bg]`` per-example losses on the golden batch.
        candidate_losses: ``[B]`` per-example losses on the candidate batch.
        weights: ``[B]`` selector weights of the candidate rows.
    """
    return rho * golden_losses.mean() + (1.0 - rho) * (weights.detach() * candidate_losses).mean()


def proxy_objective(candidate_losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The lower-level proxy θ'’s loss ``mean(w·ℓ_C(θ'))`` (weights detached); ``[B]`` inputs."""
    return (weights.detach() * candidate_losses).mean()


def selector_objective(weights: torch.Tensor, upper_losses: torch.Tensor,
                       proxy_losses: torch.Tensor | None, center: bool = False) -> torch.Tensor:
    """Surrogate whose z-gradient is the penalty gradient: ``mean(w(z)·(ℓ(θ) - ℓ(θ')))``.

    ``proxy_losses=None`` drops the value-function term (BiPOST/SEAL). ``center`` subtracts the batch mean of
    the gap (the softmax control variate of the module docstring). Losses are detached.

    Args:
        weights: ``[B]`` weights of the batch rows, differentiable in z.
        upper_losses: ``[B]`` candidate losses under the model θ.
        proxy_losses: ``[B]`` candidate losses under the proxy θ', or None.
    """
    gap = upper_losses.detach()
    if proxy_losses is not None:
        gap = gap - proxy_losses.detach()
    if center:
        gap = gap - gap.mean()
    return (weights * gap).mean()


def rho_at_epoch(epoch: int, rho: float, decay: float, rho_min: float = 0.0) -> float:
    """ρ of epoch ``epoch`` (0-based): ``max(rho_min, rho - epoch·decay)``."""
    if epoch < 0:
        raise ValueError(f"epoch={epoch} must be >= 0")
    return max(rho_min, rho - epoch * decay)
