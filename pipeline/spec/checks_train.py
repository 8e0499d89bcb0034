"""Cross-field checks of training: that it fits in this machine's memory, finishes, trains
something every epoch, freezes what it says, and keeps the checkpoints it is asked for."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.spec import machine
from pipeline.spec.check_registry import check, warn
from pipeline.spec.errors import Problem
from pipeline.spec.footprint import Footprint, footprint, optimizer_state
from pipeline.spec.layers import ShapeError
from pipeline.spec.optim import MAX_STEPS
from pipeline.spec.selectors import Selectable, resolve, selectable
from pipeline.spec.shapes import LayerShapeError
from pipeline.spec.sizes import split_sizes
from pipeline.spec.spec import Spec
from pipeline.spec.train import MAX_EPOCHS, Phase

GIB = 1 << 30
BYTES = 4  # fp32
WARN_FRACTION = 0.8


def _phases(spec: Spec) -> list[Phase]:
    return list(spec.train.phases) or [Phase(epochs=spec.train.epochs)]


def _phase_label(spec: Spec, p: int) -> str:
    name = spec.train.phases[p].name
    return f"phase {name!r}" if name else f"phase {p + 1}"


def train_samples(spec: Spec) -> int | None:
    """Samples of an epoch, when known before prepare (offline augmentation adds its
    copies)."""
    sizes = split_sizes(spec.data)
    if sizes is None or sizes.train is None:
        return None
    a = spec.augment
    return sizes.train * (1 + a.factor) if a.mode == "offline" and a.transforms else sizes.train


def steps_per_epoch(spec: Spec) -> int | None:
    """Optimizer steps of an epoch: its batches, one step per train.accumulate of them."""
    n, size = train_samples(spec), spec.train.batch_size
    if n is None:
        return None
    batches = n // size if spec.train.drop_last else math.ceil(n / size)
    return math.ceil(batches / spec.train.accumulate)


# ---- memory --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    stored: int
    """Bytes of the weights, biases and batch-norm statistics, and of each copy that
    train.ema and train.swa average into."""
    training: int
    """Bytes of the gradients and optimizer state of what trains (the largest phase)."""
    multiple: int
    """Per trained parameter: 1 weight + 1 gradient + the optimizer's state tensors."""
    optimizer: str
    activations: int
    """Bytes of one batch's activations."""

    @property
    def total(self) -> int:
        return self.stored + self.training + self.activations


def _whole(entries: list[Selectable], top: set[str]) -> set[str]:
    """The top-level layers an entry list selects as a whole."""
    return {e.path for e in entries if e.path in top}


def training_need(spec: Spec) -> Need | None:
    """What training holds at its peak: every stored number in fp32; for each trained one its
    gradient and the optimizer's state (the largest over the phases: each freezes and
    optimizes its own, counted per top-level layer, so a backbone block unfrozen inside a
    frozen backbone is left out); one batch's activations. None when the shapes are unknown
    or wrong. For three example specs, a CPU training step's measured peak was 1.2-1.3x this
    (the allocator's and the framework's own use)."""
    shape = spec.model.resolved_input_shape()
    if shape is None:
        return None
    names = spec.model.layer_names()
    tops: list[tuple[str, Footprint]] = []
    try:
        for name, layer in zip(names, spec.model.layers, strict=True):
            tops.append((name, footprint([layer], shape, inputs=False)))
            shape = tuple(layer.output_shape(tuple(shape)))
    except (ShapeError, LayerShapeError):
        return None  # the shapes check says where
    table, top = selectable(spec.model.layers), set(names)

    def whole(selectors: list[Any]) -> set[str]:
        return _whole([e for sel in selectors for e in resolve(sel, table, names)], top)

    base = whole(spec.train.freeze)
    phases = []  # (bytes of gradients and state, multiple, optimizer) of each phase
    for phase in _phases(spec):
        frozen, unfrozen = base | whole(phase.freeze), whole(phase.unfreeze)
        trained = sum(
            fp.params if n in unfrozen else 0 if n in frozen else fp.params - fp.frozen
            for n, fp in tops
        )
        opt = phase.optimizer or spec.optimizer
        multiple = 2 + optimizer_state(opt)
        phases.append((BYTES * trained * (multiple - 1), multiple, opt.type))
    training, multiple, optimizer = max(phases, key=lambda p: p[0])
    per_sample = math.prod(spec.model.resolved_input_shape() or ()) + sum(
        fp.activations for _, fp in tops
    )
    return Need(
        stored=BYTES * sum(fp.stored for _, fp in tops) * copies(spec),
        training=training,
        multiple=multiple,
        optimizer=optimizer,
        activations=BYTES * per_sample * spec.train.batch_size,
    )


