"""Process set-up that makes training fast and reproducible without the user knowing about it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
from typing import Any

import torch

from pipeline.errors import ConfigurationError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Stop glibc from mmap/munmap-ing every step's activations (about 11 MB per MNIST batch).

    It alone made CPU training 1.5-1.75x faster (benchmarks/README.md, "The allocator
    setting"). Allocations are served from the heap whatever their size (``M_MMAP_MAX`` 0;
    raising ``M_MMAP_THRESHOLD`` stops at glibc's 32 MiB ceiling, which batch-512 inference
    exceeds: 9.7k -> 15.8k img/s), and freed memory is kept for the next step rather than
    trimmed. ``PIPELINE_NO_MALLOPT=1`` leaves the allocator alone."""
    if os.environ.get("PIPELINE_NO_MALLOPT"):
        return False
    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1)
    except (OSError, AttributeError):
        return False
    return bool(ok)


def memory_format(model: torch.nn.Module, setting: str | bool) -> torch.memory_format | None:
    """channels_last for models with convolutions (``auto`` or True), else None (unchanged)."""
    convs = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return torch.channels_last if convs and setting in (True, "auto") else None


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 runs natively here: CUDA with bf16, or a CPU with AVX-512 BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def cpu_bf16_fast() -> bool:
    """Whether bf16 training beats fp32 clearly on this CPU: it has AMX tiles (Intel Xeon
    Sapphire Rapids and later) as well as native bf16. AVX-512 BF16 alone (AMD EPYC Zen 4) was
    only 1.13x fp32 for the default spec (benchmarks/README.md, "bf16 training on CPU"): there
    ``train.precision: auto`` stays fp32 (``bf16`` still asks for it)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx is not None and amx()) and bf16_supported(torch.device("cpu"))


def inference_autocast(precision: str, device: torch.device) -> tuple[Any, str]:
    """An autocast context for inference in ``precision`` and the precision really used:
    bf16 falls back to fp32 (reported) where this device has no native bf16, where it would
    be slower than fp32."""
    import contextlib

    if precision == "bf16" and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16), "bf16"
    return contextlib.nullcontext(), "fp32"


def pick_device(requested: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; an explicit device that is missing is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            f"device {requested!r} was asked for but CUDA is not available here; use device: auto"
        )
    return device


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python and torch (CPU and CUDA); data order and augmentation seed their own
    generators per epoch."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the spec's training precision on this device (None: full fp32).

    CPU: ``bf16`` where the CPU has native bf16 (AVX-512 BF16 or AMX), else fp32 (emulated
    bf16 is slower than fp32); ``auto`` bf16 where :func:`cpu_bf16_fast`; fp16 trains in fp32
    (no fast fp16 on CPUs). CUDA: ``auto`` is bf16 where supported, else fp16 (with a
    gradient scaler). What ran is recorded (train.json ``precision``)."""
    if precision == "fp32":
        return None
    if device.type == "cpu":
        if precision == "bf16" and bf16_supported(device):
            return torch.bfloat16
        return torch.bfloat16 if precision == "auto" and cpu_bf16_fast() else None
    if device.type != "cuda":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """What a run records for its autocast dtype: bf16, fp16 or fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # type: ignore[arg-type]


def describe_device(device: torch.device) -> dict[str, Any]:
    """The device a run uses, for its record: the GPU's name, or the CPU model and threads."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(index),
            "index": index,
            "cuda": torch.version.cuda,
        }
    return {"type": device.type, "name": cpu_model(), "threads": torch.get_num_threads()}


def cpu_model() -> str:
    """The CPU's marketing name where Linux says it (``/proc/cpuinfo``), else the platform's."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
