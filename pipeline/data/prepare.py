"""The prepare stage: raw dataset -> selected, split, resized uint8 arrays in a stable folder.

``data/prepared/<dataset>-<hash>/`` holds ``{train,val,test}_{x,y}.npy`` (images uint8 N,C,H,W;
labels int64), ``meta.json`` and the marker that says the folder is prepare's own (see
:mod:`.store`). The hash covers only what changes the content: the data section (less
``mirror`` and ``download``), the seed when a split or subset is drawn with it, and with
``augment.mode: offline`` the augment section and seed: the training split is then the
originals followed by ``factor`` augmented copies of each (``<dataset>-offline-<hash>``), made
here and only read by train. The folder appears atomically (written beside it, then renamed),
so a later stage never reads half of one; preparing again is a no-op; a folder prepare did not
write is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.data import select as sel
from pipeline.data import store
from pipeline.data.class_weights import balanced_weights
from pipeline.data.folders import folder_fingerprint
from pipeline.data.multilabel import fingerprints as labels_fingerprints
from pipeline.data.raw import DataError, RawData
from pipeline.data.sources import read_source
from pipeline.data.store import FORMAT, SPLITS
from pipeline.spec.base import pair

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

Array = torch.Tensor | np.ndarray


@dataclass
class Prepared:
    """A prepared dataset: per split (x uint8 N,C,H,W, y int64 N), tensors or memmaps, and meta."""

    root: Path
    meta: dict[str, Any]
    splits: dict[str, tuple[Array, torch.Tensor]]
    written: bool = False
    """Prepared by the call that returned it (False: found complete and read)."""

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.meta["image_shape"]
        return (c, h, w)

    @property
    def mean(self) -> list[float]:
        """Per channel, applied after /255 (see ``meta['normalization']``)."""
        return list(self.meta["normalization"]["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.meta["normalization"]["std"])

    def split(self, name: str) -> tuple[Array, torch.Tensor]:
        """(x, y) of 'train', 'val' or 'test'; a DataError names the splits there are."""
        if name not in self.splits:
            raise DataError(f"{self.root} has no {name!r} split (it has {', '.join(self.splits)})")
        return self.splits[name]


# ---- where ---------------------------------------------------------------------------------


def _uses_seed(spec: Spec) -> bool:
    v, s = spec.data.validation, spec.data.subset
    return (v is not None and v.fraction is not None) or (
        s is not None and (s.train_per_class is not None or s.test_per_class is not None)
    )


def split_seed(spec: Spec) -> int:
    """The seed that draws the validation split and subsets: ``data.seed``, else ``seed``."""
    return spec.seed if spec.data.seed is None else spec.data.seed


def offline(spec: Spec) -> dict[str, Any] | None:
    """What the offline-augmented training set depends on (``augment.mode: offline`` with
    transforms; None otherwise): the copies per image, the transforms and the seed."""
    a = spec.augment
    if a.mode != "offline" or not a.transforms:
        return None
    transforms = a.model_dump(mode="json")["transforms"]
    return {"factor": a.factor, "transforms": transforms, "seed": spec.seed}


def data_key(spec: Spec) -> str:
    """Short hash of the data section's canonical JSON (defaults left out, so a new optional
    field does not move every folder), its folders resolved, plus the seed when it draws, plus
    the offline augmentation when there is one."""
    d = spec.data.model_dump(mode="json", exclude_defaults=True, exclude={"mirror", "download"})
    for k in ("path", "test_path", "labels_file", "test_labels_file"):
        if d.get(k):
            d[k] = _portable(spec.path_of(d[k]))
    if d.get("validation", {}).get("path"):
        d["validation"]["path"] = _portable(spec.path_of(d["validation"]["path"]))
    merge = d.get("classes", {}).get("merge")
    if merge:  # its order sets the labels: kept as pairs, which sort_keys leaves in order
        d["classes"]["merge"] = list(merge.items())
    d.pop("seed", None)
    if _uses_seed(spec):
        d["seed"] = split_seed(spec)
    if offline(spec) is not None:
        d["offline"] = offline(spec)
    d["format"] = FORMAT
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _portable(folder: str | Path) -> str:
    """An image folder as the data key sees it: relative to the working folder (a DVC stage's
    is the repository root), so the same project elsewhere (a clone that pulled its prepared
    data) has the same key, while two spec files naming different folders do not."""
    try:
        return os.path.relpath(folder)
    except ValueError:  # another drive
        return str(folder)


def prepared_dir(spec: Spec, out_root: str | Path = "data/prepared") -> Path:
    """``<out_root>/<dataset>-<data_key>`` (``<dataset>-offline-<data_key>`` with offline
    augmentation): the folder ``prepare`` writes for this spec."""
    kind = "-offline" if offline(spec) is not None else ""
    return Path(out_root) / f"{spec.data.dataset}{kind}-{data_key(spec)}"


def _fingerprints(spec: Spec) -> dict[str, str]:
    """Image folders change without the spec changing: their listing is part of 'complete'."""
    d = spec.data
    folders = [d.path, d.test_path, d.validation.path if d.validation else None]
    out = {p: folder_fingerprint(spec.path_of(p)) for p in folders if p}
    return out | labels_fingerprints(d, spec.path_of)


# ---- prepare -------------------------------------------------------------------------------


def prepare(
    spec: Spec,
    out_root: str | Path = "data/prepared",
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    target: str | Path | None = None,
) -> Prepared:
    """Prepare the spec's data under ``prepared_dir(spec, out_root)``, or in exactly the folder
    ``target`` (a DVC stage's declared output); a no-op when it is there and complete.

    ``progress`` is called with a short message after each step (and each file written)."""
    note = progress or (lambda _msg: None)
    key = data_key(spec)
    target = Path(target) if target is not None else prepared_dir(spec, out_root)
    fingerprints = _fingerprints(spec) if spec.data.dataset == "image_folder" else {}
    if not force and store.complete(target, key, fingerprints):
        note(f"{target} is up to date")
        return load_prepared(target)
    store.check_replaceable(target)  # a folder someone else wrote: refused, before any reading
    source_classes = spec.data.source_classes()
    if source_classes is not None:  # fail on a misspelt class before reading any data
        sel.class_mapping(spec.data.classes, source_classes)
    tmp = store.new_temp(target)
    try:
        raw = read_source(spec.data, spec.path_of)
        note(
            f"read {spec.data.dataset}: "
            + ", ".join(f"{k} {len(y)}" for k, (_, y) in raw.splits.items())
        )
        splits, mapping = build_splits(raw, spec)
        mean, std = sel.normalization(splits["train"][0], spec.data.normalize)
        augmented = offline(spec)
        if augmented is not None:
            augmented["originals"] = len(splits["train"][1])
            splits["train"] = _offline_augment(spec, splits["train"], note)
        files = {}
        with store.writing(target.parent):
            for name, (x, y) in splits.items():
                for suffix, arr in (("x", x), ("y", y)):
                    path = tmp / f"{name}_{suffix}.npy"
                    np.save(path, arr.numpy())
                    files[path.name] = path.stat().st_size
                    note(f"wrote {path.name}")
            meta = _meta(spec, key, raw, splits, mapping, mean, std, files)
            meta["offline"] = augmented  # the training split: originals, then the copies
            # meta.json last: its presence (with matching sizes) is what 'complete' means.
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            note("wrote meta.json")
            store.install(tmp, target, key, fingerprints, replace=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    note(f"prepared {target}")
    return Prepared(target, meta, dict(splits), written=True)


def _offline_augment(spec: Spec, train: sel.Split, note: Callable[[str], None]) -> sel.Split:
    """The training split as the originals, then ``factor`` augmented copies of each (normalized
    with the originals' statistics, as online augmentation is)."""
    from pipeline.data.augment import offline_augment

    x, y = train
    factor = spec.augment.factor
    note(f"offline augmentation: {factor} augmented copies of each of {len(y)} training images")
    copies = (1 + factor, *([1] * (y.ndim - 1)))  # multi-hot rows repeat whole
    return offline_augment(x, spec.augment, spec.seed), y.repeat(copies)


def build_splits(raw: RawData, spec: Spec) -> tuple[dict[str, sel.Split], list[list[int]]]:
    """Classes, then the validation split and subsets, then colour and size. Returns the splits
    and, per new label, its source class indices (several for a merged class).

    ``validation.fraction`` is a fraction of the training subset: 30 per class and 0.2 give 24
    training and 6 validation images per class. ``validation.first`` (the seeds' first N) and
    ``validation.path`` are held out of, or apart from, the whole training split and never cut."""
    data = spec.data
    if data.validation is not None and data.validation.path and data.dataset != "image_folder":
        raise DataError(
            f"validation.path is for image_folder; {data.dataset} takes "
            "validation.fraction or validation.first"
        )
    mapping = sel.class_mapping(data.classes, raw.classes)
    splits = {k: sel.select_classes(s, mapping, len(raw.classes)) for k, s in raw.splits.items()}
    seed = split_seed(spec)
    of_subset = data.validation is not None and data.validation.fraction is not None
    if of_subset:
        splits = sel.subsets(splits, data, seed)
    train, val = sel.split_validation(splits["train"], data, seed)
    splits["train"] = train
    if val is not None:
        splits["val"] = val
    if not of_subset:
        splits = sel.subsets(splits, data, seed)
    size = pair(data.image_size) if data.image_size is not None else None
    out = {}
    for name in SPLITS:
        if name in splits:
            x, y = splits[name]
            out[name] = (sel.resize(sel.to_color(x, data.color_mode), size).contiguous(), y)
    if len(out["train"][1]) == 0:
        raise DataError("the training split is empty after class selection and subsets")
    return out, mapping


def _meta(
    spec: Spec,
    key: str,
    raw: RawData,
    splits: dict[str, sel.Split],
    mapping: list[list[int]],
    mean: list[float],
    std: list[float],
    files: dict[str, int],
) -> dict[str, Any]:
    classes = sel.class_names(spec.data.classes, mapping, raw.classes)
    counts = {  # multi-label (y multi-hot): the images showing each class
        name: dict(zip(classes, _per_class(y, len(classes)).tolist(), strict=True))
        for name, (_, y) in splits.items()
    }
    normalize = spec.data.normalize
    return {
        "format": FORMAT,
        "key": key,
        "dataset": spec.data.dataset,
        "classes": classes,
        "source_classes": raw.classes,
        "class_map": mapping,  # per label, its source class indices
        "multi_label": spec.data.multi_label,
        "class_weights": balanced_weights(counts["train"]),
        "image_shape": list(splits["train"][0].shape[1:]),
        "counts": counts,
        "normalization": {
            "mode": normalize if isinstance(normalize, str) else "explicit",
            "mean": mean,
            "std": std,
            "applied": "(x / 255 - mean) / std, per channel",
            "computed_on": "train" if normalize == "standardize" else None,
        },
        "checksums": {_short(spec, k): v for k, v in raw.checksums.items()},
        "skipped_corrupt": {"count": sum(map(len, raw.skipped.values())), "files": raw.skipped},
        "seed": split_seed(spec) if _uses_seed(spec) else None,
        # mirror and download change where the files come from, not what is in them.
        "data": spec.data.model_dump(mode="json", exclude={"mirror", "download"}),
        "files": files,
    }


def _per_class(y: torch.Tensor, k: int) -> torch.Tensor:
    return y.sum(0) if y.ndim == 2 else torch.bincount(y, minlength=k)


def _short(spec: Spec, folder: str) -> str:
    # Image folders are stored as the spec writes them, so meta.json is the same on any machine.
    d = spec.data
    for p in (d.path, d.test_path, d.validation.path if d.validation else None, d.labels_file,
              d.test_labels_file):  # fmt: skip
        if p and str(spec.path_of(p)) == folder:
            return p
    return folder


# ---- read back -----------------------------------------------------------------------------


def load_prepared_for(spec: Spec, folder: str | Path) -> Prepared:
    """The prepared folder ``folder`` (e.g. one ``dvc pull`` restored), checked to hold this
    spec's data: a folder prepared for another data section (or offline augmentation) is an
    error, never used."""
    prepared = load_prepared(folder)
    key, found = data_key(spec), prepared.meta.get("key")
    if found != key:
        what = " or offline augmentation" if offline(spec) or prepared.meta.get("offline") else ""
        raise DataError(
            f"{folder} holds data prepared for another data section{what} (key {found}, this "
            f"spec's is {key}): run 'pipeline prepare <spec> --out {folder}' (or 'dvc repro')"
        )
    return prepared


def load_prepared(
    spec_or_dir: Spec | str | Path, out_root: str | Path = "data/prepared", *, mmap: bool = False
) -> Prepared:
    """A prepared folder (or the spec's); ``mmap=True`` maps the images instead of reading them
    (labels are always read: 8 bytes a sample)."""
    if isinstance(spec_or_dir, str | Path):
        root = Path(spec_or_dir)
    else:
        root = prepared_dir(spec_or_dir, out_root)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"{root} is not a prepared dataset (no readable meta.json): run "
            "'pipeline prepare <spec>' first"
        ) from err
    splits: dict[str, tuple[Array, torch.Tensor]] = {}
    for name in SPLITS:
        if f"{name}_x.npy" not in meta.get("files", {}):
            continue
        x = np.load(root / f"{name}_x.npy", mmap_mode="r" if mmap else None)
        y = torch.from_numpy(np.load(root / f"{name}_y.npy"))
        splits[name] = (x if mmap else torch.from_numpy(x), y)
    return Prepared(root, meta, splits)


def report(prepared: Prepared, *, as_json: bool = False) -> str:
    """Counts per class and split as a small table (or JSON)."""
    counts = prepared.meta["counts"]
    if as_json:
        return json.dumps(
            {
                "root": str(prepared.root),
                "classes": prepared.classes,
                "image_shape": prepared.image_shape,
                "counts": counts,
                "normalization": prepared.meta["normalization"],
                "skipped_corrupt": prepared.meta["skipped_corrupt"]["count"],
            },
            indent=1,
        )
    names = [s for s in SPLITS if s in counts]
    width = max(len("class"), *(len(c) for c in prepared.classes))
    lines = [
        f"{prepared.root}  images {'x'.join(map(str, prepared.image_shape))}",
        f"{'class':<{width}}" + "".join(f"{s:>9}" for s in names),
    ]
    for c in prepared.classes:
        lines.append(f"{c:<{width}}" + "".join(f"{counts[s][c]:>9}" for s in names))
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(counts[s].values()):>9}" for s in names))
    augmented = prepared.meta.get("offline")
    if augmented:
        lines.append(
            f"train: {augmented['originals']} images, then {augmented['factor']} augmented "
            "copies of each (augment.mode: offline)"
        )
    skipped = prepared.meta["skipped_corrupt"]["count"]
    if skipped:
        lines.append(f"skipped {skipped} corrupt image file(s)")
    return "\n".join(lines)