def copies(spec: Spec) -> int:
    """The model's weights and the averages' copies of them (train.ema, train.swa)."""
    return 1 + (spec.train.ema is not None) + (spec.train.swa is not None)


def _gib(n: float) -> str:
    return f"{n / GIB:,.1f} GiB"


@check("fits-in-memory")
def _memory(spec: Spec) -> Iterator[Problem]:
    """Training must fit in the memory of the device it runs on (RAM, or the GPU's own when
    train.device is or auto picks cuda): the fp32 weights (and a copy for each of train.ema
    and train.swa), x(2 + the optimizer's state tensors) for what trains, plus one batch's
    activations. An error above what the machine has (it cannot run: the estimate leaves out
    the framework's own use); a warning above 80% of it."""
    need = training_need(spec)
    have = machine.memory_for(spec.train.device)
    if need is None or have is None or need.total <= WARN_FRACTION * have.bytes:
        return
    message = (
        f"training needs ~{_gib(need.total)}, this machine has {_gib(have.bytes)} of "
        f"{have.what}: {_gib(need.stored)} of fp32 weights"
        + (f" (x{copies(spec)}: the averages' copies)" if copies(spec) > 1 else "")
        + f", x{need.multiple} for what trains "
        f"(with gradients and {need.optimizer}'s state), and {_gib(need.activations)} of "
        f"activations for a batch of {spec.train.batch_size}"
    )
    hint = (
        "make the model smaller (`pipeline summary` shows where its parameters are), lower "
        "train.batch_size, or train on a machine with more memory"
    )
    if need.total > have.bytes:
        yield Problem(message, ("model", "layers"), hint=hint)
    else:
        yield warn(message.replace("needs", "may need", 1) + " (over 80%)", ("model", "layers"))


# ---- run length and batches ----------------------------------------------------------------


@check("run-length")
def _run_length(spec: Spec) -> Iterator[Problem]:
    """A run must be able to finish: at most 10,000 epochs over all phases, and at most
    100,000,000 optimizer steps where the training split's size is known before prepare."""
    phases = _phases(spec)
    epochs = sum(p.epochs for p in phases)
    where = ("train", "phases") if spec.train.phases else ("train", "epochs")
    if epochs > MAX_EPOCHS:
        yield Problem(
            f"the phases add up to {epochs:,} epochs, more than the {MAX_EPOCHS:,} a run may have",
            where,
        )
        return
    per_epoch = steps_per_epoch(spec)
    if per_epoch is not None and per_epoch * epochs > MAX_STEPS:
        yield Problem(
            f"{epochs:,} epochs of {per_epoch:,} batches are {per_epoch * epochs:,} optimizer "
            f"steps, more than the {MAX_STEPS:,} a run may have",
            where,
            hint="train fewer epochs, or use a larger train.batch_size",
        )


@check("batches-per-epoch")
def _batches(spec: Spec) -> Iterator[Problem]:
    """With drop_last, a batch larger than the training split leaves no batch: every epoch
    would train nothing. Checked where the split's size is known before prepare (built-in
    datasets); the loader refuses it at run time otherwise."""
    n, size = train_samples(spec), spec.train.batch_size
    if n is not None and spec.train.drop_last and n < size:
        yield Problem(
            f"batch_size {size} with drop_last leaves no batch of the {n} samples of the "
            "training split: every epoch would train nothing",
            ("train", "batch_size"),
            hint=f"use batch_size <= {n}, or drop_last: false",
        )


