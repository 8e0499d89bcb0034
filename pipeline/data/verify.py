"""Raw files checked against published md5s, with the digests cached as stamps."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.data.raw import DataError, cache_dir


class Stamps:
    """md5s already computed, keyed by path + size + mtime, so a second prepare does not re-hash
    ~50 MB of raw files. A changed file has a new key and is hashed again."""

    def __init__(self) -> None:
        self.path = cache_dir() / "verified.json"
        try:
            self.known: dict[str, str] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.dirty = False

    def digest(self, path: Path, kind: str = "md5") -> str:
        st = path.stat()
        key = f"{kind}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.known:
            self.known[key] = md5(path, gzip.open if kind == "gunzip-md5" else open)
            self.dirty = True
        return self.known[key]

    def save(self) -> None:
        if not self.dirty:
            return

        def current(key: str) -> bool:  # forget files since changed or deleted
            path, size, mtime = key.split("|", 1)[1].rsplit("|", 2)
            try:
                st = os.stat(path)
            except OSError:
                return False
            return (st.st_size, st.st_mtime_ns) == (int(size), int(mtime))

        self.known = {k: v for k, v in self.known.items() if current(k)}
        with contextlib.suppress(OSError):  # a read-only cache only costs re-hashing later
            atomic.write_text(self.path, json.dumps(self.known, indent=0, sort_keys=True))


def md5(path: Path, opener: Callable[..., Any] = open) -> str:
    """The md5 of a file's bytes (``opener=gzip.open``: of its uncompressed bytes)."""
    h = hashlib.md5(usedforsecurity=False)
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path} ({err}): replace it with a good copy") from err
    return h.hexdigest()


def check_md5(path: Path, expected: str, stamps: Stamps, what: str) -> str:
    """The file's md5, or a DataError naming it when it is missing or differs from ``expected``."""
    if not path.is_file():
        raise DataError(f"{path} is missing: expected {what} there (md5 {expected})")
    actual = stamps.digest(path)
    if actual != expected:
        raise DataError(
            f"checksum mismatch for {path}: expected md5 {expected} (torchvision's published "
            f"value), got {actual}; the file is partial or corrupt: replace it with a good copy"
        )
    return actual
