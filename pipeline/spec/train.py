"""The ``train`` and ``evaluate`` sections."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from pipeline.spec.base import NonNegativeFloat, PositiveFloat, PositiveInt, StrictModel
from pipeline.spec.evaluate import TTA
from pipeline.spec.optim import OptimizerSpec, ScheduleSpec

MAX_EPOCHS = 10_000
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
"""At most 10,000 epochs (over all phases too): at a second an epoch that is nearly three
hours, at a minute a week; more is a typo that would never finish (``1e9``)."""


class LayerRange(StrictModel):
    """A run of layers in model order (backbone sub-layers included): ``{from: block5_conv1}``
    is that layer and everything after it; ``{before: ...}`` everything before it."""

    from_: str | int | None = Field(default=None, alias="from")
    before: str | int | None = None


LayerSelector = str | int | LayerRange
"""A layer name or glob (``backbone_1``, ``block5_*``), a top-level index (``-1`` is the last),
or a range. Names are those ``pipeline summary --expand`` lists: a reused model's layers as
``<reuse>.<layer>``, a backbone's blocks as ``<backbone>.<block>`` (or bare: the first
backbone's), a residual's layers by their own names or as ``<residual>.<layer>``."""


def _monitor(value: str) -> str:
    if value == "auto":
        return value
    multi = "micro_f1|macro_f1|subset_accuracy|hamming_loss"  # multi-label data's
    if not re.fullmatch(rf"(val_)?(loss|accuracy|top\d+_accuracy|{multi})", value):
        raise ValueError(
            f"unknown metric {value!r}; valid: loss, accuracy, topK_accuracy, (multi-label) "
            "micro_f1, macro_f1, subset_accuracy, hamming_loss, each optionally prefixed with "
            "val_ (e.g. val_loss, val_accuracy, val_top5_accuracy)"
        )
    return value


class EarlyStopping(StrictModel):
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""

    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    """auto: max for accuracy metrics, min for losses."""
    patience: Annotated[int, Field(ge=0)] = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0
    restore_best: bool = True
    """Finish with the weights of the best epoch, not the last (needs train.checkpoint.best)."""

    _check_monitor = field_validator("monitor")(_monitor)


class Checkpoint(StrictModel):
    """The best checkpoint (``last.pt`` is always written: ``--resume`` continues from it)."""

    monitor: str = "auto"
    """auto: early stopping's monitor if set, else val_loss with a validation split, else loss."""
    mode: Literal["auto", "min", "max"] = "auto"
    best: bool = True
    """Keep ``best.pt``: early stopping's restore_best, and evaluate.checkpoint: best (what
    evaluate, predict and export then read) need it."""
    keep_top: Annotated[int, Field(ge=1, le=100)] | None = None
    """Also keep the k best epochs by ``monitor``, each in its own file named with its epoch
    and value (``top_epoch003_val_loss_0.0412.pt``); a file that falls out of the k best is
    deleted once the better one is written. train.json lists them, best first."""

    _check_monitor = field_validator("monitor")(_monitor)


class EMA(StrictModel):
    """An exponential moving average of the weights (and batch-norm statistics), updated after
    every optimizer step: ``ema = decay * ema + (1 - decay) * weights``. Validation, the best
    checkpoint's choice, evaluate, export and predict use the averaged weights; checkpoints
    hold both, so a resumed run goes on exactly."""

    decay: Annotated[float, Field(gt=0, lt=1)] = 0.999
    """Per optimizer step; the average spans about 1 / (1 - decay) steps (0.999: ~1000)."""
    warmup: bool = False
    """Start with a short memory: step t uses min(decay, (1 + t) / (10 + t)), as TensorFlow's
    ExponentialMovingAverage with num_updates, so early averages are not dominated by the
    random initial weights (for runs of a few thousand steps or fewer)."""


class SWA(StrictModel):
    """Stochastic weight averaging (Izmailov et al.; torch.optim.swa_utils): from
    ``start_epoch`` on, the learning rate anneals to ``lr`` (SWALR) and each epoch's final
    weights join an equal-weight average; at the end batch-norm statistics are recomputed for
    the average (update_bn), which is validated and saved as ``checkpoints/swa.pt``
    (``evaluate.checkpoint: swa`` evaluates it)."""

    start_epoch: Epochs
    """The first epoch (1-based, counted over all phases) whose weights are averaged."""
    lr: PositiveFloat
    """The constant learning rate of the averaging epochs (every parameter group)."""
    anneal_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 5
    """Epochs over which the rate moves from the schedule's to ``lr`` (0: at once)."""
    anneal_strategy: Literal["cos", "linear"] = "cos"


