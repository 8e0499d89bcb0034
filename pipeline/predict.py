"""Classify image files with a trained spec's checkpoint or an exported TorchScript/ONNX file.

Each image goes through what prepare did to the training images (colour mode, resize by the
same method, /255, the stored mean/std), so a file of the training set gets the prediction its
prepared array gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.export import METADATA_KEY, ExportError, jit_load, metadata
from pipeline.model.modules import PROBABILITIES

TOP = 5
EXPORT_SUFFIXES = (".pt", ".pts", ".onnx")

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


def _spec_source(path: Path, checkpoint: str) -> tuple[Any, dict[str, Any], Any]:
    """(model, metadata, spec) of a spec's trained run."""
    from pipeline.data.prepare import prepare
    from pipeline.spec import load_spec
    from pipeline.train.checkpoint import load_trained

    spec = load_spec(path)
    model, _ = load_trained(spec, checkpoint)
    meta = metadata(spec, model, prepare(spec).meta) | {"seed": spec.seed}  # MC dropout's seed
    return model, meta, spec


def _torchscript_source(path: Path) -> tuple[Probabilities, dict[str, Any]]:
    extra = {METADATA_KEY: ""}
    try:
        module = jit_load(path, extra)
    except RuntimeError as err:
        raise PredictError(
            f"{path} is not a TorchScript export ({err}); for a checkpoint, pass its spec instead"
        ) from None
    if not extra[METADATA_KEY]:
        raise PredictError(f"{path} has no {METADATA_KEY} metadata: export it with pipeline export")
    meta = json.loads(extra[METADATA_KEY])
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return _activate(module(x), meta["output_activation"])

    return run, meta


def _onnx_source(path: Path) -> tuple[Probabilities, dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise PredictError(
            "predicting with ONNX needs onnxruntime: pip install 'pipeline[export]'"
        ) from err
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # onnxruntime reads metadata_props itself: no onnx package needed here.
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if not text:
        raise PredictError(f"{path} has no {METADATA_KEY} metadata: export it with pipeline export")
    meta = json.loads(text)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {name: x.numpy()})[:1]
        return _activate(torch.from_numpy(logits), meta["output_activation"])

    return run, meta


def load_source(
    source: str | Path, *, checkpoint: str = "best"
) -> tuple[Probabilities, dict[str, Any], Any]:
    """(probabilities function, metadata, model or None) of a spec (its trained run) or an
    exported ``.pt``/``.onnx`` file. The model is returned only for a spec (MC dropout)."""
    path = Path(source)
    if path.suffix in EXPORT_SUFFIXES:
        if not path.is_file():
            raise PredictError(f"no exported model at {path}")
        run, meta = (_onnx_source if path.suffix == ".onnx" else _torchscript_source)(path)
        return run, meta, None
    model, meta, _ = _spec_source(path, checkpoint)

    def probs(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return _as_classes(model.predict_proba(x).float())

    return probs, meta, model


# ---- predict -------------------------------------------------------------------------------


def _entry(file: str, classes: list[str], p: torch.Tensor, spread: float | None) -> dict[str, Any]:
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
    return out


def predict_files(
    source: str | Path,
    paths: Sequence[str | Path],
    *,
    mc_samples: int = 0,
    batch_size: int = 256,
    checkpoint: str = "best",
) -> list[dict[str, Any]]:
    """Classify image files, in order. ``source``: a spec (its run's ``checkpoint``, best or
    last, and prepared meta) or an exported ``.pt``/``.onnx`` (metadata inside).

    Each result: ``file``, ``class``, ``probability``, ``probabilities`` (top 5, class ->
    probability, best first), ``error`` (None, or why the file could not be read: then the
    class fields are None and the other files are still classified). ``mc_samples > 0`` (spec
    only): the mean over that many passes with dropout active, and ``spread`` (the std over
    passes of the predicted class's probability)."""
    if mc_samples < 0:
        raise ValueError(f"mc_samples must be >= 0, got {mc_samples}")
    if mc_samples == 1:
        raise ValueError("mc_samples needs at least 2 passes for a spread (0 turns it off)")
    if mc_samples and Path(source).suffix in EXPORT_SUFFIXES:
        raise PredictError(
            "MC dropout needs the spec (the exported graph has dropout "
            "removed): pass the spec, or mc_samples=0"
        )
    try:
        probs, meta, model = load_source(source, checkpoint=checkpoint)
    except ExportError as err:
        raise PredictError(str(err)) from err
    classes = list(meta["classes"])
    results: list[dict[str, Any] | None] = [None] * len(paths)
    good: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(paths):
        try:
            good.append((i, load_image(path, meta)))
        except (OSError, ValueError, SyntaxError) as err:  # what PIL raises on broken files
            results[i] = {
                "file": str(path),
                "class": None,
                "probability": None,
                "probabilities": {},
                "error": f"cannot read image: {err}",
            }
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        x = to_input(np.stack([arr for _, arr in chunk]), meta)
        spreads: list[float | None] = [None] * len(chunk)
        if mc_samples:
            from pipeline.evaluate import mc_dropout

            # evaluate's MC dropout takes a loader of (x, y): one batch, dummy labels
            p, spread, _ = mc_dropout(
                model,
                [(x, torch.zeros(len(x), dtype=torch.int64))],
                mc_samples,
                meta.get("seed", 0) + start,
            )
            spreads = [float(s) for s in spread]
        else:
            p = probs(x)
        for (i, _), row, s in zip(chunk, p, spreads, strict=True):
            results[i] = _entry(str(paths[i]), classes, row, s)
    return [r for r in results if r is not None]
