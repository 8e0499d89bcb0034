"""Atomic file writes: a temp file in the same folder, then ``os.replace``.

A reader (a DVC stage, a resumed run, a second process) sees the old file or the new one,
never half of one; a write that fails or is interrupted leaves no temp file behind, and one
killed outright (``kill -9``) leaves a temp whose name says so (:func:`is_temp`), for
:func:`remove_temps` to clear later. Every temp name is unique (``mkstemp``), so two writers of
one file never share one. A write that fails for want of space or permission is an
:class:`OutputError` naming the folder (and the free space), never a traceback. Every file the
pipeline writes for later goes through here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

from pipeline.errors import PipelineError

TEMP_MARK = ".tmp"
# .<name>.<8 random characters of mkstemp>.tmp<the name's own suffix>
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]*)?")
# the name before this version, without the mark: .<name>.<8 random characters><its suffix>
_LEGACY_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?")

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS}
_DENIED = {errno.EACCES, errno.EPERM}
_NAME = {errno.ENAMETOOLONG}


class OutputError(PipelineError):
    """A file or folder cannot be written: no space left, a read-only file system, no
    permission, a name the file system refuses."""


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n_unit = n / 1024 ** ("KMGT".index(unit[0]) + 1)
        if n_unit < 1024 or unit == "TiB":
            return f"{n_unit:.1f} {unit}"
    raise AssertionError  # pragma: no cover


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (where free space and mounts are asked)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: itself, or one it was raised from or during (torch wraps
    a failed write in a RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def output_error(err: BaseException, path: str | Path) -> OutputError | None:
    """One line for a failed write of ``path`` (a file or folder): what the file system said
    and what to do; None when ``err`` is not a write the file system refused (no space, read
    only, no permission, a name too long)."""
    os_err = _os_error(err)
    if os_err is None or os_err.errno not in _FULL | _READ_ONLY | _DENIED | _NAME:
        return None
    filename = os_err.filename
    named = Path(os.fsdecode(filename)) if isinstance(filename, str | bytes) else None
    path = named if named is not None and not is_temp(named) else Path(path)  # not our temp
    code = os_err.errno
    if code in _NAME:
        return OutputError(
            f"cannot write {path}: {os_err.strerror} (most file systems allow 255 bytes a "
            "name); choose a shorter name or folder"
        )
    folder = path if path.is_dir() else path.parent
    if code in _FULL:
        free = shutil.disk_usage(_existing(folder)).free
        return OutputError(
            f"no space left on the device writing {path}: {_size(free)} free in {folder}; "
            "free some space, or write elsewhere, and run again"
        )
    if code in _READ_ONLY:
        return OutputError(
            f"cannot write {path}: {_existing(folder)} is on a read-only file system; "
            "mount it writable, or write elsewhere"
        )
    return OutputError(  # _DENIED
        f"cannot write {path}: {_existing(folder)} is not writable (permission denied); "
        "fix its permissions, or write elsewhere"
    )


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write inside the block into an :class:`OutputError` about ``path``."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as err:
        failed = output_error(err, path)
        if failed is None:
            raise
        raise failed from err


def is_temp(path: Path, names: Collection[str] | None = None) -> bool:
    """Whether ``path`` is one of :func:`replacing`'s temps (of a file in ``names``, if
    given): a leftover where no write is under way."""
    m = _TEMP.fullmatch(path.name)
    if m is None and names is not None:  # an earlier version's temp of one of these files
        m = _LEGACY_TEMP.fullmatch(path.name)
    if m is None or (m["suffix"] or "") != Path(m["name"]).suffix:
        return False
    return names is None or m["name"] in names


def remove_temps(folder: Path, names: Collection[str]) -> list[Path]:
    """Remove the temps of the files ``names`` in ``folder`` (leftovers of writes killed
    outright): only call it where no one else can be writing them. The paths removed."""
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_temp(path, names):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; it replaces ``path`` when the block ends
    without an error, and is removed otherwise. For writers that want a path
    (``torch.save``, ``np.save``, ``savefig``)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{path.suffix}", dir=path.parent
        )
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)  # first: the space it took is free again
        failed = None if isinstance(err, PipelineError) else output_error(err, path)
        if failed is None:
            raise
        raise failed from err
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
