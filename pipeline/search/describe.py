"""A checked search in words (``pipeline search --check``): each parameter's distribution,
the budget, paths as the user would type them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.search import space as space_
from pipeline.search.schema import Choice, IntRange, Search


def shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def number_text(value: float) -> str:
    return space_.as_yaml(value)


def dist_text(dist: Any) -> str:
    if isinstance(dist, Choice):
        text = "choice of " + ", ".join(str(label) for label in space_.labels(dist))
    else:
        kind = "int" if isinstance(dist, IntRange) else "float"
        text = f"{kind} {number_text(dist.low)} to {number_text(dist.high)}"
        if dist.step is not None and not (isinstance(dist, IntRange) and dist.step == 1):
            text += f" in steps of {number_text(dist.step)}"
        if dist.log:
            text += ", log scale"
    if dist.when:
        text += " when " + ", ".join(f"{k} = {space_.as_yaml(v)}" for k, v in dist.when.items())
    return text


def duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size) * 10 == int((seconds / size) * 10):
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def budget_text(search: Search, grid_size: int | None) -> str:
    b = search.budget
    parts = []
    if b.trials is not None:
        parts.append(f"{b.trials} trials")
    elif grid_size is not None:
        parts.append(f"{grid_size} trials (the grid)")
    if b.timeout is not None:
        parts.append(f"no new trial after {duration_text(b.timeout)}")
    parts.append(f"{b.parallel} at a time")
    return ", ".join(parts)
