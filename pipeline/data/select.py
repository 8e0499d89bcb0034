"""From raw splits to the prepared ones: class selection, validation split, per-class subsets,
colour and size, normalization statistics. Pure functions of tensors, the spec and the seed."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.raw import DataError
from pipeline.spec.data import ClassSelection, DataSection, ExplicitNormalization, class_key
from pipeline.spec.errors import did_you_mean

Split = tuple[torch.Tensor, torch.Tensor]

# Independent random streams per purpose, so adding a subset does not change the validation split.
_VALIDATION_STREAM, _TRAIN_SUBSET_STREAM, _TEST_SUBSET_STREAM = 1, 2, 3


def rng(seed: int, stream: int) -> np.random.Generator:
    """numpy's PCG64 from (seed, stream): the same numbers on every platform and version."""
    return np.random.default_rng([stream, seed])


# ---- classes -------------------------------------------------------------------------------


def resolve_class(ref: str | int, classes: list[str]) -> int:
    """Index of a class given by index or by name (names compare via ``class_key``)."""
    if isinstance(ref, int):
        if not 0 <= ref < len(classes):
            raise DataError(
                f"class index {ref} is out of range: the dataset has "
                f"{len(classes)} classes (0..{len(classes) - 1})"
            )
        return ref
    keys = [class_key(c) for c in classes]
    if class_key(ref) in keys:
        return keys.index(class_key(ref))
    hint = did_you_mean(class_key(ref), keys)
    raise DataError(
        f"unknown class {ref!r}{'; ' + hint if hint else ''} (valid: {', '.join(keys)})"
    )


def class_mapping(selection: ClassSelection | None, classes: list[str]) -> list[list[int]]:
    """Source class indices of each new label: keep's order (one each), the classes not
    dropped, or merge's groups (several each)."""
    if selection is None:
        return [[i] for i in range(len(classes))]
    if selection.merge is not None:
        groups = [[resolve_class(r, classes) for r in refs] for refs in selection.merge.values()]
        _no_dupes([i for g in groups for i in g], classes, "in two merged classes")
        return groups
    refs = selection.keep if selection.keep is not None else selection.drop or []
    picked = [resolve_class(r, classes) for r in refs]
    _no_dupes(picked, classes, "listed twice")
    if selection.keep is not None:
        return [[i] for i in picked]
    kept = [[i] for i in range(len(classes)) if i not in picked]
    if not kept:
        raise DataError("classes.drop removes every class")
    return kept


def class_names(
    selection: ClassSelection | None, mapping: list[list[int]], classes: list[str]
) -> list[str]:
    """The names of the new labels: merge's names, else the source classes' own."""
    if selection is not None and selection.merge is not None:
        return list(selection.merge)
    return [classes[g[0]] for g in mapping]


def _no_dupes(picked: list[int], classes: list[str], what: str) -> None:
    dupes = sorted({classes[i] for i in picked if picked.count(i) > 1})
    if dupes:
        raise DataError(f"classes {what}: {', '.join(dupes)}")


def select_classes(split: Split, mapping: list[list[int]], n_source: int) -> Split:
    """Keep the samples of the mapped classes (in their original order), relabelled 0..k-1
    (every class of a merged group takes the group's label)."""
    x, y = split
    if mapping == [[i] for i in range(n_source)]:
        return split  # nothing to select: skip copying every image
    new = torch.full((n_source,), -1, dtype=torch.int64)
    for label, group in enumerate(mapping):
        new[torch.tensor(group, dtype=torch.int64)] = label
    labels = new[y]
    keep = labels >= 0
    return x[keep], labels[keep]


# ---- splits and subsets --------------------------------------------------------------------


