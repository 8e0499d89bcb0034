"""The losses ``train.loss`` names, on logits, each built from a table keyed by that name, with
class weights and the focal loss's gamma.

Every loss is a weighted mean: sum(w_y * l) / sum(w_y) over the batch, where w_y is the weight
of the sample's class (1 without class weights). That is PyTorch's ``cross_entropy(weight=)``,
so the weights shift the balance between classes without scaling the step size, and the focal
loss at gamma 0 equals the cross-entropy with the same weights.

Targets are class indices (N,), or float rows shaped like the logits: soft targets from
mixup/cutmix (:mod:`.mix`) and, multi-label (``data.multi_label``), multi-hot rows (N, K)
with a binary cross-entropy per output. Class weights and the (softmax) focal loss need class
indices: the spec checks refuse them with soft or multi-hot targets (``weighted-loss-targets``),
and the builders say so again if called with them. Multi-label, the focal loss is the sigmoid
one per output (torchvision's ``sigmoid_focal_loss``, mean over samples and outputs: gamma 0 is
the binary cross-entropy).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.errors import ConfigurationError
from pipeline.spec.train import TrainSection

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ClassWeights:
    """Per-class weights, copied once to each device the logits come on (not every step)."""

    def __init__(self, weights: list[float]) -> None:
        self._cpu = torch.tensor(weights, dtype=torch.float32)
        self._on: dict[torch.device, torch.Tensor] = {}

    def on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self._cpu.to(device)
        return self._on[device]


@dataclass(frozen=True)
class LossOptions:
    outputs: int
    """Output units of the model: 1 is binary (a sigmoid), more a softmax over classes."""
    label_smoothing: float = 0.0
    weights: ClassWeights | None = None
    gamma: float = 2.0
    """The focal loss's focusing parameter."""
    multi_label: bool = False
    """Multi-hot targets (N, K): a binary cross-entropy for each of the ``outputs``."""


def weighted_mean(
    losses: torch.Tensor, y: torch.Tensor, weights: ClassWeights | None
) -> torch.Tensor:
    """sum(w_y * l) / sum(w_y): the mean of per-sample losses weighted by their class."""
    if weights is None:
        return losses.mean()
    hard(y, "class weights")
    w = weights.on(losses.device)[y]
    return (losses * w).sum() / w.sum()


def hard(y: torch.Tensor, what: str) -> None:
    """A ConfigurationError unless ``y`` holds class indices (not soft or multi-hot rows)."""
    if y.is_floating_point() or y.ndim != 1:
        raise ConfigurationError(
            f"{what}: each sample needs a class index, not soft targets (mixup, cutmix) or "
            "multi-hot labels (multi-label data)"
        )


LOSS_BUILDERS: dict[str, Callable[[LossOptions], LossFn]] = {}


def _builds(
    name: str,
) -> Callable[[Callable[[LossOptions], LossFn]], Callable[[LossOptions], LossFn]]:
    def add(fn: Callable[[LossOptions], LossFn]) -> Callable[[LossOptions], LossFn]:
        LOSS_BUILDERS[name] = fn
        return fn

    return add


@_builds("cross_entropy")
def _cross_entropy(o: LossOptions) -> LossFn:
    def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = None
        if o.weights is not None:
            hard(y, "class weights")
            w = o.weights.on(logits.device)
        # y: class indices, or soft targets (N, K) that F.cross_entropy takes as they are
        return F.cross_entropy(logits, y, weight=w, label_smoothing=o.label_smoothing)

    return ce


def _binary_target(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    target = y.to(logits.dtype).view_as(logits)
    return target * (1 - smoothing) + 0.5 * smoothing if smoothing else target


@_builds("binary_cross_entropy")
def _binary_cross_entropy(o: LossOptions) -> LossFn:
    if o.outputs != 1 and not o.multi_label:
        raise ConfigurationError(
            f"binary_cross_entropy needs one output unit, the model has {o.outputs}"
        )

    def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = _binary_target(logits, y, o.label_smoothing)
        if o.weights is None:
            return F.binary_cross_entropy_with_logits(logits, target)
        losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return weighted_mean(losses.view(-1), y, o.weights)

    return bce


def softmax_focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per sample, Lin et al. (2017, "Focal Loss for Dense Object Detection", eq. 4) over a
    softmax: FL(p_t) = -(1 - p_t)^gamma * log(p_t), p_t the probability of the true class.
    (torchvision's ``sigmoid_focal_loss`` is the one-vs-all sigmoid form, used for one output
    unit; a softmax classifier needs this one.) gamma 0 is the cross-entropy."""
    log_pt = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return -(1 - log_pt.exp()).pow(gamma) * log_pt


@_builds("focal")
def _focal(o: LossOptions) -> LossFn:
    def focal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if o.multi_label:  # a sigmoid focal loss per output, on multi-hot (or mixed) rows
            target = _binary_target(logits, y, 0.0)
            return sigmoid_focal_loss(logits, target, alpha=-1, gamma=o.gamma, reduction="mean")
        hard(y, "the focal loss")
        if o.outputs == 1:  # alpha=-1: no built-in alpha, the class weights are the alpha
            target = _binary_target(logits, y, 0.0)
            losses = sigmoid_focal_loss(logits, target, alpha=-1, gamma=o.gamma, reduction="none")
            return weighted_mean(losses.view(-1), y, o.weights)
        return weighted_mean(softmax_focal_loss(logits, y, o.gamma), y, o.weights)

    return focal


def _check_complete() -> None:
    """Every loss the schema names (but auto, which picks one) has a builder, at import."""
    named = set(typing.get_args(TrainSection.model_fields["loss"].annotation)) - {"auto"}
    if missing := sorted(named - set(LOSS_BUILDERS)):
        raise TypeError(f"no loss builder for train.loss {', '.join(missing)}")


_check_complete()


def build_loss(kind: str, options: LossOptions) -> LossFn:
    """The loss ``kind`` (auto: binary cross-entropy for one output unit or multi-label data,
    else cross-entropy)."""
    multi = options.multi_label
    if kind == "auto":
        kind = "binary_cross_entropy" if options.outputs == 1 or multi else "cross_entropy"
    if multi and kind not in ("binary_cross_entropy", "focal"):
        raise ConfigurationError(
            f"multi-label data needs binary_cross_entropy or focal (per output), not {kind}"
        )
    if multi and options.weights is not None:
        raise ConfigurationError("class weights need one class per sample, not multi-label data")
    return LOSS_BUILDERS[kind](options)
