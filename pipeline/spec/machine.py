"""How much memory training has here, found out without importing torch (validate runs the
checks that need it in a fraction of a second): RAM, less a cgroup's limit, for the CPU; a
GPU's own memory, as ``nvidia-smi`` reports it, for CUDA."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Memory:
    bytes: int
    what: str
    """What it is, for messages: ``RAM``, ``RAM (cgroup limit)``, ``memory on cuda:0``."""


def cgroup_limit(root: Path = CGROUP) -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max``, v1
    ``memory/memory.limit_in_bytes``), or None when there is none."""
    for file in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = file.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "none"
            return int(text)
        return None
    return None


def ram() -> Memory | None:
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    limit = cgroup_limit()
    if limit is not None and limit < physical:
        return Memory(limit, "RAM (cgroup limit)")
    return Memory(physical, "RAM")


def gpu_memory(smi: str, device: str, visible: str | None) -> int | None:
    """Bytes of the GPU ``device`` (cuda, cuda:N) names, from ``nvidia-smi
    --query-gpu=index,uuid,memory.total --format=csv,noheader,nounits`` output, N counting the
    ``CUDA_VISIBLE_DEVICES`` as torch does; None when that does not say (a MIG slice)."""
    gpus = []
    for line in smi.strip().splitlines():
        index, uuid, mib = (cell.strip() for cell in line.split(","))
        gpus.append((index, uuid, int(mib) << 20))
    n = int(device.partition(":")[2] or 0)
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        if n >= len(wanted):
            return None
        ref = wanted[n]
        found = [
            m for i, u, m in gpus if ref == i or (ref.startswith("GPU-") and u.startswith(ref))
        ]
        return found[0] if found else None
    return gpus[n][2] if n < len(gpus) else None


@functools.cache
def _nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = ["--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run([exe, *query], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 and done.stdout.strip() else None


@functools.cache
def memory_for(device: str) -> Memory | None:
    """The memory training on ``device`` (the spec's ``train.device``) would use: auto takes
    a CUDA GPU where nvidia-smi lists one (as training picks cuda when present), else RAM.
    None when it cannot be told (a GPU without nvidia-smi, a MIG slice)."""
    smi = _nvidia_smi()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device == "auto":
        if smi is None and Path("/dev/nvidiactl").exists():
            return None  # a GPU, but nothing here says how large
        hidden = visible is not None and visible.strip() in ("", "-1")
        device = "cuda" if smi is not None and not hidden else "cpu"
    if device.startswith("cuda"):
        if smi is None:
            return None
        found = gpu_memory(smi, device, visible)
        return Memory(found, f"memory on {device}") if found is not None else None
    return ram()  # cpu, and mps (unified memory)
