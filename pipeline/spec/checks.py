"""Cross-field checks: rules no single field can enforce, each with its reason.

A check is a function of the validated spec yielding problems; ``@check(name)`` registers it
(:mod:`pipeline.spec.check_registry`). Warnings can be silenced per spec with
``ignore_checks: [name]``; errors cannot. The model's checks are here, those of training and
its limits in :mod:`pipeline.spec.checks_train`.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.spec.activations import SELU, ActivationBase, activation_model
from pipeline.spec.base import LayerKind
from pipeline.spec.check_registry import CHECKS, check, run_checks
from pipeline.spec.check_registry import warn as _warn
from pipeline.spec.composite import Reuse
from pipeline.spec.errors import Problem, did_you_mean
from pipeline.spec.init import VarianceScaling, init_model
from pipeline.spec.layers import (
    AlphaDropout,
    BatchNorm,
    Dense,
    Dropout,
    SpatialDropout2D,
    WeightedLayer,
)
from pipeline.spec.normalization import GroupNorm, LayerNorm
from pipeline.spec.optim import Adam, ReduceOnPlateau
from pipeline.spec.selectors import resolve, selectable
from pipeline.spec.shapes import LayerShapeError, infer_shapes, named_layers
from pipeline.spec.spec import Spec
from pipeline.spec.train import LayerRange

__all__ = ["CHECKS", "check", "run_checks"]


def _layers(spec: Spec) -> list[tuple[tuple, str, LayerKind]]:
    return [(("model", "layers", *p), n, layer) for p, n, layer in named_layers(spec.model.layers)]


def _activation(layer: object) -> str | None:
    """The activation a layer applies: itself if it is one, else its ``activation`` field."""
    if isinstance(layer, ActivationBase):
        return layer.type_name
    act = activation_model(getattr(layer, "activation", None))
    return act.type if act else None


@check("shapes")
def _shapes(spec: Spec) -> Iterator[Problem]:
    """Every layer must accept the shape the previous one produces."""
    shape = spec.model.resolved_input_shape()
    if shape is None:
        return
    if len(shape) == 3 and shape[-1] in (1, 3) and shape[0] > 4:
        yield Problem(
            f"input_shape {list(shape)} looks channels-last",
            ("model", "input_shape"),
            hint=f"write it channels first: [{shape[-1]}, {shape[0]}, {shape[1]}]",
        )
        return
    try:
        infer_shapes(spec.model.layers, shape, path=("model", "layers"))
    except LayerShapeError as err:
        yield Problem(err.message, err.path, hint=err.hint)


@check("input-matches-data")
def _input_matches_data(spec: Spec) -> Iterator[Problem]:
    """The model's input_shape must be what the data section produces."""
    declared, produced = spec.model.resolved_input_shape(), spec.data.input_shape()
    if declared is not None and produced is not None and declared != produced:
        yield Problem(
            f"input_shape {list(declared)} differs from the data's {list(produced)}",
            ("model", "input_shape"),
            hint="remove input_shape (it is taken from the data) or change data.image_size / "
            "color_mode",
        )


@check("unique-layer-names")
def _unique_names(spec: Spec) -> Iterator[Problem]:
    """Layer names must be unique: freezing, reuse and checkpoints refer to layers by name."""
    seen: dict[str, tuple] = {}
    for path, name, _ in _layers(spec):
        if name in seen:
            yield Problem(f"layer name {name!r} is used twice", (*path, "name"))
        seen[name] = path


@check("output-matches-classes")
def _output_units(spec: Spec) -> Iterator[Problem]:
    """The last dense layer needs one unit per class (or one sigmoid unit for two classes)."""
    n = spec.num_classes()
    dense = [(p, layer) for p, _, layer in _layers(spec) if isinstance(layer, Dense)]
    if n is None or not dense:
        return
    path, last = dense[-1]
    units = last.units  # type: ignore[attr-defined]
    if units == n or (units == 1 and n == 2):
        return
    yield Problem(
        f"the last dense layer has {units} units but the data has {n} classes",
        (*path, "units"),
        hint=f"use units: {n}" + (" (or 1 with a sigmoid for binary)" if n == 2 else ""),
    )


NORMS = (BatchNorm, LayerNorm, GroupNorm)
"""Normalization layers: they replace SELU's self-normalization."""


