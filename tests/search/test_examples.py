"""The example searches in searches/ load with no error and no warning, and say what they do."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.search.load import load_search
from pipeline.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "searches").glob("*.yaml"))


def test_there_are_the_three_examples_the_readme_names():
    assert {p.stem for p in EXAMPLES} >= {"mnist_importance", "mnist_grid", "mnist_pareto"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_an_example_search_loads_cleanly(path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    loaded = load_search(path)
    assert loaded.warnings == [], [w.format() for w in loaded.warnings]
    assert loaded.base_file.is_file() and loaded.name == path.stem
    text = loaded.describe()
    for key in loaded.search.space:
        assert key in text


def test_the_grid_example_is_four_combinations(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    assert load_search(ROOT / "searches" / "mnist_grid.yaml").grid_size == 4


def test_a_search_file_error_says_it_is_in_the_search_file(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "s.yaml").write_text("base: missing.yaml\nspace: {}\n")
    with pytest.raises(SpecError) as err:
        load_search(tmp_path / "s.yaml")
    assert str(err.value).startswith("3 errors in search file")  # base, space, budget
