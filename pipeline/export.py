"""Inference export: batch-norm folding, TorchScript and ONNX files that carry their own metadata.

An exported file holds everything ``pipeline.predict`` needs besides the images: class names,
image shape and colour mode, the resize method, normalization mean/std and the output
activation, as JSON (TorchScript: the extra file ``pipeline.json``; ONNX: the ``metadata_props``
entry of the same name).

ONNX is the default: an ONNX file is a graph for onnxruntime, safe to pass around. A TorchScript
file is code that runs when it is loaded, so each one written here has its sha256 recorded in the
runs folder (:mod:`pipeline.export_trust`), and only recorded ones load without ``--trust``.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline import export_trust
from pipeline.atomic import replacing, write_text
from pipeline.errors import PipelineError
from pipeline.export_check import METADATA_FORMAT, METADATA_KEY
from pipeline.export_check import read_metadata as read_metadata  # the reader, for callers
from pipeline.run import Run

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

FORMATS = ("torchscript", "onnx")
DEFAULT_FORMAT = "onnx"  # data, not code: the one to hand to others
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
ONNX_OPSET = 17

_CORES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCH_NORMS = nn.modules.batchnorm._BatchNorm


class ExportError(PipelineError):
    """An export that cannot be made (unknown format, missing package, wrong trace)."""


# ---- batch-norm folding --------------------------------------------------------------------


def _foldable(bn: nn.Module) -> bool:
    # Without running statistics a batch norm normalizes with batch statistics even in eval
    # mode: there is no fixed affine map to fold.
    return (
        isinstance(bn, _BATCH_NORMS)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
    )


@torch.no_grad()
def _fold_into(core: nn.Module, bn: nn.Module) -> None:
    """W' = γW/σ, b' = γ(b − μ)/σ + β with σ = sqrt(running_var + eps), in float64 so the
    folded layer rounds once, not twice."""
    w = core.weight.detach().double()
    n = w.shape[0]
    if bn.num_features != n:
        raise ValueError(f"batch norm of {bn.num_features} features after {n} outputs")
    sigma = (bn.running_var.double() + bn.eps).sqrt()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(sigma)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(sigma)
    scale = gamma / sigma
    b = core.bias.detach().double() if core.bias is not None else torch.zeros_like(sigma)
    new_w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    new_b = (b - bn.running_mean.double()) * scale + beta
    core.weight.copy_(new_w.to(core.weight.dtype))
    if core.bias is None:  # a dense/conv without bias (batch norm's β replaced it): create one
        core.bias = nn.Parameter(
            new_b.to(core.weight.dtype), requires_grad=core.weight.requires_grad
        )
    else:
        core.bias.copy_(new_b.to(core.bias.dtype))


def _open_core(module: nn.Module) -> nn.Module | None:
    """The conv/linear whose raw output ``module`` ends with (nothing non-linear after it), so a
    batch norm right after ``module`` can fold into it; else None."""
    if isinstance(module, _CORES):
        return module
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        # WeightedBlock, torchvision's Conv2dNormActivation: a plain chain ending in its core
        # (identities, e.g. folded batch norms or a 'linear' activation, do not count).
        parts = [m for m in module.children() if not isinstance(m, nn.Identity)]
        return _open_core(parts[-1]) if parts else None
    return None


def _fold_sequence(seq: nn.Module, prefix: str, folded: list[str]) -> None:
    """Fold, in place, each batch norm of ``seq`` that directly follows a conv/linear (or a
    block ending in one); recurse into every submodule first so inner ones fold first."""
    for name, child in seq.named_children():
        _fold_sequence(child, f"{prefix}{name}.", folded)
    if not isinstance(seq, nn.Sequential) or type(seq).forward not in (
        nn.Sequential.forward,
        *_sequential_forwards(),
    ):
        return
    prev: nn.Module | None = None
    for name, child in list(seq.named_children()):
        if isinstance(child, nn.Identity):
            continue  # transparent: a batch norm after it still follows the core before it
        core = _open_core(prev) if prev is not None else None
        if core is not None and _foldable(child):
            _fold_into(core, child)
            setattr(seq, name, nn.Identity())
            folded.append(f"{prefix}{name}")
            continue  # the core is still open: a second batch norm may follow
        prev = child


def _sequential_forwards() -> tuple[Any, ...]:
    """Sequentials of the pipeline whose forward is still a chain of the children."""
    from pipeline.model.build import Network
    from pipeline.model.modules import Reused

    # Reused applies its final activation after the whole chain: pairs inside still fold.
    return (Network.forward, Reused.forward)


def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """An eval-mode copy of ``model`` with every batch norm that directly follows a conv or
    dense (no nonlinearity between) folded into it and replaced by ``nn.Identity``; and the
    folded batch norms' module names (``conv2d_1.bn``, ``batch_norm_2``). Batch norms after a
    nonlinearity, or first in the network, stay (see :func:`batch_norm_names`)."""
    folded_model = copy.deepcopy(model).eval()
    folded: list[str] = []
    _fold_sequence(folded_model, "", folded)
    # inner chains fold first: report in the model's order instead
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return folded_model, sorted(folded, key=order.__getitem__)


def batch_norm_names(model: nn.Module) -> list[str]:
    """Module names of the batch norms in ``model`` (those a fold left, after folding)."""
    return [name for name, m in model.named_modules() if isinstance(m, _BATCH_NORMS)]


@torch.inference_mode()
def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference of two models' eval-mode outputs on ``x``."""
    a.eval()
    b.eval()
    return float((a(x).double() - b(x).double()).abs().max())


