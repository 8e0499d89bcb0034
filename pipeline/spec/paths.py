"""Which files and folders a spec may name: the allowed roots, and the check of one path.

A spec is input, and it may come from someone else (a Prefect flow run takes an inline spec from
whoever starts it). Every path it names (``extends``, a reused spec and its checkpoint, image
folders, backbone weights files) must resolve inside an allowed root, or the spec is refused
before the target is read, so no error message can carry another file's text:

- the project folder: for a spec file, the nearest folder at or above it that holds
  ``dvc.yaml``, ``.dvc``, ``.git`` or ``pyproject.toml`` (else the file's own folder); for an
  inline spec, the same for the folder its relative paths are taken from (by default the
  current folder);
- the folders of ``PIPELINE_ALLOWED_PATHS`` (separated by ``os.pathsep``, ``:`` on Linux);
- the pipeline's own data folders when set: ``PIPELINE_DATA_MIRROR`` and
  ``PIPELINE_DATA_CACHE``.

Symlinks are resolved first, then ``..``, as the operating system does, so neither leads out.
``extends`` and ``reuse.spec`` must also name spec files (``.yaml``/``.yml``).

``data.mirror`` is not checked: the pipeline reads only a dataset's published file names
under it, each verified against its md5, so nothing else there can be read through it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.spec.errors import PathPart, Problem

ALLOWED_ENV = "PIPELINE_ALLOWED_PATHS"
SETTINGS_ENV = ("PIPELINE_DATA_MIRROR", "PIPELINE_DATA_CACHE")
"""The data folders the pipeline reads (``pipeline.data.raw``); a spec may name paths there."""
MARKERS = ("dvc.yaml", ".dvc", ".git", "pyproject.toml")
SPEC_SUFFIXES = (".yaml", ".yml")


def project_root(folder: str | Path) -> Path:
    """The nearest folder at or above ``folder`` holding a project marker; else ``folder``."""
    start = Path(os.path.realpath(folder))
    for candidate in (start, *start.parents):
        if any(os.path.exists(candidate / marker) for marker in MARKERS):
            return candidate
    return start


@dataclass(frozen=True)
class Roots:
    """The allowed roots of one load: the project folder first, then the configured ones."""

    project: Path
    extra: tuple[Path, ...] = ()

    @classmethod
    def for_folder(cls, folder: str | Path) -> Roots:
        """The roots of a spec whose relative paths are taken from ``folder``."""
        extra: list[Path] = []
        for name in (ALLOWED_ENV, *SETTINGS_ENV):
            for entry in (os.environ.get(name) or "").split(os.pathsep):
                if entry.strip():
                    extra.append(Path(os.path.realpath(Path(entry.strip()).expanduser())))
        project = project_root(folder)
        return cls(project, tuple(dict.fromkeys(p for p in extra if p != project)))

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.project, *self.extra)

    def contains(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.all)

    def problem(
        self, written: str, base: Path, path: tuple[PathPart, ...], *, spec_file: bool = False
    ) -> Problem | None:
        """None when ``written`` (relative to ``base``) is allowed, else the located-to-be
        problem at ``path``; checks the name only, never opens the target."""
        if "\0" in written:
            return Problem(f"{_short(written)} is not a path (it holds a NUL)", path, code="path")
        not_spec = check_spec_file(written, path) if spec_file else None
        if not_spec is not None:
            return not_spec
        target = Path(os.path.realpath(base / written))  # as Spec.path_of resolves it
        if self.contains(target):
            return None
        lexical = Path(os.path.normpath(base / written))
        how = " (after following symlinks)" if self.contains(lexical) else ""
        return Problem(
            f"{_short(written)} is outside the folders a spec may name{how}; allowed: "
            + ", ".join(str(r) for r in self.all),
            path,
            code="path-outside",
            hint=f"move it into the project folder {self.project}, or add its folder to "
            f"{ALLOWED_ENV} (several separated by {os.pathsep!r})",
        )


def _short(text: str) -> str:
    return repr(text) if len(text) <= 200 else repr(text[:197] + "...")


def spec_paths(spec: Any) -> Iterator[tuple[tuple[PathPart, ...], str, bool]]:
    """(key path, path as written, names a spec file) for every path field of a validated spec:
    what the pipeline will open (``extends`` is checked as it is read, before this)."""
    from pipeline.spec.composite import Backbone, Reuse, WeightsFile
    from pipeline.spec.shapes import named_layers

    data = spec.data
    for key in ("path", "test_path", "labels_file", "test_labels_file"):
        if getattr(data, key):
            yield ("data", key), getattr(data, key), False
    if data.validation is not None and data.validation.path:
        yield ("data", "validation", "path"), data.validation.path, False
    for where, _, layer in named_layers(spec.model.layers):
        at = ("model", "layers", *where)
        if isinstance(layer, Reuse):
            yield (*at, "spec"), layer.spec, True
            if layer.checkpoint:
                yield (*at, "checkpoint"), layer.checkpoint, False
        elif isinstance(layer, Backbone) and isinstance(layer.weights, WeightsFile):
            yield (*at, "weights", "path"), layer.weights.path, False


def path_problems(spec: Any, roots: Roots, base: Path) -> list[Problem]:
    """A problem for each path field of ``spec`` outside ``roots`` (or not a spec file)."""
    out = []
    for path, written, spec_file in spec_paths(spec):
        problem = roots.problem(written, base, path, spec_file=spec_file)
        if problem is not None:
            out.append(problem)
    return out


def check_spec_file(written: str | Path, what: Sequence[PathPart] = ()) -> Problem | None:
    """A problem when ``written`` does not name a spec file by its suffix."""
    if Path(written).suffix.lower() in SPEC_SUFFIXES:
        return None
    return Problem(
        f"{_short(str(written))} is not a spec file (a spec file's name ends in .yaml or .yml)",
        tuple(what),
        code="path-not-spec",
    )