@check("selu-self-normalizing")
def _selu(spec: Spec) -> Iterator[Problem]:
    """SELU self-normalizes only with lecun_normal init, alpha dropout and a plain stack."""
    layers = _layers(spec)
    if not any(_activation(layer) == "selu" for _, _, layer in layers):
        return

    def lecun(value: object) -> bool:
        init = init_model(value)  # type: ignore[arg-type]
        return (
            isinstance(init, VarianceScaling)
            and init.scale == 1.0
            and init.mode == "fan_in"
            and init.distribution != "uniform"
        )

    inherit = False
    top = spec.model.layers
    for path, _, layer in layers:
        nxt = top[path[2] + 1] if len(path) == 3 and path[2] + 1 < len(top) else None
        feeds_selu = _activation(layer) == "selu" or isinstance(nxt, SELU)
        if isinstance(layer, WeightedLayer) and feeds_selu:
            if layer.kernel_init is None:
                inherit = True
            elif not lecun(layer.kernel_init):
                yield _warn(
                    "SELU needs lecun_normal weights to self-normalize",
                    (*path, "kernel_init"),
                    "set kernel_init: lecun_normal",
                )
        if isinstance(layer, Dropout):
            yield _warn(
                "plain dropout breaks SELU's self-normalization",
                (*path, "type"),
                "use type: alpha_dropout",
            )
        if layer.child_keys or layer.child_list_keys or isinstance(layer, NORMS):
            kind = layer.type_name
            yield _warn(
                f"SELU self-normalizes only in a plain sequential stack, not with {kind}", path
            )
    if inherit and not lecun(spec.init.kernel):
        yield _warn(
            "SELU needs lecun_normal weights to self-normalize",
            ("init", "kernel"),
            "set init.kernel: lecun_normal",
        )
    if spec.data.normalize != "standardize":
        yield _warn(
            "SELU expects standardized inputs (mean 0, std 1)",
            ("data", "normalize"),
            "set data.normalize: standardize",
        )


@check("nesterov-needs-momentum")
def _nesterov(spec: Spec) -> Iterator[Problem]:
    """Nesterov momentum without momentum is plain SGD (PyTorch refuses it)."""
    opt = spec.optimizer
    if getattr(opt, "nesterov", False) and not getattr(opt, "momentum", 0):
        yield Problem(
            "nesterov needs momentum > 0", ("optimizer", "momentum"), hint="e.g. momentum: 0.9"
        )


@check("bias-before-batch-norm")
def _bias_bn(spec: Spec) -> Iterator[Problem]:
    """A bias right before batch norm is cancelled by its mean subtraction (beta replaces it)."""
    layers = spec.model.layers
    for i, layer in enumerate(layers):
        if not isinstance(layer, WeightedLayer) or not layer.bias:
            continue
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        direct = layer.batch_norm == "before" or (
            layer.activation is None and layer.batch_norm is None and isinstance(nxt, BatchNorm)
        )
        if direct:
            yield _warn(
                "this bias is redundant: batch norm right after it subtracts the mean",
                ("model", "layers", i, "bias"),
                "set bias: false",
            )


@check("adam-weight-decay")
def _adam_wd(spec: Spec) -> Iterator[Problem]:
    """Adam's weight_decay is an L2 term the adaptive step scales away; AdamW decouples it."""
    if isinstance(spec.optimizer, Adam) and spec.optimizer.weight_decay > 0:
        yield _warn(
            "adam with weight_decay is L2 regularization, weakened by the adaptive step",
            ("optimizer", "weight_decay"),
            "did you mean type: adamw?",
        )


@check("augment-train-only")
def _augment_train_only(spec: Spec) -> Iterator[Problem]:
    """Validation and test data are never augmented: they must measure the real images."""
    for i, split in enumerate(spec.augment.apply_to):
        if split != "train":
            yield Problem(
                f"{split} data is never augmented (it must measure real images)",
                ("augment", "apply_to", i),
                hint="apply_to: [train]",
            )


@check("monitor-needs-validation")
def _monitor(spec: Spec) -> Iterator[Problem]:
    """Monitoring a val_* metric needs a validation split."""
    if spec.data.validation is not None:
        return
    watched = [(("train", "checkpoint", "monitor"), spec.train.checkpoint.monitor)]
    if spec.train.early_stopping:
        watched.append((("train", "early_stopping", "monitor"), spec.train.early_stopping.monitor))
    if isinstance(spec.schedule, ReduceOnPlateau):
        watched.append((("schedule", "monitor"), spec.schedule.monitor))
    for path, metric in watched:
        if metric.startswith("val_"):
            yield Problem(
                f"{metric} needs a validation split",
                path,
                hint=f"add data.validation: {{fraction: 0.1}}, or monitor {metric[4:]}",
            )


@check("mc-dropout-needs-dropout")
def _mc_dropout(spec: Spec) -> Iterator[Problem]:
    """MC dropout samples dropout masks; a model without dropout gives identical samples."""
    if spec.evaluate.mc_dropout is None:
        return
    dropouts = (Dropout, AlphaDropout, SpatialDropout2D)
    if not any(isinstance(layer, dropouts) for _, _, layer in _layers(spec)):
        yield Problem("mc_dropout needs dropout layers in the model", ("evaluate", "mc_dropout"))


def selector_places(spec: Spec) -> Iterator[tuple[tuple, object]]:
    """(key path, selector) of every layer selector in the spec."""
    for i, sel in enumerate(spec.train.freeze):
        yield ("train", "freeze", i), sel
    for p, phase in enumerate(spec.train.phases):
        for key in ("freeze", "unfreeze"):
            for i, sel in enumerate(getattr(phase, key)):
                yield ("train", "phases", p, key, i), sel
    for g, group in enumerate(spec.optimizer.param_groups):
        for i, sel in enumerate(group.layers):
            yield ("optimizer", "param_groups", g, "layers", i), sel


