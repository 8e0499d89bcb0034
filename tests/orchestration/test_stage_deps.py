"""dvc.yaml's code deps against what each stage's command can import (tests/orchestration/
stage_deps.py reads it from the code): none missing, none that does not exist."""

from __future__ import annotations

from pathlib import Path

from tests.orchestration.stage_deps import Package, Reach, flow_edges, problems, stage_roots

ROOT = Path(__file__).resolve().parents[2]


def _reached(cmd: str) -> set[str]:
    return set(Reach(Package(ROOT), stage_roots(cmd), flow_edges()).files())


def test_every_stage_of_dvc_yaml_lists_the_code_its_command_can_import():
    assert problems(ROOT / "dvc.yaml", ROOT) == []


def test_a_dep_left_out_is_named_with_its_stage_and_the_module_file(tmp_path: Path):
    doctored = tmp_path / "dvc.yaml"
    text = (ROOT / "dvc.yaml").read_text()
    line = "        - pipeline/export.py"
    assert text.count(line) == 1
    doctored.write_text("".join(t for t in text.splitlines(True) if not t.startswith(line)))
    found = problems(doctored, ROOT)
    assert found == [
        "stage 'evaluate': its code imports pipeline/export.py (reached from "
        "pipeline.evaluate:*), which no dep of the stage covers"
    ]


def test_a_code_dep_that_does_not_exist_fails(tmp_path: Path):
    doctored = tmp_path / "dvc.yaml"
    text = (ROOT / "dvc.yaml").read_text()
    doctored.write_text(text.replace("- pipeline/flows.py", "- pipeline/orchestrate.py", 1))
    found = problems(doctored, ROOT)
    assert "stage 'prepare': the code dep pipeline/orchestrate.py does not exist" in found
    assert any(f.startswith("stage 'prepare': its code imports pipeline/flows.py") for f in found)


def test_a_stage_s_code_is_its_own_not_every_stage_s():
    prepare = _reached("pipeline prepare specs/x.yaml --out data/prepared/x")
    train = _reached("pipeline train specs/x.yaml --data data/prepared/x")
    evaluate = _reached("pipeline evaluate specs/x.yaml --data data/prepared/x")
    # a change to evaluate's code re-runs evaluate, not training; training's not prepare
    assert {"pipeline/evaluate.py", "pipeline/export.py"} <= evaluate - train
    assert "pipeline/flows.py" in prepare and "pipeline/train/loop.py" in train - prepare
    assert not {f for f in prepare if f.startswith(("pipeline/model/", "pipeline/train/"))}
    validate = _reached("pipeline validate specs/x.yaml")
    assert "pipeline/flows.py" not in validate and "pipeline/spec/load.py" in validate


def test_the_analysis_follows_imports_in_functions_and_skips_type_checking_blocks(tmp_path):
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "stages.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pipeline import typing_only\n"
            "def one():\n    from pipeline.lib import run\n    return run()\n"
            "def two():\n    from pipeline import other\n"
        ),
        "lib.py": "def run():\n    from pipeline.deep import x\n",
        "deep.py": "x = 1\n",
        "other.py": "",
        "typing_only.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    reached = Reach(Package(tmp_path), [("pipeline.stages", "one")]).files()
    assert sorted(reached) == [
        "pipeline/__init__.py",
        "pipeline/deep.py",
        "pipeline/lib.py",
        "pipeline/stages.py",
    ]
