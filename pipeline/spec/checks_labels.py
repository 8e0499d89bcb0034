"""Cross-field checks of the labels: multi-label data (``data.multi_label``) and the batch
mixes that blend labels (``augment.mixup``, ``augment.cutmix``), and what needs one class per
sample (class weights, the focal loss, the balanced sampler). The output layer's rules for
multi-label data are the ``output-activation`` check's (:mod:`pipeline.spec.checks`)."""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.spec.check_registry import check, warn
from pipeline.spec.errors import Problem
from pipeline.spec.spec import Spec

_LABEL_FILES = ("labels_file", "test_labels_file", "label_names")


@check("multi-label")
def _multi_label(spec: Spec) -> Iterator[Problem]:
    """Multi-label data is an image folder with a labels file (and one for its test folder);
    its labels are read from the files, so the per-class selections (classes, subset) and a
    validation folder without labels do not apply, and evaluate's single-label extras
    (MC dropout, batch-norm folding's accuracy, test-time augmentation's accuracy) are not
    computed for it. The label fields
    without multi_label would be ignored. An error."""
    d = spec.data
    if not d.multi_label:
        for key in _LABEL_FILES:
            if getattr(d, key) is not None:
                yield Problem(
                    f"{key} is for multi-label data", ("data", key), hint="set multi_label: true"
                )
        return
    names = d.label_names or []
    if len(set(names)) != len(names) or d.label_names == [] or len(names) == 1:
        yield Problem(
            "label_names needs two or more classes, each once",
            ("data", "label_names"),
            hint="one class is a binary task: single-label data with one sigmoid output",
        )
    if d.dataset != "image_folder":
        yield Problem(
            f"multi-label data is read from an image folder with a labels file, not {d.dataset}",
            ("data", "dataset"),
            hint="dataset: image_folder, with path and labels_file",
        )
    elif d.labels_file is None:
        yield Problem(
            "multi_label needs labels_file: a CSV 'file,labels' of the images under path",
            ("data", "multi_label"),
            hint="labels_file: labels.csv (labels separated by spaces or ';')",
        )
    if d.test_path and not d.test_labels_file:
        yield Problem("test_path needs test_labels_file with multi_label", ("data", "test_path"))
    if d.test_labels_file and not d.test_path:
        yield Problem("test_labels_file needs test_path", ("data", "test_labels_file"))
    if d.validation is not None and d.validation.path:
        yield Problem(
            "a validation folder has no labels file with multi_label",
            ("data", "validation", "path"),
            hint="validation: {fraction: 0.1} (a seeded random fraction) or {first: N}",
        )
    for key, why in (("classes", "selects by class"), ("subset", "counts per class")):
        if getattr(d, key) is not None:
            yield Problem(
                f"{key} {why}, which multi-label data has not one of",
                ("data", key),
                hint="list only the images you want in the labels file",
            )
    e = spec.evaluate
    for key, on in (
        ("mc_dropout", e.mc_dropout is not None),
        ("fold_batch_norm", e.fold_batch_norm),
        ("tta", e.tta is not None),
    ):
        if on:
            yield Problem(f"evaluate.{key} is not computed for multi-label data", ("evaluate", key))


@check("batch-mix")
def _batch_mix(spec: Spec) -> Iterator[Problem]:
    """augment.mix_prob applies to mixup and cutmix, switch_prob to both together: set
    without them they do nothing. A warning."""
    a = spec.augment
    given = a.model_fields_set
    if "mix_prob" in given and a.mixup is None and a.cutmix is None:
        yield warn(
            "mix_prob has no effect without mixup or cutmix",
            ("augment", "mix_prob"),
            hint="add mixup: {alpha: 0.2} or cutmix: {alpha: 1.0}",
        )
    if "switch_prob" in given and (a.mixup is None or a.cutmix is None):
        yield warn(
            "switch_prob chooses between mixup and cutmix: it needs both",
            ("augment", "switch_prob"),
        )


@check("weighted-loss-targets")
def _weighted_loss_targets(spec: Spec) -> Iterator[Problem]:
    """Class weights (train.class_weights) and the softmax focal loss weigh each sample by its
    one class: multi-label data (several classes per image) and mixup/cutmix (soft targets, two
    classes per image) have none. An error. (Multi-label, the focal loss is a sigmoid one per
    output, which takes them.)"""
    t, a = spec.train, spec.augment
    why = []
    if spec.data.multi_label:
        why.append(("multi-label data", ("data", "multi_label")))
    for key in ("mixup", "cutmix"):
        if getattr(a, key) is not None:
            why.append((f"{key}'s soft targets", ("augment", key)))
    if not why:
        return
    what = " and ".join(w for w, _ in why)
    where = ", ".join(".".join(p) for _, p in why)
    if t.class_weights is not None:
        yield Problem(
            f"class_weights weigh a sample by its one class, which {what} ({where}) do not give",
            ("train", "class_weights"),
            hint="remove class_weights",
        )
    if t.loss == "focal" and not spec.data.multi_label:  # multi-label: a sigmoid per output
        yield Problem(
            f"the focal loss takes one class per sample, which {what} ({where}) do not give",
            ("train", "loss"),
            hint="loss: auto",
        )


@check("multi-label-sampler")
def _multi_label_sampler(spec: Spec) -> Iterator[Problem]:
    """train.sampler: balanced draws each class equally often by the sample's one class;
    multi-label images have several (or none). An error."""
    if spec.data.multi_label and spec.train.sampler == "balanced":
        yield Problem(
            "sampler: balanced draws by each image's one class; multi-label images have several",
            ("train", "sampler"),
            hint="sampler: shuffle",
        )
