"""The README stays short and true: its size, its links, the paths and commands it names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_a_ten_minute_read():
    assert len(README.encode()) < 20_000


def test_every_relative_link_and_named_path_exists():
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
    paths = re.findall(r"`((?:pipeline|tests|benchmarks|specs|docs)/[\w./-]*)`", README)
    assert links and paths
    missing = sorted({p for p in links + paths if not (ROOT / p).exists()})
    assert not missing, f"README names paths that do not exist: {missing}"


def test_every_pipeline_command_in_the_readme_exists():
    code = "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.S))
    named = set(re.findall(r"^pipeline ([a-z-]+)", code, flags=re.M))
    named |= {"lr-find", "schedule-preview", "diagnose", "augment-preview"}
    assert len(named) > 10
    for command in sorted(named):
        help_text = subprocess.run(
            [sys.executable, "-m", "pipeline", command, "--help"], capture_output=True, text=True
        )
        assert help_text.returncode == 0, f"README names `pipeline {command}`: {help_text.stderr}"
