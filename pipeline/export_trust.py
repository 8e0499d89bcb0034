"""The record of the TorchScript files this project exported, so predict can tell them apart.

A TorchScript file is a program: ``torch.jit.load`` runs the scripted ``__setstate__`` of its
modules and every call runs their code, which can read and write files. So a ``.pt`` is loaded
only when its bytes are ours: ``pipeline export`` records the sha256 of each TorchScript file
it writes in ``<runs>/.exports/manifest.json`` (``<runs>``: ``$PIPELINE_RUNS_DIR``, else
``runs``, as for run folders), and loading checks the file's sha256 against it. A hash file
shipped beside a ``.pt`` proves nothing (whoever made the file made that too); the runs folder
is the project's own. The same bytes copied elsewhere stay ours; one changed byte does not.

No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.errors import PipelineError
from pipeline.run import runs_root

MANIFEST_FORMAT = 1
FOLDER = ".exports"  # beside the run folders; a spec's name cannot start with a dot


class ManifestError(PipelineError):
    """The manifest of exports cannot be read (not JSON, not ours)."""


def manifest_path() -> Path:
    """``<runs>/.exports/manifest.json``, in the runs folder that the run folders are in."""
    return runs_root() / FOLDER / "manifest.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "files": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ManifestError(
            f"cannot read the manifest of exports {path} ({err}): move it away and export again"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ManifestError(
            f"{path} is not a manifest of exports (no 'files' object): move it away and "
            "export again"
        )
    return data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two exports at once (parallel flows) must not drop each other's entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; a lost entry only asks for --trust
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record(file: Path, digest: str, *, name: str) -> Path:
    """Record ``digest`` (the sha256 of the TorchScript ``file`` just written for the spec
    ``name``) in the manifest; returns the manifest's path."""
    path = manifest_path()
    with _locked(path):
        data = _read(path)
        data["files"][digest] = {
            "file": str(Path(file).resolve()),
            "spec": name,
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def is_recorded(digest: str) -> bool:
    """Whether this project's runs folder records exporting a file of this sha256."""
    return digest in _read(manifest_path())["files"]
