"""The single-loop penalty-method training of a :class:`~alignment.filtering.selector.Selector`.

Each step updates the model θ, the lower-level proxy θ' (only with the value-function term) and the selector
logits z, in that order, from one golden and one candidate batch; the update rules are in
:mod:`alignment.filtering.selector`. Per-example losses come from :mod:`alignment.losses` through a
``loss_fn(model, batch) -> [B]`` (:func:`sft_example_losses`, :func:`preference_example_losses`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from alignment.filtering.selector import (
    Selector,
    model_objective,
    proxy_objective,
    rho_at_epoch,
    selector_objective,
)
from alignment.losses import sft_loss

Batch = dict[str, Any]
LossFn = Callable[[Any, Batch], torch.Tensor]
SELECTOR_OPTIMIZERS = ("adam", "sgd")


class BatchStream(Protocol):
    """An endless source of batches carrying their row ids in ``batch["ids"]`` (e.g. ``CyclingBatches``)."""

    def next(self) -> Batch: ...


def sft_example_losses(model: Any, batch: Batch) -> torch.Tensor:
    """Per-example token-mean SFT loss ``[B]`` of a ``collate_sft`` batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sft_loss(logits, batch["labels"])


def preference_example_losses(component: Any) -> LossFn:
    """Per-example preference loss ``[B]`` through a ``PreferenceComponent`` (its loss type and reference)."""

    def losses(model: Any, batch: Batch) -> torch.Tensor:
        return component.outputs(model, batch).losses

    return losses


@dataclass
class BilevelSettings:
    """Optimisation of one selection run; ``steps_per_epoch`` sets when ρ decays (one candidate epoch).

    ``center_gap`` subtracts the batch-mean gap in the selector objective when the weights are softmax (see
    :func:`~alignment.filtering.selector.selector_objective`); sigmoid weights always use the raw gap.
    """

    steps: int
    steps_per_epoch: int
    lr: float = 5e-4
    proxy_lr: float = 5e-4
    selector_lr: float = 0.05
    selector_optimizer: str = "adam"
    rho: float = 0.9
    rho_decay: float = 0.1
    rho_min: float = 0.0
    value_function: bool = True
    center_gap: bool = True  # softmax weights only: the batch-mean baseline of selector.py's docstring
    max_grad_norm: float = 1.0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"steps={self.steps} and steps_per_epoch={self.steps_per_epoch} must be >= 1")
        if self.selector_optimizer not in SELECTOR_OPTIMIZERS:
            raise ValueError(f"selector_optimizer={self.selector_optimizer!r} is not one of "
                             f"{list(SELECTOR_OPTIMIZERS)}")


