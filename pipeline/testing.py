"""Check your own specs from your own test suite.

In any pytest file of your repository::

    from pipeline.testing import spec_tests

    test_specs = spec_tests("specs/**/*.yaml")

Each spec becomes one test; a failing spec's message lists every located problem.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.spec.errors import SpecError


def check_spec(path: str | Path, overrides: Sequence[str] = (), *, strict: bool = False) -> None:
    """Raise AssertionError listing every problem if the spec does not validate (``strict``:
    warnings count too)."""
    from pipeline.spec.load import load_spec

    try:
        spec = load_spec(path, overrides)
    except SpecError as err:
        raise AssertionError(err.format()) from None
    if strict and spec.warnings:
        raise AssertionError("\n".join(p.format() for p in spec.warnings))


def spec_tests(pattern: str, *, strict: bool = False, root: str | Path = ".") -> Callable:
    """A pytest test function parametrized over the spec files matching ``pattern``."""
    import pytest

    files = sorted(glob.glob(str(Path(root) / pattern), recursive=True))
    if not files:
        raise FileNotFoundError(f"no spec files match {pattern!r} under {Path(root).resolve()}")

    @pytest.mark.parametrize("spec_file", files, ids=[Path(f).name for f in files])
    def test_spec(spec_file: str) -> None:
        check_spec(spec_file, strict=strict)

    return test_spec