class Phase(StrictModel):
    """A stretch of training with its own frozen set and optimizer settings (the seeds' recipe:
    train the new head on a frozen base, then unfreeze the top block with a lower rate)."""

    name: str | None = None
    epochs: Epochs
    """At most 10,000 (all phases together too): more would not finish."""
    freeze: list[LayerSelector] = []
    """Frozen during this phase (in addition to layers with trainable: false)."""
    unfreeze: list[LayerSelector] = []
    """Made trainable during this phase (overrides trainable: false and train.freeze).
    Applied after ``freeze``: it may narrow a wider freeze (``freeze: ['*'], unfreeze:
    [dense_2]`` trains dense_2 alone), but unfreezing everything a freeze entry names (the
    layer itself, or a layer it sits in) is an error, as it would silently train it."""
    lr: PositiveFloat | None = None
    """The optimizer's learning rate for this phase."""
    optimizer: OptimizerSpec | None = None  # type: ignore[valid-type]
    """A different optimizer for this phase (state starts fresh)."""
    schedule: ScheduleSpec | None = None  # type: ignore[valid-type]


def _weights_form(value: Any) -> str:
    """Which form of class weights a value is written in, so that an error speaks of that
    form only (not of every form of the union); the tags read as branch labels, which the
    error paths leave out (``pydantic_errors.clean_path``)."""
    if isinstance(value, dict):
        return "dict[class, weight]"
    return "list[weight]" if isinstance(value, list | tuple) else "literal['balanced']"


ClassWeights = Annotated[
    Annotated[Literal["balanced"], Tag("literal['balanced']")]
    | Annotated[list[PositiveFloat], Tag("list[weight]")]
    | Annotated[dict[str | int, PositiveFloat], Tag("dict[class, weight]")],
    Discriminator(_weights_form),
]
"""Per-class loss weights: ``balanced``, a list in class order, or class -> weight."""


