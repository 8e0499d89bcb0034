import textwrap
from pathlib import Path

import pytest

from pipeline.spec import SpecError, load_spec

BASE = """\
name: t
data: {dataset: mnist, validation: {fraction: 0.1}}
model:
  layers:
    - {type: conv2d, filters: 8, kernel_size: 3, activation: relu}
    - {type: flatten}
    - {type: dense, units: 10}
"""


@pytest.fixture
def write(tmp_path: Path):
    """Write a spec file (dedented) and return its path."""

    def _write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write


@pytest.fixture
def problems(write):
    """Load a spec text expected to fail; return its SpecError's problems."""

    def _problems(text: str, overrides=()) -> list:
        path = write(text)
        with pytest.raises(SpecError) as err:
            load_spec(path, overrides)
        return err.value.problems

    return _problems
