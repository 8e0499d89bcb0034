"""Exported files, checked before anything runs or is allocated from them.

An export is input from wherever it came from. Its metadata (JSON: classes, image shape,
preprocessing) is checked for keys, types and a bounded image size, and an ONNX graph's
declared input and output against that metadata, before predict decodes an image for it. An
ONNX file is data for onnxruntime (loaded from its bytes; references to external data files are
refused); a TorchScript file is code, loaded only when :mod:`pipeline.export_trust` records it
as ours or the caller trusts it. Reading the metadata (:func:`read_metadata`) runs neither.
"""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile
from pathlib import Path
from typing import Any

from pipeline import export_trust
from pipeline.errors import PipelineError

METADATA_KEY = "pipeline.json"
METADATA_FORMAT = 1
REQUIRED = ("format", "classes", "image_shape", "resize", "mean", "std", "output_activation")
RESIZES = ("pil_bilinear", "torch_bilinear_antialias")
ACTIVATIONS = ("softmax", "sigmoid")  # pipeline.model.modules.PROBABILITIES
MAX_IMAGE_VALUES = 1 << 24  # C*H*W of one image: 64 MiB as float32 (4096x4096 grey)
MAX_CLASSES = 100_000
MAX_FILE_BYTES = 2 << 30  # protobuf's limit for a single-file ONNX model
MAX_METADATA_BYTES = 1 << 20
_AGAIN = "export it again with pipeline export"


class ExportFileError(PipelineError):
    """A file that is not a usable export: broken, not one, or TorchScript not known as ours."""


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def read_bytes(path: Path) -> bytes:
    """The whole file (an export is read once: hashed, checked and loaded from these bytes)."""
    if not path.is_file():
        raise ExportFileError(f"no exported model at {path}")
    size = path.stat().st_size
    if size == 0:
        raise ExportFileError(f"{path} is empty: not an exported model")
    if size > MAX_FILE_BYTES:
        raise ExportFileError(f"{path} is {size / 2**30:.1f} GiB: larger than any export")
    return path.read_bytes()


# ---- metadata ------------------------------------------------------------------------------


def _number_list(value: Any, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    )


def _problems(meta: dict[str, Any]) -> list[str]:
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        return [f"it has no {', '.join(missing)} (it needs {', '.join(REQUIRED)})"]
    out = []
    if meta["format"] != METADATA_FORMAT or isinstance(meta["format"], bool):
        out.append(f"format is {meta['format']!r}, not {METADATA_FORMAT}")
    classes = meta["classes"]
    if not (
        isinstance(classes, list)
        and 2 <= len(classes) <= MAX_CLASSES
        and all(isinstance(c, str) for c in classes)
    ):
        out.append(f"classes must be a list of 2 to {MAX_CLASSES:,} names, got {classes!r:.80}")
    shape = meta["image_shape"]
    ints = isinstance(shape, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in shape
    )
    if not (ints and len(shape) == 3 and shape[0] in (1, 3) and min(shape) >= 1):
        out.append(f"image_shape must be [channels (1 or 3), height, width], got {shape!r:.80}")
    elif math.prod(shape) > MAX_IMAGE_VALUES:
        out.append(
            f"image_shape {shape} is {math.prod(shape):,} values an image, more than the "
            f"{MAX_IMAGE_VALUES:,} predict allows"
        )
        return out  # the rest is not worth reading
    if meta["resize"] not in RESIZES:
        out.append(f"resize must be one of {', '.join(RESIZES)}, got {meta['resize']!r:.40}")
    channels = shape[0] if ints and len(shape) == 3 else None
    for key in ("mean", "std"):
        if channels is not None and not _number_list(meta[key], channels):
            out.append(f"{key} must be {channels} finite number(s), got {meta[key]!r:.60}")
    if channels is not None and _number_list(meta["std"], channels) and min(meta["std"]) <= 0:
        out.append(f"std must be positive, got {meta['std']!r}")
    if meta["output_activation"] not in (None, *ACTIVATIONS):
        out.append(
            f"output_activation must be null or one of {', '.join(ACTIVATIONS)}, "
            f"got {meta['output_activation']!r:.40}"
        )
    threshold = meta.get("threshold", 0.5)  # multi-label exports only
    if not (isinstance(threshold, float) and 0 < threshold < 1):
        out.append(f"threshold must be a number between 0 and 1, got {threshold!r:.40}")
    return out


def parse_metadata(text: str | bytes | None, path: Path) -> dict[str, Any]:
    """The metadata JSON of ``path``, checked: every key predict reads, of the right type, an
    image of at most ``MAX_IMAGE_VALUES`` values."""
    if not text:
        raise ExportFileError(
            f"{path} has no {METADATA_KEY} metadata: export it with pipeline export"
        )
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise ExportFileError(
            f"{path}: its {METADATA_KEY} metadata is not JSON ({one_line(err)}); {_AGAIN}"
        ) from None
    if not isinstance(meta, dict):
        raise ExportFileError(
            f"{path}: its {METADATA_KEY} metadata is not a JSON object but "
            f"{type(meta).__name__}; {_AGAIN}"
        )
    problems = _problems(meta)
    if problems:
        raise ExportFileError(
            f"{path}: its {METADATA_KEY} metadata is not valid: {'; '.join(problems)}; {_AGAIN}"
        )
    return meta


def check_outputs(k: int, meta: dict[str, Any], path: Path) -> None:
    """``k`` logits a sample fit the classes: one each, or one sigmoid logit for two."""
    n = len(meta["classes"])
    if k != n and not (k == 1 and n == 2):
        raise ExportFileError(
            f"{path}: the model has {k} outputs for {n} classes in its metadata; {_AGAIN}"
        )


