"""Classify image files with a trained spec's checkpoint or an exported TorchScript/ONNX file.

Each image goes through what prepare did to the training images (colour mode, resize by the
same method, /255, the stored mean/std), so a file of the training set gets the prediction its
prepared array gets.

An exported file is checked before anything is decoded for it (:mod:`pipeline.export_check`):
ONNX is the recommended source; a TorchScript file is code and loads only when this project
exported it (its sha256 is in the runs folder's manifest) or with ``trust``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import export_check, export_trust
from pipeline.errors import PipelineError
from pipeline.export import metadata
from pipeline.model.modules import PROBABILITIES

TOP = 5
EXPORT_SUFFIXES = (".pt", ".pts", ".onnx")
BATCH_VALUES = 1 << 26  # floats in one input batch (256 MiB): fewer images a batch when large

Probabilities = Callable[[torch.Tensor], torch.Tensor]


class PredictError(PipelineError):
    """A source that cannot classify (no checkpoint, not an export, MC dropout on an export)."""


# ---- images --------------------------------------------------------------------------------


def load_image(path: str | Path, meta: dict[str, Any]) -> np.ndarray:
    """One image file as uint8 (C, H, W) at the model's colour mode and size, decoded and
    resized as prepare does for the model's data source. Raises OSError/ValueError on a bad
    file (what PIL raises)."""
    from pipeline.data import select as sel
    from pipeline.data.folders import decode

    c, h, w = meta["image_shape"]
    mode = "L" if c == 1 else "RGB"
    if meta.get("resize") == "pil_bilinear":  # image folders: PIL decodes and resizes at once
        return decode(Path(path), mode, (h, w))
    # Built-in datasets are resized as tensors (antialiased bilinear): decode at full size.
    arr = np.array(decode(Path(path), mode, None))  # a writable copy: torch shares it
    return sel.resize(torch.from_numpy(arr)[None], (h, w))[0].numpy()


def to_input(images: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std, per channel, as the loader does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255
    mean = torch.tensor(meta["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def _as_classes(p: torch.Tensor) -> torch.Tensor:
    """(N, classes) even for one sigmoid output, as evaluate reports it."""
    return torch.cat([1 - p, p], dim=1) if p.shape[1] == 1 else p


def _activate(logits: torch.Tensor, activation: str | None) -> torch.Tensor:
    kind = activation or ("sigmoid" if logits.shape[1] == 1 else "softmax")
    return _as_classes(PROBABILITIES[kind](logits.float()))


# ---- sources -------------------------------------------------------------------------------


def _spec_source(path: Path, checkpoint: str | None) -> tuple[Any, dict[str, Any], Any]:
    """(model, metadata, spec) of a spec's trained run: its ``checkpoint`` (default: the one
    ``evaluate.checkpoint`` names, so predict uses the weights evaluate measured)."""
    from pipeline.data.prepare import prepare
    from pipeline.spec import load_spec
    from pipeline.train.checkpoint import load_trained

    spec = load_spec(path)
    model, _ = load_trained(spec, checkpoint or spec.evaluate.checkpoint)
    meta = metadata(spec, model, prepare(spec).meta) | {"seed": spec.seed}  # MC dropout's seed
    return model, meta, spec


def _check_logits(logits: Any, meta: dict[str, Any], path: Path) -> None:
    """A model from a file gives (N, classes) logits, or says plainly that it does not."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PredictError(f"{path}: the model gives {got}, not (batch, classes) logits")
    try:
        export_check.check_outputs(logits.shape[1], meta, path)
    except export_check.ExportFileError as err:
        raise PredictError(str(err)) from None


def _torchscript_source(path: Path, trust: bool) -> tuple[Probabilities, dict[str, Any]]:
    module, meta = export_check.load_torchscript(path, trust=trust)
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        try:
            with torch.inference_mode():
                logits = module(x)
        except RuntimeError as err:
            raise PredictError(f"{path} fails on its input: {export_check.one_line(err)}") from None
        _check_logits(logits, meta, path)
        return _activate(logits, meta["output_activation"])

    return run, meta


def _onnx_source(path: Path) -> tuple[Probabilities, dict[str, Any]]:
    session, meta = export_check.onnx_session(path)
    name = session.get_inputs()[0].name
    errors = export_check.ort_errors()

    def run(x: torch.Tensor) -> torch.Tensor:
        try:
            logits = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        except errors as err:
            raise PredictError(f"{path} fails on its input: {export_check.one_line(err)}") from None
        _check_logits(logits, meta, path)
        return _activate(logits, meta["output_activation"])

    return run, meta