def split_validation(train: Split, data: DataSection, seed: int) -> tuple[Split, Split | None]:
    """(train, validation) by ``validation.fraction`` (stratified, seeded) or ``.first``."""
    v = data.validation
    x, y = train
    if v is None or v.path is not None:
        return train, None
    if v.first is not None:
        if v.first >= len(y):
            raise DataError(
                f"validation.first is {v.first} but the training split has only {len(y)} samples"
            )
        return (x[v.first :], y[v.first :]), (x[: v.first], y[: v.first])
    assert v.fraction is not None
    gen = rng(seed, _VALIDATION_STREAM)
    if y.ndim == 2:  # multi-hot labels: a seeded random fraction (no single class to stratify)
        groups = [np.arange(len(y))]
    else:
        groups = [torch.nonzero(y == label).flatten().numpy() for label in torch.unique(y).tolist()]
    held = [gen.choice(idx, size=round(len(idx) * v.fraction), replace=False) for idx in groups]
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.from_numpy(np.concatenate(held))] = True
    if mask.all() or not mask.any():
        raise DataError(
            f"validation.fraction {v.fraction} of {len(y)} samples leaves an empty split"
        )
    # Both splits keep the source order; the loader shuffles.
    return (x[~mask], y[~mask]), (x[mask], y[mask])


def per_class_subset(split: Split, per_class: int | None, seed: int, stream: int) -> Split:
    """At most ``per_class`` samples of each class, drawn with the seed, in source order."""
    if per_class is None:
        return split
    x, y = split
    gen = rng(seed, stream)
    chosen = []
    for label in torch.unique(y).tolist():
        idx = torch.nonzero(y == label).flatten().numpy()
        chosen.append(idx if len(idx) <= per_class else gen.choice(idx, per_class, replace=False))
    order = torch.from_numpy(np.sort(np.concatenate(chosen)))
    return x[order], y[order]


def subsets(splits: dict[str, Split], data: DataSection, seed: int) -> dict[str, Split]:
    """Apply ``subset.train_per_class`` / ``test_per_class`` (validation is never cut)."""
    if data.subset is None:
        return splits
    out = dict(splits)
    out["train"] = per_class_subset(
        out["train"], data.subset.train_per_class, seed, _TRAIN_SUBSET_STREAM
    )
    if "test" in out:
        out["test"] = per_class_subset(
            out["test"], data.subset.test_per_class, seed, _TEST_SUBSET_STREAM
        )
    return out


# ---- colour and size -----------------------------------------------------------------------


def to_color(x: torch.Tensor, color_mode: str | None) -> torch.Tensor:
    """Grayscale -> rgb repeats the channel; rgb -> grayscale uses ITU-R 601 luma (as PIL 'L')."""
    if color_mode == "rgb" and x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1)
    if color_mode == "grayscale" and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        out = torch.empty((x.shape[0], 1, *x.shape[2:]), dtype=torch.uint8)
        for s in range(0, len(x), 4096):
            out[s : s + 4096] = (x[s : s + 4096].float() * w).sum(1, keepdim=True).round_()
        return out
    return x


def resize(x: torch.Tensor, size: tuple[int, int] | None, batch: int = 4096) -> torch.Tensor:
    """Bilinear, antialiased (like PIL), in batches so 60k images never go float at once."""
    if size is None or tuple(x.shape[2:]) == tuple(size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], *size), dtype=torch.uint8)
    for s in range(0, len(x), batch):
        chunk = x[s : s + batch].float()
        r = F.interpolate(chunk, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[s : s + batch] = r.round_().clamp_(0, 255).to(torch.uint8)
    return out


# ---- normalization -------------------------------------------------------------------------


def normalization(x: torch.Tensor, normalize: str | ExplicitNormalization) -> tuple[list, list]:
    """Per-channel (mean, std) the loader applies after /255. standardize: computed here on the
    given (training) images; rescale: 0 and 1; none: 0 and 1/255, i.e. the model sees 0..255."""
    c = x.shape[1]
    if isinstance(normalize, ExplicitNormalization):
        mean, std = list(normalize.mean), list(normalize.std)
        if len(mean) == 1 and c > 1:
            mean, std = mean * c, std * c  # one value for every channel
        if len(mean) != c or len(std) != c:
            raise DataError(
                f"normalize has {len(mean)} means and {len(std)} stds but the images "
                f"have {c} channels"
            )
        return mean, std
    if normalize == "rescale":
        return [0.0] * c, [1.0] * c
    if normalize == "none":
        return [0.0] * c, [1.0 / 255.0] * c
    # float64 sums over uint8 chunks: exact enough, and 60k images never go float at once.
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for s in range(0, len(x), 8192):
        chunk = x[s : s + 8192].to(torch.float64)
        total += chunk.sum((0, 2, 3))
        squares += chunk.square().sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std) * 255)  # a constant channel: no scaling
    return (mean / 255).tolist(), (std / 255).tolist()