@dataclass
class BilevelResult:
    """Steps run, wall time, and the logged records (every ``log_every`` steps and the last)."""

    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_selector(model: Any, proxy: Any | None, selector: Selector, golden: BatchStream,
                   candidates: BatchStream, loss_fn: LossFn, settings: BilevelSettings,
                   on_log: Callable[[dict[str, float]], None] | None = None,
                   progress: bool = False,
                   on_pass_end: Callable[[int], None] | None = None) -> BilevelResult:
    """Run ``settings.steps`` penalty steps; ``selector`` holds the learned logits afterwards.

    ``proxy`` (a copy of the initial model) is required when ``settings.value_function`` is on and ignored
    otherwise. Models and selector must be on the same device; batches are moved there. ``progress``: a bar
    over the steps (ρ and the latest losses as its postfix). ``on_pass_end(p)`` runs after each complete pass
    ``p`` (1-based) over the candidates, e.g. to snapshot the weights.
    """
    if settings.value_function and proxy is None:
        raise ValueError("the value-function term needs a proxy model θ'")
    device = selector.logits.device
    model_opt = _adamw(model, settings.lr)
    proxy_opt = _adamw(proxy, settings.proxy_lr) if settings.value_function and proxy is not None else None
    selector_opt = _selector_optimizer(selector, settings)
    center = settings.center_gap and selector.activation == "softmax"
    model.train()
    if proxy_opt is not None and proxy is not None:
        proxy.train()
    result = BilevelResult(steps=0, seconds=0.0)
    start = time.perf_counter()
    with tqdm(total=settings.steps, desc="bilevel selection", unit="step", disable=not progress) as bar:
        for step in range(settings.steps):
            rho = rho_at_epoch(step // settings.steps_per_epoch, settings.rho, settings.rho_decay, settings.rho_min)
            gold, batch = _to(golden.next(), device), _to(candidates.next(), device)
            # one differentiable weight lookup per step: θ and θ' read it detached, the selector step backpropagates
            weights = selector.weights()[selector.indices(batch["ids"])]
            record = {"step": float(step + 1), "rho": rho}
            upper = _model_step(model, model_opt, loss_fn, gold, batch, weights, rho, settings.max_grad_norm, record)
            lower = None
            if proxy_opt is not None:
                lower = _proxy_step(proxy, proxy_opt, loss_fn, batch, weights, settings.max_grad_norm, record)
            selector_opt.zero_grad(set_to_none=True)
            objective = selector_objective(weights, upper, lower, center=center)
            objective.backward()
            selector_opt.step()
            record["selector_objective"] = float(objective.detach())
            result.steps = step + 1
            bar.set_postfix(rho=f"{rho:.2f}", golden_loss=f"{record['golden_loss']:.3f}", refresh=False)
            bar.update(1)
            if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
                result.history.append(record)
                if on_log is not None:
                    on_log(record)
            if on_pass_end is not None and (step + 1) % settings.steps_per_epoch == 0:
                on_pass_end((step + 1) // settings.steps_per_epoch)
    result.seconds = time.perf_counter() - start
    return result


def _model_step(model: Any, optimizer: torch.optim.Optimizer, loss_fn: LossFn, gold: Batch, batch: Batch,
                weights: torch.Tensor, rho: float, max_norm: float, record: dict[str, float]) -> torch.Tensor:
    """One θ update; returns the candidate losses ``[B]`` under θ before the update (detached).

    At ρ = 1 (SEAL's first epoch) the candidate term has weight 0 in θ's objective, so the candidate losses are
    computed without a graph (forward only); at ρ = 0 the golden batch is not run at all.
    """
    optimizer.zero_grad(set_to_none=True)
    zero = torch.zeros(1, device=weights.device)
    golden_losses = loss_fn(model, gold) if rho > 0 else zero
    if rho >= 1.0:
        with torch.no_grad():
            candidate_losses = loss_fn(model, batch)
        objective = golden_losses.mean()
    else:
        candidate_losses = loss_fn(model, batch)
        objective = model_objective(rho, golden_losses, candidate_losses, weights)
    objective.backward()
    torch.nn.utils.clip_grad_norm_(_trainable(model), max_norm)
    optimizer.step()
    record["golden_loss"] = float(golden_losses.detach().mean())
    record["candidate_loss"] = float(candidate_losses.detach().mean())
    return candidate_losses.detach()


def _proxy_step(proxy: Any, optimizer: torch.optim.Optimizer, loss_fn: LossFn, batch: Batch,
                weights: torch.Tensor, max_norm: float, record: dict[str, float]) -> torch.Tensor:
    """One θ' update on the weighted candidate loss; returns its losses ``[B]`` *after* the update.

    v(z) is the value at the argmin θ'*, a model trained on every candidate row, so ℓ_i(θ'*) is an in-sample
    loss. In a single pass the proxy has not yet trained on the rows of the current batch: its loss before the
    update is a held-out loss, which for the first batches is just the initial model's (the gap ℓ(θ) - ℓ(θ') is
    then 0, or noise). Evaluating the updated proxy (one forward without a graph) gives the in-sample loss of
    the latest iterate (world=ci, one pass, seeds 0-2: AUROC 0.89-0.95 before, 0.97-0.99 after).
    """
    optimizer.zero_grad(set_to_none=True)
    losses = loss_fn(proxy, batch)
    proxy_objective(losses, weights).backward()
    torch.nn.utils.clip_grad_norm_(_trainable(proxy), max_norm)
    optimizer.step()
    with torch.no_grad():
        fitted = loss_fn(proxy, batch)
    record["proxy_loss"] = float(losses.detach().mean())
    record["proxy_loss_after"] = float(fitted.mean())
    return fitted


def _adamw(model: Any, lr: float) -> torch.optim.Optimizer:
    """AdamW without weight decay; the fused kernel where torch has one (on CPU it is ~3x faster than the
    per-parameter loop, and the filter steps two models)."""
    params = _trainable(model)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except RuntimeError:  # device or dtype without a fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _selector_optimizer(selector: Selector, settings: BilevelSettings) -> torch.optim.Optimizer:
    if settings.selector_optimizer == "sgd":
        return torch.optim.SGD(selector.parameters(), lr=settings.selector_lr)
    # BiPOST's selector engine: Adam, betas (0.9, 0.95), no weight decay
    return torch.optim.Adam(selector.parameters(), lr=settings.selector_lr, betas=(0.9, 0.95))


def _trainable(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