def load_source(
    source: str | Path, *, checkpoint: str | None = None, trust: bool = False
) -> tuple[Probabilities, dict[str, Any], Any]:
    """(probabilities function, metadata, model or None) of a spec (its trained run) or an
    exported ``.pt``/``.onnx`` file. The model is returned only for a spec (MC dropout).
    ``trust``: load a TorchScript file that this project's runs folder does not record."""
    path = Path(source)
    try:
        if path.suffix == ".onnx":
            return (*_onnx_source(path), None)
        if path.suffix in EXPORT_SUFFIXES:
            return (*_torchscript_source(path, trust), None)
    except (export_check.ExportFileError, export_trust.ManifestError) as err:
        raise PredictError(str(err)) from None
    model, meta, _ = _spec_source(path, checkpoint)

    def probs(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return _as_classes(model.predict_proba(x).float())

    return probs, meta, model


# ---- predict -------------------------------------------------------------------------------


def _entry(
    file: str, classes: list[str], p: torch.Tensor, spread: float | None, threshold: float | None
) -> dict[str, Any]:
    top = p.topk(min(TOP, len(p)))
    out: dict[str, Any] = {
        "file": file,
        "class": classes[int(top.indices[0])],
        "probability": float(top.values[0]),
        "probabilities": {
            classes[int(i)]: float(v) for v, i in zip(top.values, top.indices, strict=True)
        },
        "error": None,
    }
    if spread is not None:
        out["spread"] = spread
    if threshold is not None:  # multi-label: every class whose sigmoid reaches the threshold
        out["labels"] = [classes[i] for i in torch.nonzero(p >= threshold).flatten().tolist()]
    return out


def predict_files(
    source: str | Path,
    paths: Sequence[str | Path],
    *,
    mc_samples: int = 0,
    batch_size: int = 256,
    checkpoint: str | None = None,
    trust: bool = False,
) -> list[dict[str, Any]]:
    """Classify image files, in order. ``source``: a spec (its run's ``checkpoint``, best, last
    or swa, by default the one ``evaluate.checkpoint`` names; and prepared meta) or an exported
    ``.pt``/``.onnx`` (metadata inside).

    Each result: ``file``, ``class``, ``probability``, ``probabilities`` (top 5, class ->
    probability, best first), multi-label: ``labels`` (the classes at or above
    ``evaluate.threshold``), ``error`` (None, or why the file could not be read: then the
    class fields are None and the other files are still classified). ``mc_samples > 0`` (spec
    only): the mean over that many passes with dropout active, and ``spread`` (the std over
    passes of the predicted class's probability). ``trust``: load a TorchScript file that this
    project's runs folder does not record as exported (it runs code: only a file you made).
    Images are decoded a batch at a time, fewer a batch when they are large."""
    if mc_samples < 0:
        raise PredictError(f"--mc-samples must be >= 0, got {mc_samples}")
    if mc_samples == 1:
        raise PredictError("--mc-samples needs at least 2 passes for a spread (0 turns it off)")
    if mc_samples and Path(source).suffix in EXPORT_SUFFIXES:
        raise PredictError(
            "MC dropout needs the spec (the exported graph has dropout "
            "removed): pass the spec, or mc_samples=0"
        )
    if checkpoint is not None and Path(source).suffix in EXPORT_SUFFIXES:
        raise PredictError(
            f"a checkpoint ({checkpoint}) is chosen for a spec's run; {source} is an exported "
            "file, which holds its own weights: leave the checkpoint out"
        )
    from PIL import Image

    probs, meta, model = load_source(source, checkpoint=checkpoint, trust=trust)
    classes = list(meta["classes"])
    results: list[dict[str, Any] | None] = [None] * len(paths)
    c, h, w = meta["image_shape"]
    batch = max(1, min(batch_size, BATCH_VALUES // (c * h * w)))
    done = 0  # images classified so far: MC dropout seeds a batch by its first
    for first in range(0, len(paths), batch):
        chunk: list[tuple[int, np.ndarray]] = []
        for i in range(first, min(first + batch, len(paths))):
            try:
                chunk.append((i, load_image(paths[i], meta)))
            # what PIL raises on broken files; a decompression bomb is none of those
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                results[i] = {
                    "file": str(paths[i]),
                    "class": None,
                    "probability": None,
                    "probabilities": {},
                    "error": f"cannot read image: {err}",
                }
        if not chunk:
            continue
        x = to_input(np.stack([arr for _, arr in chunk]), meta)
        spreads: list[float | None] = [None] * len(chunk)
        if mc_samples:
            from pipeline.evaluate import mc_dropout

            # evaluate's MC dropout takes a loader of (x, y): one batch, dummy labels
            p, spread, _ = mc_dropout(
                model,
                [(x, torch.zeros(len(x), dtype=torch.int64))],
                mc_samples,
                meta.get("seed", 0) + done,
            )
            spreads = [float(s) for s in spread]
        else:
            p = probs(x)
        for (i, _), row, s in zip(chunk, p, spreads, strict=True):
            results[i] = _entry(str(paths[i]), classes, row, s, meta.get("threshold"))
        done += len(chunk)
    return [r for r in results if r is not None]
