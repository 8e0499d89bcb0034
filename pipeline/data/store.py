"""The prepared folder on disk: whose it is, whether it is complete, how a new one replaces it.

``prepare`` writes into a temp folder beside the target (``.tmp-<name>-<pid>-<hex>``), the
marker file :data:`MARKER` first, and renames it into place when done. So a folder holding the
marker (or, written before the marker existed, a ``meta.json`` of the prepared layout) is
prepare's own and may be replaced; any other non-empty folder is someone's, and prepare refuses
it by name, touching nothing. Nor does it delete files of someone's found in a folder of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.data.raw import DataError
from pipeline.proc import pid_alive

FORMAT = 2  # bump when the same data section would produce different arrays
MARKER = "pipeline-prepared.txt"
MARKER_TEXT = (
    "This folder was written by `pipeline prepare`, which replaces it when the data section\n"
    "changes (or with --force). Keep no files of your own here: prepare will not replace a\n"
    "folder holding files it did not write.\n"
)
SPLITS = ("train", "val", "test")
OWN_FILES = frozenset({MARKER, "meta.json", *(f"{s}_{a}.npy" for s in SPLITS for a in "xy")})
"""Every name prepare writes into a prepared folder."""


def _is_ours(folder: Path, names: list[str]) -> bool:
    """Positive evidence that prepare wrote ``folder``: the marker, or (a folder prepared before
    the marker existed) a meta.json with the prepared layout's keys."""
    if MARKER in names:
        return True
    if "meta.json" not in names:
        return False
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"format", "key", "files", "counts"} <= meta.keys()


def check_replaceable(target: Path) -> None:
    """Return when prepare may write ``target``: it is not there, is empty, or is a folder of
    prepare's own holding nothing else. Otherwise a DataError naming it (and what is in the
    way), before anything is read or written."""
    try:
        if not target.exists():
            return
        if not target.is_dir():
            raise DataError(
                f"{target} is a file, not a folder: prepare writes a folder there and will not "
                "replace the file; choose another --out"
            )
        names = sorted(p.name for p in target.iterdir())
    except OSError as err:
        raise DataError(
            f"cannot read {target} ({err.strerror or err}): prepare will not replace a folder "
            "it cannot see into; choose another --out"
        ) from err
    if not names:
        return
    if not _is_ours(target, names):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise DataError(
            f"{target} is not a prepared data folder (no {MARKER}; it holds {shown}): prepare "
            "will not replace it; choose another --out, or empty it"
        )
    foreign = [n for n in names if n not in OWN_FILES]
    if foreign:
        raise DataError(
            f"{target} is a prepared data folder but also holds {', '.join(foreign)}, which "
            "prepare did not write and will not delete: move them out, then prepare again"
        )


def complete(root: Path, key: str, fingerprints: dict[str, str]) -> bool:
    """``root`` holds the data of ``key``, every file it lists at its size, and was prepared
    from image folders whose listing has not changed since."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
        return False
    if any(meta["checksums"].get(p) != f for p, f in fingerprints.items()):
        return False
    files = meta.get("files", {})
    return bool(files) and all(
        (root / name).is_file() and (root / name).stat().st_size == size
        for name, size in files.items()
    )


def new_temp(target: Path) -> Path:
    """A fresh temp folder beside ``target``, holding the marker; stale ones of killed prepares
    are removed first."""
    with writing(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir()
        (tmp / MARKER).write_text(MARKER_TEXT)
    return tmp


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """An OSError while writing (no permission, a full disk) as a DataError naming ``folder``."""
    try:
        yield
    except OSError as err:
        where = err.filename or folder
        raise DataError(
            f"cannot write the prepared data in {folder} ({where}: {err.strerror or err})"
        ) from err


def install(
    tmp: Path, target: Path, key: str, fingerprints: dict[str, str], *, replace: bool = False
) -> None:
    """Move ``tmp`` to ``target``. A complete ``target`` found there (a concurrent prepare got
    there first) is kept, unless ``replace`` (``force``: the user asked for a fresh copy); any
    other is replaced only if it is still prepare's own."""
    try:
        os.replace(tmp, target)  # atomic; fails if a non-empty target is there
        return
    except OSError:
        pass
    if not replace and complete(target, key, fingerprints):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    check_replaceable(target)  # again: something may have been put there meanwhile
    old = target.parent / f".old-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(target: Path) -> None:
    """Temp and replaced folders of prepares that were killed (their process is gone), when
    they are prepare's own: empty (killed before the marker) or holding the marker."""
    for prefix in (f".tmp-{target.name}-", f".old-{target.name}-"):
        for path in target.parent.glob(prefix + "*"):
            pid = path.name.removeprefix(prefix).split("-")[0]
            if not (pid.isdigit() and path.is_dir()) or pid_alive(int(pid)):
                continue
            names = [p.name for p in path.iterdir()]
            if not names:
                path.rmdir()
            elif _is_ours(path, names):
                shutil.rmtree(path, ignore_errors=True)