@torch.inference_mode()
def latency_ms(
    models: dict[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 64),
    *,
    repeats: int = 30,
    warmup: int = 5,
) -> dict[str, dict[str, float]]:
    """Median wall-clock ms of one eval-mode CPU forward pass, per model and batch size
    (``{"before": {"1": ms, "64": ms}, ...}``). The models take turns on each repeat, so
    warm-up and frequency drift do not favour whichever is timed last."""
    gen = torch.Generator().manual_seed(0)
    times: dict[str, dict[str, list[float]]] = {k: {} for k in models}
    for m in models.values():
        m.eval()
    for n in batch_sizes:
        x = torch.randn((n, *input_shape), generator=gen)
        for m in models.values():
            for _ in range(warmup):
                m(x)
        for _ in range(repeats):
            for key, m in models.items():
                start = time.perf_counter()
                m(x)
                times[key].setdefault(str(n), []).append((time.perf_counter() - start) * 1000)
    return {
        k: {n: round(statistics.median(v), 4) for n, v in per.items()} for k, per in times.items()
    }


def fold_report(
    model: nn.Module, input_shape: Sequence[int], *, latency: bool = True, repeats: int = 30
) -> tuple[nn.Module, dict[str, Any]]:
    """Fold ``model`` and check it: the folded model, and a report with the folded and
    remaining batch norms, the max abs output difference on random inputs and (``latency``)
    the CPU latency before and after."""
    model = copy.deepcopy(model).cpu().eval()
    folded_model, folded = fold_batch_norm(model)
    x = torch.randn((16, *input_shape), generator=torch.Generator().manual_seed(0))
    report: dict[str, Any] = {
        "folded": folded,
        "not_folded": batch_norm_names(folded_model),
        "max_abs_diff": max_abs_diff(model, folded_model, x),
    }
    report["summary"] = fold_summary(report)
    if latency and folded:  # nothing folded: the same model twice, nothing to time
        report["latency_ms"] = latency_ms(
            {"before": model, "after": folded_model}, input_shape, repeats=repeats
        )
    return folded_model, report


def fold_summary(report: dict[str, Any]) -> str:
    """One line on what a fold did: how many batch norms it folded, or plainly none."""
    folded, left = report["folded"], report["not_folded"]
    if not folded and not left:
        return "fold_batch_norm: the model has no batch norm; nothing folded"
    rest = f"{len(left)} left as they are ({', '.join(left)})" if left else "none left"
    if not folded:
        return (
            f"fold_batch_norm: no batch norm follows a conv/linear directly; nothing folded, {rest}"
        )
    return (
        f"fold_batch_norm: folded {len(folded)} batch norm(s) into the conv/linear before "
        f"them ({', '.join(folded)}), max abs output difference {report['max_abs_diff']:.2g}; "
        f"{rest}"
    )


# ---- metadata ------------------------------------------------------------------------------


def resize_method(spec: Spec) -> str:
    """How prepare resized this spec's images, so predict resizes new ones the same way: PIL's
    bilinear for image folders (decoded by PIL), torch's antialiased bilinear otherwise."""
    return "pil_bilinear" if spec.data.dataset == "image_folder" else "torch_bilinear_antialias"


def metadata(spec: Spec, model: nn.Module, prepared_meta: dict[str, Any]) -> dict[str, Any]:
    """What predict needs beside the images, from the spec and the prepared data's meta."""
    c, h, w = prepared_meta["image_shape"]
    norm = prepared_meta["normalization"]
    return {
        "format": METADATA_FORMAT,
        "name": spec.name,
        "classes": list(prepared_meta["classes"]),
        "image_shape": [c, h, w],
        "color_mode": "grayscale" if c == 1 else "rgb",
        "resize": resize_method(spec),
        "mean": list(norm["mean"]),
        "std": list(norm["std"]),
        "normalization": "(x / 255 - mean) / std, per channel",
        "output_activation": getattr(model, "output_activation", None),
        "input_name": INPUT_NAME,
        "output": "logits",
    } | ({"threshold": spec.evaluate.threshold} if spec.data.multi_label else {})


