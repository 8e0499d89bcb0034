"""Process set-up: the allocator setting, memory format, inference precision."""

from __future__ import annotations

import subprocess
import sys

import torch

from pipeline import runtime

# A child process: mallopt is process-wide, and the test must see glibc's own accounting.
_MMAPPED = """
import ctypes, torch
from pipeline import runtime
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                                 "fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
tuned = runtime.tune_allocator() if {tune} else False
before = libc.mallinfo2().hblkhd
big = torch.empty(64 * 1024 * 1024, dtype=torch.uint8)  # above glibc's 32 MiB mmap ceiling
print(tuned, libc.mallinfo2().hblkhd - before)
"""


def _mmapped(tune: bool) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _MMAPPED.format(tune=tune)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0], int(out[1])


def test_tuned_allocator_serves_even_large_tensors_from_the_heap() -> None:
    tuned, grown = _mmapped(False)
    assert tuned == "False" and grown >= 64 * 1024 * 1024  # glibc's default: mmap'd, unmapped
    assert _mmapped(True) == ("True", 0)  # tuned: from the heap, kept for the next step


def test_memory_format_is_channels_last_for_conv_nets_only() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert runtime.memory_format(conv, "auto") is torch.channels_last
    assert runtime.memory_format(conv, False) is None
    assert runtime.memory_format(mlp, True) is None


def test_inference_autocast_falls_back_to_fp32_without_native_bf16() -> None:
    cpu = torch.device("cpu")
    _, used = runtime.inference_autocast("bf16", cpu)
    assert used == ("bf16" if runtime.bf16_supported(cpu) else "fp32")
    _, used = runtime.inference_autocast("fp32", cpu)
    assert used == "fp32"