@check("batch-per-process")
def _batch_per_process(spec: Spec) -> Iterator[Problem]:
    """train.batch_size is the global batch of a distributed run: each of the train.nproc
    processes takes an equal share, so it must divide by nproc."""
    size, nproc = spec.train.batch_size, spec.train.nproc
    if nproc > 1 and size % nproc:
        low = max(nproc, size // nproc * nproc)
        yield Problem(
            f"batch_size {size} does not divide by train.nproc {nproc}: it is the global batch, "
            "each process takes an equal share of it",
            ("train", "batch_size"),
            hint=f"use a multiple of {nproc}, e.g. {low} or {low + nproc}",
        )


# ---- freezing and checkpoints --------------------------------------------------------------


@check("freeze-and-unfreeze")
def _freeze_unfreeze(spec: Spec) -> Iterator[Problem]:
    """A phase applies unfreeze after freeze: unfreeze may narrow a wider freeze (freeze: ['*'],
    unfreeze: [dense_2] trains dense_2 alone), but a freeze entry that the same phase's
    unfreeze undoes entirely (the same layer, or one inside an unfrozen layer) would silently
    train what it names. An error."""
    table, top = selectable(spec.model.layers), spec.model.layer_names()
    for p, phase in enumerate(spec.train.phases):
        unfrozen = [e for sel in phase.unfreeze for e in resolve(sel, table, top)]
        for i, sel in enumerate(phase.freeze):
            frozen = resolve(sel, table, top)
            if frozen and all(any(f.within(u) for u in unfrozen) for f in frozen):
                names = list(dict.fromkeys(f.name for f in frozen))
                shown = ", ".join(names[:5]) + (
                    f" and {len(names) - 5} more" if len(names) > 5 else ""
                )
                yield Problem(
                    f"{_phase_label(spec, p)} freezes {shown} and unfreezes it again: unfreeze "
                    "is applied after freeze, so it would train",
                    ("train", "phases", p, "freeze", i),
                    hint="remove it from freeze (or from unfreeze, to keep it frozen)",
                )


@check("best-checkpoint-kept")
def _best_checkpoint(spec: Spec) -> Iterator[Problem]:
    """train.checkpoint.best: false keeps no best checkpoint, which early stopping's
    restore_best and evaluate.checkpoint: best need (training would keep its last weights
    unsaid, evaluate would fail): an error. pipeline predict and export read it too: a
    warning."""
    if spec.train.checkpoint.best:
        return
    es = spec.train.early_stopping
    found = False
    if es is not None and es.restore_best:
        found = True
        yield Problem(
            "restore_best needs the best checkpoint, which train.checkpoint.best: false does "
            "not keep",
            ("train", "early_stopping", "restore_best"),
            hint="set train.checkpoint.best: true, or restore_best: false",
        )
    if spec.evaluate.checkpoint == "best":
        found = True
        yield Problem(
            "no best checkpoint is kept, but evaluate reads it (evaluate.checkpoint: best, the "
            "default)",
            ("train", "checkpoint", "best"),
            hint="set evaluate.checkpoint: last, or train.checkpoint.best: true",
        )
    if not found:
        yield warn(
            "pipeline predict and export read the best checkpoint, which this spec does not keep",
            ("train", "checkpoint", "best"),
        )


# ---- weight averaging ----------------------------------------------------------------------


@check("swa-in-range")
def _swa(spec: Spec) -> Iterator[Problem]:
    """train.swa.start_epoch must be an epoch of the run, or nothing would be averaged and
    evaluate.checkpoint: swa would find no file; evaluate.checkpoint: swa needs train.swa. A
    run with train.swa that evaluates another checkpoint is warned: the average is its
    point."""
    swa, which = spec.train.swa, spec.evaluate.checkpoint
    if swa is None:
        if which == "swa":
            yield Problem(
                "evaluate.checkpoint: swa reads the weight average that train.swa makes, and "
                "train.swa is not set",
                ("evaluate", "checkpoint"),
                hint="set train.swa: {start_epoch: ..., lr: ...}, or evaluate.checkpoint: best",
            )
        return
    epochs = sum(p.epochs for p in _phases(spec))
    if swa.start_epoch > epochs:
        yield Problem(
            f"swa.start_epoch {swa.start_epoch} is after the run's last epoch ({epochs}): no "
            "weights would be averaged",
            ("train", "swa", "start_epoch"),
            hint=f"use a start_epoch from 1 to {epochs} (often the last quarter of the run)",
        )
    elif which != "swa":
        yield warn(
            f"train.swa averages the weights, but evaluate reads the {which} checkpoint",
            ("evaluate", "checkpoint"),
            hint="set evaluate.checkpoint: swa",
        )
