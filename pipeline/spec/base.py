"""The base of every spec model, the registries of tagged kinds, and small shared field types."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, ClassVar, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field

from pipeline.spec.errors import PathPart

Shape = tuple[int, ...]
"""Channels-first, without the batch axis: ``(C, H, W)`` for feature maps, ``(F,)`` for flat
features."""


class StrictModel(BaseModel):
    """Strict: a misspelt key is an error, never a silently ignored setting."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=False,
        validate_default=False,
        use_attribute_docstrings=True,
        populate_by_name=False,
    )


class Kind(StrictModel):
    """A tagged variant: ``type`` says which one (a layer, an optimizer, a schedule...)."""

    type_name: ClassVar[str] = ""
    """The ``type`` value of this kind; set when it is registered."""
    expanded_on_load: ClassVar[bool] = False
    """True for a kind the loader replaces by others (a block reference): nothing builds it."""


class LayerKind(Kind):
    """What every layer kind (activation layers too) shares: a shape rule and its nested layers.

    A composite says what its children are in ``child_keys``, so naming, shape inference,
    building, summaries and block expansion recurse into them without knowing the kind.
    """

    child_keys: ClassVar[tuple[str, ...]] = ()
    """Fields holding nested layer lists written in this spec (a residual's ``layers``)."""
    child_list_keys: ClassVar[tuple[str, ...]] = ()
    """Fields holding a list of nested layer lists (a branch's ``branches``)."""

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def sublayers(self) -> Iterator[tuple[tuple[PathPart, ...], Sequence[LayerKind]]]:
        """Each nested layer list with the key path under which the spec writes it:
        ``("layers",)`` for a residual's, ``("branches", 1)`` for a branch's second."""
        yield from child_lists(type(self), lambda key: getattr(self, key))


def child_lists(
    kind: type[LayerKind], get: Callable[[str], Any]
) -> Iterator[tuple[tuple[PathPart, ...], Any]]:
    """The nested layer lists of a layer of ``kind`` whose fields ``get`` reads, with their key
    paths; shared by the validated models and the loader's raw mappings (where a value that
    is not a list yet is left to the schema to report)."""
    for key in kind.child_keys:
        value = get(key)
        if isinstance(value, list):
            yield (key,), value
    for key in kind.child_list_keys:
        value = get(key)
        if isinstance(value, list):
            yield from (((key, j), v) for j, v in enumerate(value) if isinstance(v, list))


K = TypeVar("K", bound=type[Kind])


class Kinds:
    """Maps the ``type`` names of one group (layers, optimizers, ...) to their schema classes."""

    def __init__(self, group: str):
        self.group = group
        self.kinds: dict[str, type[Kind]] = {}

    def register(self, cls: K) -> K:
        """``@KINDS.register``: add a schema class under its ``type`` default."""
        name = cls.model_fields["type"].default
        if not isinstance(name, str):
            raise TypeError(f"{cls.__name__}.type needs a default literal name")
        if name in self.kinds:
            raise TypeError(f"{self.group} kind '{name}' is registered twice")
        cls.type_name = name
        self.kinds[name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self.kinds)

    def union(self) -> Any:
        """A discriminated union over every registered kind, for use as a field type."""
        members = tuple(self.kinds.values())
        if len(members) == 1:
            return members[0]
        return Annotated[
            Union[members],  # noqa: UP007 - built from a runtime tuple
            Field(discriminator="type"),
        ]


LAYERS = Kinds("layer")
ACTIVATIONS = Kinds("activation")
INITIALIZERS = Kinds("initializer")
OPTIMIZERS = Kinds("optimizer")
SCHEDULES = Kinds("schedule")
TRANSFORMS = Kinds("augmentation")

