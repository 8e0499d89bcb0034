"""Atomic file writes: a temp file in the same folder, then ``os.replace``.

A reader (a DVC stage, a resumed run, a second process) sees the old file or the new one,
never half of one; a write that fails or is interrupted leaves no temp file behind. Every
file the pipeline writes for later goes through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; it replaces ``path`` when the block ends
    without an error, and is removed otherwise. For writers that want a path
    (``torch.save``, ``np.save``, ``savefig``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
