"""Located problems in a spec, and the one exception type that carries them all."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pipeline.errors import PipelineError

Severity = Literal["error", "warning"]
PathPart = str | int


@dataclass(frozen=True, order=True)
class Mark:
    """A position in a source file; line and column are 1-based, as editors count."""

    file: str
    line: int
    column: int
    source: Sequence[str] | None = field(default=None, compare=False, repr=False)
    """The lines of the text this mark is in, as loaded: errors quote a spec's own text from
    here, never by reading a file again (which may have changed, or not be a spec)."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @property
    def text(self) -> str | None:
        """The source line of this mark, when its text is known."""
        if self.source is not None and 0 < self.line <= len(self.source):
            return self.source[self.line - 1]
        return None


def format_path(path: Sequence[PathPart]) -> str:
    """Render a key path the way a user writes it: ``model.layers[3].filters``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<top level>"


@dataclass
class Problem:
    """One thing wrong (or suspicious) in a spec, with where it is and what would be valid."""

    message: str
    path: tuple[PathPart, ...] = ()
    mark: Mark | None = None
    severity: Severity = "error"
    code: str = "invalid"
    hint: str | None = None
    source_line: str | None = field(default=None, compare=False)

    @property
    def where(self) -> str:
        return str(self.mark) if self.mark else "<spec>"

    def format(self, *, source: bool = True) -> str:
        """Compiler-style text: ``file:line:col: error: key.path: message``, then the hint."""
        text = f"{self.where}: {self.severity}: {format_path(self.path)}: {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        if source and self.source_line is not None and self.mark is not None:
            line, column = _window(self.source_line, self.mark.column)
            text += f"\n    | {line}\n    | {' ' * (column - 1)}^"
        return text

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.mark.file if self.mark else None,
            "line": self.mark.line if self.mark else None,
            "column": self.mark.column if self.mark else None,
            "path": format_path(self.path),
            "message": self.message,
            "hint": self.hint,
        }


_WIDTH = 100  # of a quoted source line: a long one is cut around the caret


def _window(line: str, column: int) -> tuple[str, int]:
    """``line`` cut to about :data:`_WIDTH` characters around ``column``, and the column in it."""
    if len(line) <= _WIDTH:
        return line, column
    start = max(0, min(column - 1 - _WIDTH // 2, len(line) - _WIDTH))
    cut = line[start : start + _WIDTH]
    head = "..." if start else ""
    tail = "..." if start + _WIDTH < len(line) else ""
    return head + cut + tail, column - start + len(head)


class SpecError(PipelineError):
    """Every located error of a spec (or several specs), reported together."""

    def __init__(self, problems: Iterable[Problem], *, subject: str = "spec"):
        self.problems = sorted(
            problems, key=lambda p: (p.mark or Mark("", 0, 0), format_path(p.path))
        )
        self.subject = subject
        """What the problems are in: ``spec``, ``search file``."""
        super().__init__(self.format())

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def report(self) -> str:
        return self.format()

    def format(self, *, source: bool = True) -> str:
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in {self.subject}"
        return head + "\n" + "\n".join(p.format(source=source) for p in self.problems)


def _folded(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def did_you_mean(given: str, choices: Iterable[str], synonyms: dict[str, str] | None = None) -> str:
    """A suggestion sentence for a misspelt or foreign name, or '' when nothing is close.

    Nearest first: the same name in other case (``Relu``: relu), another framework's name for
    it (``categorical_crossentropy``: cross_entropy), the same letters without separators
    (``MaxPool2D``: max_pool2d), then the closest spelling."""
    choices = sorted(set(choices))
    same_case = [c for c in choices if c.lower() == given.lower()]
    if same_case:
        return f"did you mean '{same_case[0]}'?"
    if synonyms:
        folded = {_folded(k): v for k, v in synonyms.items()}
        other = synonyms.get(given) or folded.get(_folded(given))
        if other in choices:
            return f"did you mean '{other}'? ('{given}' is what other frameworks call it)"
    by_letters = {_folded(c): c for c in choices}
    if _folded(given) and _folded(given) in by_letters:
        return f"did you mean '{by_letters[_folded(given)]}'?"
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(given.lower(), list(lowered), n=1, cutoff=0.6)
    return f"did you mean '{lowered[close[0]]}'?" if close else ""