# Names users bring from Keras or PyTorch, mapped to ours; used only for did-you-mean.
SYNONYMS: dict[str, str] = {
    # layer kinds
    "conv2D": "conv2d",
    "conv": "conv2d",
    "convolution2d": "conv2d",
    "linear": "dense",
    "fully_connected": "dense",
    "fc": "dense",
    "max_pooling2d": "max_pool2d",
    "maxpool2d": "max_pool2d",
    "maxpooling2d": "max_pool2d",
    "average_pooling2d": "avg_pool2d",
    "avgpool2d": "avg_pool2d",
    "global_average_pooling2d": "global_avg_pool2d",
    "global_max_pooling2d": "global_max_pool2d",
    "batch_normalization": "batch_norm",
    "batchnorm": "batch_norm",
    "batchnorm2d": "batch_norm",
    "batchnorm1d": "batch_norm",
    "batch_norm2d": "batch_norm",
    "batch_norm1d": "batch_norm",
    "dropout2d": "spatial_dropout2d",
    "layer_normalization": "layer_norm",
    "layernorm": "layer_norm",
    "group_normalization": "group_norm",
    "groupnorm": "group_norm",
    "depthwise_convolution2d": "depthwise_conv2d",
    "depthwiseconv2d": "depthwise_conv2d",
    "separable_convolution2d": "separable_conv2d",
    "separableconv2d": "separable_conv2d",
    "up_sampling2d": "upsample",
    "upsampling2d": "upsample",
    "upsampling": "upsample",
    "interpolate": "upsample",
    "concatenate": "branch",
    "concat": "branch",
    "inception": "branch",
    "maxpool": "max_pool2d",
    "max_pooling": "max_pool2d",
    "avgpool": "avg_pool2d",
    "average_pooling": "avg_pool2d",
    "global_average_pooling": "global_avg_pool2d",
    "adaptive_average_pooling2d": "adaptive_avg_pool2d",
    "identity": "linear",  # activation
    "none": "linear",
    "swish": "silu",
    "leakyrelu": "leaky_relu",
    "lrelu": "leaky_relu",
    # losses (Keras names them by the label format; ours take class indices or 0/1 labels)
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "categorical_cross_entropy": "cross_entropy",
    "sparse_categorical_cross_entropy": "cross_entropy",
    "crossentropy": "cross_entropy",
    "cross_entropy_loss": "cross_entropy",
    "ce": "cross_entropy",
    "nll": "cross_entropy",
    "nll_loss": "cross_entropy",
    "log_loss": "cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
    "bce": "binary_cross_entropy",
    "bce_loss": "binary_cross_entropy",
    "bce_with_logits": "binary_cross_entropy",
    "bce_with_logits_loss": "binary_cross_entropy",
    "binary_cross_entropy_with_logits": "binary_cross_entropy",
    # augmentations (Keras preprocessing layers, torchvision transforms)
    "random_rotation": "rotation",
    "random_translation": "shift",
    "random_shift": "shift",
    "translate": "shift",
    "translation": "shift",
    "random_zoom": "zoom",
    "random_shear": "shear",
    "random_flip": "horizontal_flip",
    "random_horizontal_flip": "horizontal_flip",
    "fliplr": "horizontal_flip",
    "random_vertical_flip": "vertical_flip",
    "flipud": "vertical_flip",
    "random_brightness": "color_jitter",
    "random_contrast": "color_jitter",
    "random_saturation": "color_jitter",
    "random_hue": "color_jitter",
    "cutout": "random_erasing",
    "random_erase": "random_erasing",
    "random_cutout": "random_erasing",
    "trivial_augment_wide": "trivial_augment",
    "width_shift_range": "width",
    "height_shift_range": "height",
    # schedules (torch.optim.lr_scheduler, Keras)
    "cosine_annealing": "cosine",
    "cosine_annealing_lr": "cosine",
    "cosine_decay": "cosine",
    "step_lr": "step",
    "multi_step_lr": "multi_step",
    "multistep": "multi_step",
    "exponential_lr": "exponential",
    "exponential_decay": "exponential",
    "reduce_lr_on_plateau": "reduce_on_plateau",
    "one_cycle_lr": "one_cycle",
    "cyclic_lr": "cyclic",
    "piecewise_constant_decay": "piecewise_constant",
    "polynomial_decay": "power",
    # initializers (presets)
    "zero": "zeros",
    "one": "ones",
    "glorot": "glorot_uniform",
    "xavier": "xavier_uniform",
    "he": "he_normal",
    "kaiming": "kaiming_normal",
    # field names
    "kernel": "kernel_size",
    "strides": "stride",
    "dilation_rate": "dilation",
    "use_bias": "bias",
    "out_channels": "filters",
    "out_features": "units",
    "kernel_initializer": "kernel_init",
    "bias_initializer": "bias_init",
    "kernel_regularizer": "regularizer",
    "kernel_constraint": "max_norm",
    "output_dim": "units",
    "nb_filter": "filters",
    "num_filters": "filters",
    "pool": "pool_size",
    "num_groups": "groups",
    "elementwise_affine": "affine",
    "interpolation": "mode",
    "loss_fn": "loss",
    "criterion": "loss",
    "optim": "optimizer",
    "scheduler": "schedule",
    "lr_scheduler": "schedule",
    "lr_schedule": "schedule",
    "augmentation": "augment",
    "augmentations": "augment",
    "transform": "transforms",
    "p": "rate",
    "learning_rate": "lr",
    "negative_slope": "alpha",
    "epsilon": "eps",
    "beta_1": "betas",
    "beta_2": "betas",
    "alpha_rmsprop": "rho",
    "input_size": "input_shape",
    "n_epochs": "epochs",
    "num_epochs": "epochs",
    "validation_split": "validation",
    "rotation_range": "degrees",
    "shear_range": "degrees",
    "zoom_range": "range",
    "type_": "type",
}


PositiveInt = Annotated[int, Field(ge=1)]

MAX_SIZE = 1 << 20
"""Bound of every size in a model (units, filters, kernel and image sides): far above any real
one, and far below what overflows torch's C integers (``filters: 10**100`` validated, then
crashed ``summary`` and ``train``)."""
Size = Annotated[int, Field(ge=1, le=MAX_SIZE)]
"""A count or length in a model: units, filters, groups, a kernel or image side."""
Pixels = Annotated[int, Field(ge=0, le=MAX_SIZE)]
"""A padding in pixels."""
IntPair = Size | tuple[Size, Size]
"""A positive int, or a [height, width] pair: an int applies to both, as in Keras and PyTorch."""


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """Normalise an :data:`IntPair` to (height, width)."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
