"""The command line: exit codes, report formats, no traceback, no torch on the validate path."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.spec.conftest import BASE

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_validate_ok_and_failing_specs(write):
    good, bad = write(BASE, "good.yaml"), write(BASE.replace("units", "unitz"), "bad.yaml")
    ok = run("validate", str(good))
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = run("validate", str(good), str(bad))
    assert failed.returncode == 1
    assert f"{bad}:7:21: error: model.layers[2].unitz" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_validate_json_and_junit_reports(write):
    bad = write(BASE.replace("units", "unitz"), "bad.yaml")
    report = json.loads(run("validate", "--format", "json", str(bad)).stdout)
    assert report[0]["ok"] is False and report[0]["problems"][0]["line"] == 7
    suite = ET.fromstring(run("validate", "--format", "junit", str(bad)).stdout)
    assert suite.get("failures") == "1" and suite.find("testcase/failure") is not None


def test_validate_resolved_prints_yaml_with_overrides(write):
    out = run("validate", "--resolved", str(write(BASE)), "-S", "train.epochs=2").stdout
    assert "epochs: 2" in out and "input_shape: [1, 28, 28]" in out


def test_validate_never_imports_torch(write):
    code = (
        "import sys; from pipeline.cli import main; "
        f"rc = main(['validate', {str(write(BASE))!r}]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bad_yaml_gets_a_located_error_not_a_traceback(write):
    path = write("name: x\nmodel:\n\tlayers: []\n")
    result = run("validate", str(path))
    assert result.returncode == 1 and f"{path}:3:" in result.stderr
    assert "spaces" in result.stderr and "Traceback" not in result.stderr


def test_schema_and_readme_reference_are_up_to_date():
    result = run("docs", "--check")
    assert result.returncode == 0, result.stderr
