"""Process set-up that makes training fast and reproducible without the user knowing about it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
from typing import Any

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD


def tune_allocator() -> bool:
    """Stop glibc from mmap/munmap-ing every step's activations (about 11 MB per MNIST batch).

    Measured here: 1.5-2.6x faster CPU training (shared/docs/performance.md). Batches whose
    activations exceed 32 MiB need MALLOC_MMAP_THRESHOLD_ in the environment (or jemalloc)."""
    if os.environ.get("PIPELINE_NO_MALLOPT"):
        return False
    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, -1)
    except (OSError, AttributeError):
        return False
    return bool(ok)


def pick_device(requested: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; an explicit device that is missing is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available here; "
                           "use device: auto")
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
    """The autocast dtype for the spec's precision on this device (None: full fp32)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def environment() -> dict[str, Any]:
    """What a run ran on, recorded with its metrics."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