# ---- TorchScript ---------------------------------------------------------------------------


def torchscript_metadata(path: Path, data: bytes) -> dict[str, Any]:
    """The metadata of a TorchScript archive, read as a zip file: nothing in it runs."""
    not_one = f"{path} is not a TorchScript export"
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ExportFileError(f"{not_one} (not a zip archive); pass a spec or an export") from None
    if not any(n.count("/") >= 2 and n.split("/")[1] == "code" for n in names):
        if any(n.endswith("/data.pkl") for n in names):
            raise ExportFileError(
                f"{path} is a checkpoint, not an export: for a checkpoint, pass its spec instead"
            )
        raise ExportFileError(f"{not_one} (no code/ in the archive)")
    entries = [n for n in names if n.split("/")[1:] == ["extra", METADATA_KEY]]
    if not entries:
        return parse_metadata(None, path)
    try:
        if archive.getinfo(entries[0]).file_size > MAX_METADATA_BYTES:
            raise ExportFileError(f"{path}: its {METADATA_KEY} metadata is over 1 MiB; {_AGAIN}")
        with archive.open(entries[0]) as f:
            text = f.read(MAX_METADATA_BYTES + 1)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ExportFileError(f"{not_one} (a broken zip archive: {one_line(err)})") from None
    return parse_metadata(text, path)


def load_torchscript(path: str | Path, *, trust: bool = False) -> tuple[Any, dict[str, Any]]:
    """(module on the CPU, metadata) of a TorchScript export: refused before ``torch.jit.load``
    unless the runs folder's manifest records the file's sha256 or ``trust`` is given."""
    path = Path(path)
    data = read_bytes(path)
    meta = torchscript_metadata(path, data)
    if not trust and not export_trust.is_recorded(export_trust.sha256(data)):
        raise ExportFileError(
            f"{path} is TorchScript, which runs code when loaded, and this project did not "
            f"export it (its sha256 is not in {export_trust.manifest_path()}): predict with the "
            "ONNX export instead (pipeline export SPEC --format onnx), or pass --trust if you "
            "made this file"
        )
    import torch

    try:
        with warnings.catch_warnings():  # TorchScript's deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            # the bytes that were hashed, not the file again: it cannot change in between
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except RuntimeError as err:
        raise ExportFileError(f"{path} does not load as TorchScript: {one_line(err)}") from None
    return module, meta


# ---- ONNX ----------------------------------------------------------------------------------


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ExportFileError(
            "ONNX files need the onnx and onnxruntime packages, dependencies of the pipeline: "
            f"pip install onnx onnxruntime ({err})"
        ) from None


def _tensors(graph: Any) -> Any:
    """Every tensor a graph holds: initializers and constant attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _dims(value_info: Any) -> tuple[int, list[int | None]] | None:
    """(element type, dims: None for a named or unknown one) of a graph input/output."""
    t = value_info.type.tensor_type if value_info.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape"):
        return None
    return t.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def onnx_metadata(path: Path, data: bytes) -> tuple[Any, dict[str, Any]]:
    """(the parsed model, its metadata) of an ONNX file; no graph is built or run."""
    onnx = _import("onnx")
    from google.protobuf.message import DecodeError

    if data.startswith(b"PK\x03\x04"):
        raise ExportFileError(
            f"{path} is a zip archive (TorchScript or a torch checkpoint?), not an ONNX model"
        )
    try:
        proto = onnx.ModelProto.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise ExportFileError(f"{path} is not an ONNX model ({one_line(err)})") from None
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.node:
        raise ExportFileError(f"{path} is not an ONNX model (no graph in it)")
    props = {p.key: p.value for p in proto.metadata_props}
    return proto, parse_metadata(props.get(METADATA_KEY), path)


def _check_graph(proto: Any, meta: dict[str, Any], path: Path) -> None:
    from onnx import TensorProto

    graph = proto.graph
    functions = [n for f in proto.functions for n in f.node]
    tensors = [*_tensors(graph), *(a.t for n in functions for a in n.attribute)]
    if any(t.data_location == TensorProto.EXTERNAL for t in tensors):
        raise ExportFileError(
            f"{path} refers to external data files: predict reads single-file ONNX exports only"
        )
    constants = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    want = ["batch", *meta["image_shape"]]
    found = _dims(inputs[0]) if len(inputs) == 1 else None
    if (
        found is None
        or found[0] != TensorProto.FLOAT
        or found[1][0] is not None
        or found[1][1:] != want[1:]
    ):
        shown = "?" if found is None else ["batch" if d is None else d for d in found[1]]
        raise ExportFileError(
            f"{path}: the model's input shape {shown} (of {len(inputs)} input(s)) is not the "
            f"float {want} its metadata's image_shape says; {_AGAIN}"
        )
    out = _dims(graph.output[0]) if graph.output else None
    if out is not None and len(out[1]) == 2 and out[1][1] is not None:
        check_outputs(out[1][1], meta, path)


def onnx_session(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(onnxruntime session on the CPU, metadata) of an ONNX export, checked first."""
    path = Path(path)
    data = read_bytes(path)
    proto, meta = onnx_metadata(path, data)
    _check_graph(proto, meta, path)
    del proto
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # its errors come back as the exception; no stderr lines
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except ort_errors() as err:
        raise ExportFileError(f"{path} does not load in onnxruntime: {one_line(err)}") from None
    return session, meta


def ort_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises on a model it cannot load or run (all derive from Exception)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(
        v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checked metadata inside an exported ``.onnx`` or ``.pt`` file; nothing in it runs."""
    path = Path(path)
    data = read_bytes(path)
    if path.suffix == ".onnx":
        return onnx_metadata(path, data)[1]
    return torchscript_metadata(path, data)