# ---- export --------------------------------------------------------------------------------


def _trace(model: nn.Module, shape: Sequence[int]) -> torch.jit.ScriptModule:
    gen = torch.Generator().manual_seed(0)
    example = torch.randn((2, *shape), generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape arithmetic in pads
        # TorchScript is deprecated upstream but still the one self-contained torch format
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    # A traced graph can freeze the batch size (a reshape by x.shape[0]): check another size.
    check = torch.randn((3, *shape), generator=gen)
    with torch.inference_mode():
        diff = float((traced(check) - model(check)).abs().max())
    if not diff < 1e-4:
        raise ExportError(
            f"the traced model differs from the model by {diff:.3g} on a batch of "
            "3: it does not trace (data-dependent control flow?)"
        )
    return traced


def _torchscript(model: nn.Module, shape: Sequence[int], path: Path, meta_json: str) -> None:
    traced = _trace(model, shape)
    with warnings.catch_warnings(), replacing(path) as tmp:
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(tmp), _extra_files={METADATA_KEY: meta_json})
        digest = export_trust.sha256(tmp.read_bytes())
    # Ours: predict loads it without --trust while the runs folder keeps this record.
    export_trust.record(path, digest, name=json.loads(meta_json)["name"])


def _onnx(model: nn.Module, shape: Sequence[int], path: Path, meta_json: str) -> None:
    try:
        import onnx
    except ImportError as err:
        raise ExportError(
            "ONNX export needs the onnx package, a dependency of the pipeline: pip install onnx "
            "(or pass --format torchscript)"
        ) from err
    example = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), replacing(path) as tmp:
        # The TorchScript-based exporter: the dynamo one needs onnxscript, and this one handles
        # every layer the builders make; its deprecation notice is not the user's concern.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta_json
        onnx.save(proto, str(tmp))


def export(
    spec: Spec,
    model: nn.Module,
    out_dir: str | Path,
    formats: Iterable[str],
    *,
    fold: bool = False,
    prepared_meta: dict[str, Any] | None = None,
    latency: bool = True,
    repeats: int = 30,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write the eval-mode model (batch norm folded first when ``fold``) in each of
    ``formats`` ('torchscript' -> ``<name>.pt``, 'onnx' -> ``<name>.onnx``) under ``out_dir``,
    with the metadata inside, and ``export.json`` (metadata plus the fold report: folded and
    remaining batch norms, max abs difference, CPU latency before/after). Returns format ->
    path, and 'metadata' -> export.json. ``prepared_meta``: the prepared data's meta (by
    default ``prepare(spec).meta``, a no-op when prepared already); ``log``: where to say what
    the fold did. Each TorchScript file's sha256 goes into the runs folder's manifest."""
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(
            f"unknown export format(s) {', '.join(unknown)} (valid: {', '.join(FORMATS)})"
        )
    if prepared_meta is None:
        from pipeline.data.prepare import prepare

        prepared_meta = prepare(spec).meta
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    shape = list(prepared_meta["image_shape"])
    report: dict[str, Any] | None = None
    if fold:
        model, report = fold_report(model, shape, latency=latency, repeats=repeats)
        if log is not None:
            log(report["summary"])
    meta = metadata(spec, model, prepared_meta) | {
        "batch_norm_folded": report["folded"] if report else []
    }
    meta_json = json.dumps(meta, sort_keys=True)
    paths: dict[str, Path] = {}
    writers = {"torchscript": _torchscript, "onnx": _onnx}
    for fmt in formats:
        path = out / f"{spec.name}{SUFFIXES[fmt]}"
        writers[fmt](model, shape, path, meta_json)
        paths[fmt] = path
    summary = {"metadata": meta, "fold": report, "files": {f: p.name for f, p in paths.items()}}
    paths["metadata"] = out / "export.json"
    write_text(paths["metadata"], json.dumps(summary, indent=2) + "\n")
    return paths


def export_run(
    spec: Spec,
    formats: Iterable[str],
    *,
    fold: bool = False,
    out_dir: str | Path | None = None,
    checkpoint: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Export a trained run: its ``checkpoint`` (best, last or swa; by default the one
    ``evaluate.checkpoint`` names, the weights evaluate measured) into the run's ``export/``
    folder (or ``out_dir``). What ``pipeline export`` calls."""
    from pipeline.data.prepare import prepare
    from pipeline.train.checkpoint import load_trained

    model, _ = load_trained(spec, checkpoint or spec.evaluate.checkpoint)
    out = out_dir or Run.of(spec).export
    return export(spec, model, out, formats, fold=fold, prepared_meta=prepare(spec).meta, log=log)
