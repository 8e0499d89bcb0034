"""The ``data`` and ``augment`` sections: where images come from, and how training batches vary."""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

from pydantic import Field, PositiveFloat, field_validator, model_validator

from pipeline.spec.base import (
    TRANSFORMS,
    IntPair,
    Kind,
    NonNegativeFloat,
    PositiveInt,
    Probability,
    StrictModel,
)
from pipeline.spec.mix import CutMix, Mixup

FASHION_CLASSES = [
    "t_shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]  # fmt: skip
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard",
    "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray",
    "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip


class BuiltinDataset(NamedTuple):
    """A built-in dataset: its shape and classes, known before reading, and who reads it."""

    channels: int
    height: int
    width: int
    classes: list[str]
    torchvision: str  # the class of torchvision.datasets that reads it (pipeline.data.builtin)
    train_counts: tuple[int, ...] | None = None
    """Samples per class of the training split, in class order (None: not known here)."""
    test_counts: tuple[int, ...] | None = None
    """Samples per class of the test split: with ``train_counts``, what lets validate count a
    spec's batches before prepare (``pipeline.spec.sizes``)."""


MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

# The one table of built-in datasets: the schema's ``dataset`` choices (with image_folder, which
# learns shape and classes in prepare), their input shapes, class names and samples per class,
# and their readers.
DATASETS: dict[str, BuiltinDataset] = {
    "mnist": BuiltinDataset(
        1, 28, 28, [str(d) for d in range(10)], "MNIST", MNIST_TRAIN_COUNTS, MNIST_TEST_COUNTS
    ),
    "fashion_mnist": BuiltinDataset(
        1, 28, 28, FASHION_CLASSES, "FashionMNIST", (6000,) * 10, (1000,) * 10
    ),
    "cifar10": BuiltinDataset(3, 32, 32, CIFAR10_CLASSES, "CIFAR10", (5000,) * 10, (1000,) * 10),
    "cifar100": BuiltinDataset(3, 32, 32, CIFAR100_CLASSES, "CIFAR100", (500,) * 100, (100,) * 100),
}


def class_key(name: str | int) -> str:
    """Class names compare loosely: 'T-shirt/top' == 't_shirt_top', 'Ankle boot' == 'ankle_boot'."""
    return "".join(ch if ch.isalnum() else "_" for ch in str(name).lower()).strip("_")


ClassRef = str | int
"""A source class, by name (compared loosely, see ``class_key``) or by index."""


class ClassSelection(StrictModel):
    """Keep some classes (in the order given: it sets the new label numbers), drop some, or
    merge classes into new ones."""

    keep: list[ClassRef] | None = None
    """Classes to keep, by name or index; label i is the i-th listed (binary: the 2nd is 1)."""
    drop: list[ClassRef] | None = None
    """Classes to drop; the rest keep their order and are renumbered 0..n-1."""
    merge: dict[str, Annotated[list[ClassRef], Field(min_length=1)]] | None = None
    """New classes made of source classes: ``{footwear: [sandal, sneaker, ankle_boot], top:
    [t_shirt_top, shirt, pullover]}``. Label i is the i-th new class and the outputs take its
    name; source classes no group lists are left out (as with ``keep``; a group of one keeps a
    class as it is). A source class belongs to one group at most."""

    @model_validator(mode="after")
    def _one_of(self) -> ClassSelection:
        given = [k for k in ("keep", "drop", "merge") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'keep', 'drop' or 'merge'")
        if self.merge is not None and not self.merge:
            raise ValueError("merge needs at least one new class")
        return self

    def names(self, source: list[str]) -> list[str]:
        """The class names after selection, given the source's (references left unresolved:
        a name as written, an index as the source's name at that index when in range)."""

        def name(ref: ClassRef) -> str:
            return source[ref] if isinstance(ref, int) and 0 <= ref < len(source) else str(ref)

        if self.merge is not None:
            return list(self.merge)
        if self.keep is not None:
            return [name(r) for r in self.keep]
        dropped = {class_key(name(r)) for r in self.drop or []}
        return [c for c in source if class_key(c) not in dropped]


class ValidationSplit(StrictModel):
    """Validation data: a held-out fraction of the training split (stratified, seeded), its first
    N samples, or (image_folder) a folder of its own."""

    fraction: Annotated[float, Field(gt=0, lt=1)] | None = None
    """A fraction of each class of the training split, held out (seeded); with
    ``subset.train_per_class`` a fraction of the subset (30 per class and 0.2: 24 training and
    6 validation images per class)."""
    first: PositiveInt | None = None
    """The first N training samples (the seeds' ``X_train_full[:5000]``)."""
    path: str | None = None
    """image_folder: a validation folder with the same class sub-folders."""

    @model_validator(mode="after")
    def _one_of(self) -> ValidationSplit:
        given = [k for k in ("fraction", "first", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'fraction', 'first' or 'path'")
        return self


class Subset(StrictModel):
    """Use fewer samples: at most N per class (the seeds' 2000 cats + 2000 dogs)."""

    train_per_class: PositiveInt | None = None
    test_per_class: PositiveInt | None = None


class ExplicitNormalization(StrictModel):
    """(x / 255 - mean) / std per channel, with given values."""

    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]


class DataSection(StrictModel):
    """Where the images come from and how they are prepared (the prepare stage reads this, and
    the augment section for offline augmentation)."""

    dataset: Literal[(*DATASETS, "image_folder")]  # type: ignore[valid-type]
    path: str | None = None
    """image_folder: the training folder, one sub-folder per class (Keras flow_from_directory)."""
    test_path: str | None = None
    """image_folder: the test folder, same class sub-folders."""
    mirror: str | None = None
    """A local folder laid out like torchvision's ``root`` (no download); the environment
    variable PIPELINE_DATA_MIRROR overrides it."""
    download: bool = True
    """Download from the dataset's home when no mirror has it (torchvision's download path)."""
    image_size: IntPair | None = None
    """Resize to [height, width] (image_folder's target_size; also resizes built-in datasets)."""
    color_mode: Literal["grayscale", "rgb"] | None = None
    """Default: the dataset's own (MNIST grayscale, CIFAR rgb); image_folder defaults to rgb."""
    classes: ClassSelection | None = None
    subset: Subset | None = None
    validation: ValidationSplit | None = None
    seed: int | None = None
    """Seed of the validation split and the subsets; default: the spec's ``seed``. Set it to
    vary the training seed (``-S seed=1``) over the same split, without preparing again."""
    normalize: Literal["none", "rescale", "standardize"] | ExplicitNormalization = "rescale"
    """rescale: x/255 in [0, 1]; standardize: then mean 0, std 1 per channel, computed on the
    training split in prepare; or explicit {mean, std}."""
    skip_corrupt: bool = False
    """image_folder: skip unreadable images (counted in the metadata) instead of failing."""
    multi_label: bool = False
    """Several classes per image (image_folder with ``labels_file``): one sigmoid output per
    class, binary cross-entropy on multi-hot targets, per-class and F1 metrics."""
    labels_file: str | None = None
    """multi_label: a CSV with a ``file,labels`` header; ``file`` relative to ``path``,
    ``labels`` the image's classes separated by spaces or ``;`` (may be empty)."""
    test_labels_file: str | None = None
    """multi_label: the labels of ``test_path``'s images, in the same format."""
    label_names: list[str] | None = None
    """multi_label: the classes, in output order; a label file naming another is an error.
    Default: every label the training labels file names, sorted."""

    @model_validator(mode="after")
    def _folder_needs_path(self) -> DataSection:
        if self.dataset == "image_folder" and not self.path:
            raise ValueError("dataset image_folder needs 'path' (a folder of class sub-folders)")
        folder_only = self.path or self.test_path or (self.validation and self.validation.path)
        if self.dataset != "image_folder" and folder_only:
            raise ValueError(
                f"'path', 'test_path' and 'validation.path' are for image_folder, "
                f"not {self.dataset}"
            )
        if isinstance(self.normalize, ExplicitNormalization):
            n, m = len(self.normalize.mean), len(self.normalize.std)
            channels = self.channels()
            if n != m or (channels and n not in (1, channels)):
                raise ValueError(
                    f"normalize needs one mean and one std per channel ({channels}) "
                    f"or one of each for all; got {n} and {m}"
                )
        return self

    def channels(self) -> int | None:
        if self.color_mode:
            return 1 if self.color_mode == "grayscale" else 3
        return DATASETS[self.dataset].channels if self.dataset in DATASETS else 3

    def input_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) the model sees, when known before prepare."""
        if self.image_size is not None:
            h, w = (self.image_size,) * 2 if isinstance(self.image_size, int) else self.image_size
            return (self.channels() or 3, h, w)
        if self.dataset in DATASETS:
            builtin = DATASETS[self.dataset]
            return (self.channels() or 1, builtin.height, builtin.width)
        return None

    def source_classes(self) -> list[str] | None:
        return DATASETS[self.dataset].classes if self.dataset in DATASETS else None


# ---- augmentation -------------------------------------------------------------------------

Fill = Literal["constant", "nearest", "reflect"]


class TransformBase(Kind):
    p: Probability = 1.0
    """Probability that a sample gets this transform (drawn per sample)."""


class Geometric(TransformBase):
    fill: Fill = "nearest"
    """What shows where the image moved away: a constant (``fill_value``), the nearest edge pixel
    (Keras's default), or a reflection."""
    fill_value: Annotated[float, Field(ge=0, le=1)] = 0.0
    """The constant of ``fill: constant``, as a fraction of full intensity (Keras's cval / 255)."""
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    """Resampling: bilinear (Keras's default) or nearest (torchvision's default, about 2x
    faster on large images, blockier)."""

    @model_validator(mode="after")
    def _fill_value_needs_constant(self) -> Geometric:
        if self.fill_value and self.fill != "constant":
            raise ValueError(f"fill_value applies to fill: constant only (fill is {self.fill!r})")
        return self


@TRANSFORMS.register
class Rotation(Geometric):
    """Rotate by a random angle in [-degrees, degrees] (Keras rotation_range)."""

    type: Literal["rotation"] = "rotation"
    degrees: Annotated[float, Field(gt=0, le=180)]


@TRANSFORMS.register
class Shift(Geometric):
    """Translate by up to a fraction of the width/height (Keras width/height_shift_range)."""

    type: Literal["shift"] = "shift"
    width: Annotated[float, Field(ge=0, lt=1)] = 0.0
    height: Annotated[float, Field(ge=0, lt=1)] = 0.0


@TRANSFORMS.register
class Shear(Geometric):
    """Shear by a random angle in [-degrees, degrees] (Keras shear_range is in degrees)."""

    type: Literal["shear"] = "shear"
    degrees: Annotated[float, Field(gt=0, lt=90)]


@TRANSFORMS.register
class Zoom(Geometric):
    """Scale by a random factor in [1 - range, 1 + range] (Keras zoom_range)."""

    type: Literal["zoom"] = "zoom"
    range: Annotated[float, Field(gt=0, lt=1)] | tuple[PositiveFloat, PositiveFloat]
    """A float z draws factors in [1 - z, 1 + z]; a pair [lower, upper] draws in that range
    (Keras's zoom_range), e.g. [0.8, 1.0] only zooms in. Width and height draw independently."""

    @field_validator("range")
    @classmethod
    def _ordered(cls, v: float | tuple[float, float]) -> float | tuple[float, float]:
        if isinstance(v, tuple) and v[0] > v[1]:
            raise ValueError(f"zoom range [{v[0]}, {v[1]}]: the lower bound is above the upper")
        return v

    @property
    def bounds(self) -> tuple[float, float]:
        return self.range if isinstance(self.range, tuple) else (1 - self.range, 1 + self.range)


@TRANSFORMS.register
class HorizontalFlip(TransformBase):
    type: Literal["horizontal_flip"] = "horizontal_flip"
    p: Probability = 0.5


@TRANSFORMS.register
class VerticalFlip(TransformBase):
    type: Literal["vertical_flip"] = "vertical_flip"
    p: Probability = 0.5


@TRANSFORMS.register
class ColorJitter(TransformBase):
    """Random brightness/contrast/saturation factors in [1 - x, 1 + x]; hue shift in [-h, h]."""

    type: Literal["color_jitter"] = "color_jitter"
    brightness: NonNegativeFloat = 0.0
    contrast: NonNegativeFloat = 0.0
    saturation: NonNegativeFloat = 0.0
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0


@TRANSFORMS.register
class RandomCrop(TransformBase):
    """Pad by ``padding`` pixels, then crop back to the original size at a random place."""

    type: Literal["random_crop"] = "random_crop"
    padding: Annotated[int, Field(ge=1)] = 4
    fill: Fill = "constant"


@TRANSFORMS.register
class RandomErasing(TransformBase):
    """Blank a random rectangle (Zhong et al.), area fraction in ``scale``."""

    type: Literal["random_erasing"] = "random_erasing"
    p: Probability = 0.5
    scale: tuple[Probability, Probability] = (0.02, 0.33)
    ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.3, 3.3)
    value: float = 0.0


@TRANSFORMS.register
class AutoAugment(TransformBase):
    """torchvision's AutoAugment with a learned policy."""

    type: Literal["auto_augment"] = "auto_augment"
    policy: Literal["imagenet", "cifar10", "svhn"] = "imagenet"


@TRANSFORMS.register
class RandAugment(TransformBase):
    type: Literal["rand_augment"] = "rand_augment"
    num_ops: PositiveInt = 2
    magnitude: Annotated[int, Field(ge=0, le=30)] = 9


@TRANSFORMS.register
class TrivialAugment(TransformBase):
    type: Literal["trivial_augment"] = "trivial_augment"


class AugmentSection(StrictModel):
    """Random transforms of training batches, drawn per sample. Validation and test data are
    never augmented."""

    mode: Literal["online", "offline"] = "online"
    """online: fresh random transforms every epoch; offline: generated once in prepare and
    stored (``factor`` copies per image), cheaper per epoch but finite."""
    factor: PositiveInt = 2
    """offline: augmented copies stored per training image (the original is kept too)."""
    apply_to: list[Literal["train", "validation", "test"]] = ["train"]
    """Only 'train' is allowed; the field exists so the rule is stated and enforced."""
    transforms: list[TRANSFORMS.union()] = []  # type: ignore[valid-type]
    """Applied in order."""
    mixup: Mixup | None = None
    """Blend pairs of a training batch and their labels (soft targets); online in both modes,
    after the transforms; never on validation or test data."""
    cutmix: CutMix | None = None
    """Paste a box of one training image into another, labels weighted by area."""
    mix_prob: Probability = 1.0
    """With mixup or cutmix: the probability that a training batch is mixed at all (timm's
    ``prob``); unmixed batches keep their own labels."""
    switch_prob: Probability = 0.5
    """With both mixup and cutmix: the probability that a mixed batch uses cutmix rather than
    mixup (timm's ``switch_prob``)."""
