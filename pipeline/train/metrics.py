"""Losses and running metrics, computed on device without per-batch host syncs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pipeline.data.class_weights import resolve_class_weights
from pipeline.errors import ConfigurationError
from pipeline.spec.spec import Spec
from pipeline.train.losses import ClassWeights, LossFn, LossOptions, build_loss

if TYPE_CHECKING:
    from pipeline.data.prepare import Prepared


def loss_fn(
    kind: str,
    outputs: int,
    label_smoothing: float,
    weights: list[float] | None = None,
    gamma: float = 2.0,
    multi_label: bool = False,
) -> LossFn:
    """The loss ``kind`` on logits (:mod:`.losses`), with per-class ``weights``; multi-label:
    a binary cross-entropy per output."""
    w = ClassWeights(weights) if weights is not None else None
    return build_loss(kind, LossOptions(outputs, label_smoothing, w, gamma, multi_label))


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Class indices from logits (one output: the sign of the logit)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


class RunningMetrics:
    """Sums on the device; ``compute`` syncs once per epoch."""

    def __init__(self, top_k: list[int], device: torch.device) -> None:
        self.top_k = [k for k in top_k if k > 1]
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device, dtype=torch.float64)
        self.correct = torch.zeros((), device=self.device, dtype=torch.int64)
        self.topk = torch.zeros(len(self.top_k), device=self.device, dtype=torch.int64)
        self.count = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        n = y.shape[0]
        self.loss += loss.detach().double() * n
        self.correct += (predictions(logits) == y).sum()
        if self.top_k and logits.shape[1] > 1:
            k_max = min(max(self.top_k), logits.shape[1])
            top = logits.topk(k_max, dim=1).indices == y[:, None]
            hits = torch.stack([top[:, :k].any(dim=1).sum() for k in self.top_k])
            self.topk += hits
        self.count += n

    def running(self) -> str:
        """This rank's loss and accuracy so far, for the progress bar: one host sync (CUDA)."""
        n = max(self.count, 1)
        both = torch.stack([self.loss, self.correct.double()]).tolist()
        return f"loss {both[0] / n:.4f} acc {both[1] / n:.4f}"

    def compute(self, world: Any = None, prefix: str = "") -> dict[str, float]:
        """The metrics so far; with ``world`` (a distributed group) over every rank's part."""
        if world is not None and world.distributed:
            sums = torch.cat([
                self.loss.reshape(1), self.correct.double().reshape(1), self.topk.double(),
                torch.tensor([float(self.count)], dtype=torch.float64, device=self.device),
            ])  # fmt: skip
            world.all_sum(sums)
            self.loss, self.correct = sums[0], sums[1].long()
            self.topk, self.count = sums[2:-1].long(), int(sums[-1].item())
        n = max(self.count, 1)
        out = {f"{prefix}loss": self.loss.item() / n, f"{prefix}accuracy": self.correct.item() / n}
        for k, hits in zip(self.top_k, self.topk.tolist(), strict=True):
            out[f"{prefix}top{k}_accuracy"] = hits / n
        return out


def output_units(spec: Spec) -> int:
    """The model's number of outputs, from the spec's shapes."""
    from pipeline.spec.shapes import infer_shapes

    shape = spec.model.resolved_input_shape()
    return infer_shapes(spec.model.layers, shape, ())[-1][0]  # type: ignore[arg-type]


def spec_loss(spec: Spec, prepared: Prepared | None = None) -> LossFn:
    """The spec's loss on logits, for its number of outputs (multi-label: one binary
    cross-entropy each), with the class weights ``train.class_weights`` gives for
    ``prepared``'s classes."""
    t = spec.train
    weights = None
    if t.class_weights is not None:
        if prepared is None:
            raise ConfigurationError("train.class_weights needs the prepared data's classes")
        weights = resolve_class_weights(t.class_weights, prepared.meta)
    outputs = output_units(spec)
    return loss_fn(
        t.loss, outputs, t.label_smoothing, weights, t.focal_gamma, spec.data.multi_label
    )


def training_targets(spec: Spec, prepared: Prepared, world: Any) -> tuple[LossFn, Any, Any]:
    """What the trainer compares its outputs with: the loss (:func:`spec_loss`), the batch
    mixer (mixup, cutmix; training batches only, each rank its own draws) and a factory of
    running metrics on a device (multi-label's or not)."""
    from pipeline.train.mix import BatchMixer
    from pipeline.train.multilabel import MultiLabelMetrics

    multi, units, classes = spec.data.multi_label, output_units(spec), prepared.classes
    if multi and units != len(classes):  # the classes come from the labels file, known only now
        raise ConfigurationError(
            f"the model has {units} outputs but the labels file names {len(classes)} classes "
            f"({', '.join(classes)}): give the last layer {len(classes)} units, one per class"
        )
    mixer = BatchMixer(spec.augment, units, multi_label=multi, seed=spec.seed, rank=world.rank)

    def metrics(on: torch.device) -> Any:
        if multi:
            return MultiLabelMetrics(classes, spec.evaluate.threshold, on)
        return RunningMetrics(spec.train.top_k, on)

    return spec_loss(spec, prepared), mixer, metrics
