"""The registry of cross-field checks: ``@check(name)`` adds one, ``run_checks`` runs them all.

A check is a function of the validated spec yielding problems, its docstring the reason
``pipeline checks`` lists. Warnings can be silenced per spec with ``ignore_checks: [name]``;
errors cannot (they are what would fail, or run wrongly, later).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.spec.errors import Problem

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

CheckFn = Callable[["Spec"], Iterator[Problem]]


@dataclass(frozen=True)
class CheckInfo:
    name: str
    fn: CheckFn
    doc: str


CHECKS: dict[str, CheckInfo] = {}


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        CHECKS[name] = CheckInfo(name, fn, " ".join((fn.__doc__ or "").split()))
        return fn

    return register


def run_checks(spec: Spec) -> list[Problem]:
    """Every check's problems, named by the check, minus the warnings the spec silences."""
    out: list[Problem] = []
    for info in CHECKS.values():
        for problem in info.fn(spec):
            problem.code = info.name
            if problem.severity == "warning" and info.name in spec.ignore_checks:
                continue
            out.append(problem)
    return out


def warn(message: str, path: tuple, hint: str | None = None) -> Problem:
    return Problem(message, path, severity="warning", hint=hint)