class TrainSection(StrictModel):
    """How the model is trained (the train stage)."""

    epochs: Epochs = 10
    """Ignored when ``phases`` are given (each phase has its own). At most 10,000: at a
    second an epoch nearly three hours; more (``1e9``) would never finish."""
    batch_size: PositiveInt = 64
    """Samples of one forward pass (the global batch with several processes)."""
    accumulate: Annotated[int, Field(ge=1, le=1024)] = 1
    """Gradient accumulation (Lightning's accumulate_grad_batches): one optimizer step per
    ``accumulate`` batches, the loss scaled so that its gradient is that of the one batch of
    ``batch_size * accumulate`` samples (exactly, but for batch norm and dropout, which see
    each batch alone). Schedules, steps and the lr are per optimizer step."""
    loss: Literal["auto", "cross_entropy", "binary_cross_entropy", "focal"] = "auto"
    """auto: binary cross-entropy for one output unit, else cross-entropy; both on logits (a
    final softmax/sigmoid layer is applied only at prediction, never twice). focal: Lin et
    al.'s focal loss, -(1 - p_t)^gamma log p_t (softmax, or sigmoid for one output unit or
    per output with data.multi_label), which down-weights examples the model already gets
    right; ``class_weights`` are its alpha."""
    focal_gamma: NonNegativeFloat = 2.0
    """The focal loss's gamma (Lin et al.'s 2); 0 is plain cross-entropy."""
    class_weights: ClassWeights | None = None
    """Weights of the classes in the loss (Keras's ``class_weight``): a list in class order,
    a mapping of class name (or index) to weight (classes not named weigh 1), or
    ``balanced``: n_samples / (n_classes * count_c), scikit-learn's definition, computed by
    prepare from the training split (after class selection, subsets and the validation
    hold-out) and stored in the prepared data's meta.json. Class names are those after
    ``data.classes`` (merged names with ``merge``). The loss is the weighted mean
    sum(w_y * l) / sum(w_y), as PyTorch's ``cross_entropy(weight=)``: the weights shift the
    balance between classes, not the step size (Keras divides by the batch size instead).
    The validation loss is weighted the same way; evaluate's test_loss is not."""
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    top_k: list[Annotated[int, Field(ge=2)]] = []
    """Also track top-k accuracy for these k."""
    early_stopping: EarlyStopping | None = None
    checkpoint: Checkpoint = Checkpoint()
    freeze: list[LayerSelector] = []
    """Layers not trained (Keras ``trainable = False``); their batch norm stays in eval mode."""
    phases: list[Phase] = []
    ema: EMA | None = None
    swa: SWA | None = None
    device: str = "auto"
    """auto (cuda when present, else cpu), cpu, cuda, or cuda:N."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision (autocast; weights stay fp32). CUDA: auto is bf16 where supported,
    else fp16 with a gradient scaler. CPU: bf16 runs where the CPU has native bf16 (AVX-512
    BF16 or AMX), else fp32; auto is bf16 on CPUs with AMX, where it is clearly faster, and
    fp32 elsewhere (AVX-512 BF16 alone gained 1.13x); fp16 trains in fp32. train.json and
    metrics.json record what ran."""
    nproc: Annotated[int, Field(ge=1, le=1024)] = 1
    """Processes of one run (PyTorch's DistributedDataParallel: gloo on CPU, NCCL on CUDA,
    one process per GPU); ``pipeline train`` starts them with torchrun's launcher. Under
    ``torchrun`` the launcher's world size is used instead. ``batch_size`` stays the global
    batch: each process takes ``batch_size / nproc`` of it (it must divide), so a run of the
    same global batch counts the same steps whatever the number of processes."""
    sync_batch_norm: bool = False
    """With several processes, batch norm over the whole global batch (SyncBatchNorm; CUDA
    only). Off, each process normalizes by its own share."""
    channels_last: Literal["auto"] | bool = "auto"
    """Memory format for conv nets (auto: on, it is faster on CPU and CUDA)."""
    compile: bool = False
    """torch.compile the model (slower to start; on CPU it was slower for training)."""
    deterministic: bool = False
    """Deterministic algorithms (slower on CUDA); runs are seeded either way."""
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    """shuffle: every training sample once per epoch, in a seeded order; balanced: each
    epoch draws as many samples, with replacement, each class equally likely (PyTorch's
    WeightedRandomSampler with weights 1 / count of the sample's class), seeded per epoch. A
    training setting, not a data one: the prepared data stay the same."""
    drop_last: bool = False
    """Drop the last incomplete batch of each epoch (a batch larger than the training split
    then leaves none: an error)."""
    diagnostics: bool = False
    """Record per-layer activation mean/std and gradient norms every epoch."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"unknown device {value!r}; valid: auto, cpu, cuda, cuda:N, mps")
        return value


class MCDropout(StrictModel):
    """Monte Carlo dropout (Gal and Ghahramani): average predictions with dropout active."""

    samples: Annotated[int, Field(ge=2)] = 30


class EvaluateSection(StrictModel):
    """What the evaluate stage computes on the (never augmented) test split."""

    batch_size: PositiveInt = 256
    """256 rather than larger: the default convnet evaluated fastest at 128-256 on this project's
    CPU (fp32 about 29.5k images/s, 24k at 512, whose activations outgrow the caches)."""
    checkpoint: Literal["best", "last", "swa"] = "best"
    """Which weights: the best epoch's, the last epoch's, or train.swa's average; export and
    predict of the spec use the same unless given ``--checkpoint``."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Inference precision. bf16 runs under autocast on CUDA and on CPUs with native bf16
    (AVX-512 BF16 or AMX; 1.8-2.1x faster for the default convnet on this project's CPU), and
    falls back to fp32 elsewhere; metrics.json records what ran. A few borderline test samples
    can flip their prediction."""
    top_k: list[Annotated[int, Field(ge=2)]] = []
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """multi_label: a class is predicted when its sigmoid reaches this (in the training
    history's metrics too)."""
    per_class: bool = True
    """Per-class precision, recall and F1."""
    confusion_matrix: bool = True
    """``confusion.csv`` (for DVC's confusion template) and ``confusion.png`` (counts and
    row-normalized, class names on the axes)."""
    curves: bool = True
    """ROC and precision-recall curves, one-vs-rest per class with micro and macro averages:
    ``roc.csv`` and ``pr.csv`` (DVC plots), ``roc_pr.png``, and their areas in metrics.json
    (``roc_auc_macro``, ``roc_auc_micro``, ``pr_auc_macro``, ``pr_auc_micro``; per class with
    ``per_class``)."""
    tta: TTA | None = None
    """Test-time augmentation, e.g. ``{flip: true, augment: 4}``: the averaged prediction's
    metrics are added with a ``tta_`` prefix (the plain ones are unchanged)."""
    mc_dropout: MCDropout | None = None
    calibration_bins: Annotated[int, Field(ge=2)] = 15
    """Bins of the expected calibration error."""
    fold_batch_norm: bool = False
    """Fold batch norm into the preceding conv/dense for inference (checked equal)."""
    export: list[Literal["torchscript", "onnx"]] = []