@check("layer-selectors")
def _selectors(spec: Spec) -> Iterator[Problem]:
    """freeze/unfreeze/param_groups must name layers that exist: any name `pipeline summary
    --expand` lists (reused and backbone layers as <layer>.<name>, a residual's as their own
    names or <residual>.<name>), or a glob or index of them. An error: a selector that names
    nothing would freeze nothing."""
    table = selectable(spec.model.layers)
    names = [s.name for s in table]
    top = spec.model.layer_names()
    count = len(top)
    for path, sel in selector_places(spec):
        targets = [sel.from_, sel.before] if isinstance(sel, LayerRange) else [sel]
        for target in targets:
            if target is None:
                continue
            if isinstance(target, int):
                if not -count <= target < count:
                    yield Problem(
                        f"layer index {target} is out of range (the model has {count} layers)", path
                    )
            elif not (
                target in names if isinstance(sel, LayerRange) else resolve(target, table, top)
            ):
                yield Problem(
                    f"no layer matches {target!r}",
                    path,
                    hint=did_you_mean(target, names) or f"layers: {', '.join(names)}",
                )


def _output_activation_of(layers: list, path: tuple) -> tuple[str, tuple] | None:
    """The softmax/sigmoid the model ends with and where it is written (as the builder takes
    it off for the loss: a final activation layer, or the last layer's activation unless a
    batch norm follows it), looking into a reused model that ends this one."""
    i = len(layers) - 1
    last = layers[i]
    if last.type in ("softmax", "sigmoid"):
        return last.type, (*path, i)
    act = activation_model(getattr(last, "activation", None))
    probabilities = act is not None and act.type in ("softmax", "sigmoid")
    if probabilities and getattr(last, "batch_norm", None) != "after":
        return act.type, (*path, i, "activation")  # type: ignore[union-attr]
    whole = isinstance(last, Reuse) and last.upto is None and last.drop_last == 0
    if whole and last._source is not None and last._source.model.layers:
        found = _output_activation_of(last._source.model.layers, ())
        return (found[0], (*path, i)) if found else None
    return None


@check("output-activation")
def _output_activation(spec: Spec) -> Iterator[Problem]:
    """Single-label data: probabilities come from a softmax over several outputs or a sigmoid
    on one (a sigmoid over several does not sum to 1, a softmax over one is always 1), and
    binary cross-entropy needs one output, cross-entropy several. Multi-label data: a sigmoid
    per class (a softmax would make the classes compete) and binary cross-entropy. An error."""
    shape = spec.model.resolved_input_shape()
    if shape is None:
        return
    try:
        out = infer_shapes(spec.model.layers, shape, path=())[-1]
    except LayerShapeError:
        return  # the shapes check says where
    if len(out) != 1:
        return
    units = out[0]
    found = _output_activation_of(list(spec.model.layers), ("model", "layers"))
    if spec.data.multi_label:
        yield from _multi_label_head(spec, units, found)
        return
    if found is not None and found[0] == "sigmoid" and units > 1:
        yield Problem(
            f"a sigmoid over {units} outputs gives each class its own probability: for "
            "single-label classes they do not sum to 1 (predict would report them as they are)",
            found[1],
            hint="use activation: softmax (or one output unit with a sigmoid for two classes)",
        )
    if found is not None and found[0] == "softmax" and units == 1:
        yield Problem(
            "a softmax over one output is always 1",
            found[1],
            hint="use a sigmoid for one output unit (binary), or one unit per class",
        )
    loss = spec.train.loss
    fixed = loss in ("cross_entropy", "binary_cross_entropy")  # auto and focal fit either
    if fixed and (loss == "binary_cross_entropy") != (units == 1):
        need = "one output unit" if loss == "binary_cross_entropy" else "two or more outputs"
        yield Problem(
            f"{loss} needs {need}; the model has {units}",
            ("train", "loss"),
            hint="loss: auto picks the one that fits",
        )


def _multi_label_head(spec: Spec, units: int, found: tuple[str, tuple] | None) -> Iterator[Problem]:
    if found is not None and found[0] != "sigmoid":
        yield Problem(
            f"multi-label data needs an independent probability per class, which {found[0]} "
            "does not give (a softmax makes the classes compete for one)",
            found[1],
            hint="use activation: sigmoid on the last layer, one unit per class",
        )
    names = spec.data.label_names
    if names is not None and units != len(names):
        yield Problem(
            f"the model has {units} outputs but data.label_names lists {len(names)} classes",
            ("data", "label_names"),
            hint=f"give the last layer {len(names)} units, one per class",
        )
    if spec.train.loss == "cross_entropy":
        yield Problem(
            "multi-label data takes binary cross-entropy, one per class; cross_entropy assumes "
            "one class per image",
            ("train", "loss"),
            hint="loss: auto (or binary_cross_entropy)",
        )


# registers the training, data, evaluate, timm and label checks
from pipeline.spec import (  # noqa: E402, F401
    checks_data,
    checks_evaluate,
    checks_labels,
    checks_timm,
    checks_train,
)
