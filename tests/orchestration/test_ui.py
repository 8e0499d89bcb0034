"""The Prefect UI that `make run` points to, for real: a `dvc repro` of a tiny spec in a git + DVC
repository (its stages start the pipeline's local server on a free port and run as flow runs on
it), then the server's UI settings and its runs page in a headless Chromium.

The browser is Debian's Chromium (`make test` installs it when missing, as root with apt-get).
Without one the page test skips, except under CI, where it fails."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.orchestrate.server import healthy
from tests.conftest import MIRROR
from tests.orchestration.test_dvc import BIN, TINY, _require_mirror, tiny_project
from tests.orchestration.test_orchestrate import _env

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLOWS = ("prepare", "train", "evaluate")  # dvc.yaml's stages that run as flow runs


@dataclass
class Served:
    url: str  # the server's API, .../api
    home: Path  # PIPELINE_HOME
    tmp: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`dvc repro` (as `make run` runs it, orchestration mode auto) of a tiny spec in a fresh
    git + DVC repository; the server its first stage started is stopped at the end."""
    _require_mirror()
    tmp = tmp_path_factory.mktemp("ui")
    root = tmp / "repo"
    root.mkdir()
    env = _env(tmp, MIRROR)
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site"),
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    for name in ("DVC_ROOT", "DVC_EXP_BASELINE_REV", "DVC_EXP_NAME", "PIPELINE_RUNS_DIR"):
        env.pop(name, None)

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=root, env=env, text=True, capture_output=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    run("git", "init", "-q")
    tiny_project(root, run)
    (root / "specs" / "tiny.yaml").write_text(
        TINY.format(test_per_class=20, flip=0.1, mode="online")
    )
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "a tiny project")
    home = Path(env["PIPELINE_HOME"])
    try:
        output = run(str(BIN / "dvc"), "repro")
        assert "started a local Prefect server" in output, output
        state = json.loads((home / "prefect-server.json").read_text())
        yield Served(state["url"], home, tmp)
    finally:
        subprocess.run(
            [str(BIN / "python"), "-m", "pipeline", "server", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
        )


def test_the_ui_calls_the_servers_own_api(served: Served):
    # Prefect's default is the API on port 4200: a UI that calls it shows nothing of this server
    assert not served.url.startswith("http://127.0.0.1:4200/")
    assert healthy(served.url)
    base = served.url.removesuffix("/api")
    with urllib.request.urlopen(f"{base}/ui-settings", timeout=10) as response:
        settings = json.load(response)
    assert settings["api_url"] == served.url


def _browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    why = f"no headless browser ({', '.join(BROWSERS)}): `make test` installs chromium as root"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a closed network: no background traffic, a fresh profile."""
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1400,900",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _text(dom: str) -> str:
    """The page's visible text, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


def test_the_runs_page_lists_the_flow_runs_of_dvc_repro(served: Served):
    browser = _browser()
    page = served.url.removesuffix("/api") + "/runs"  # what `make run` prints
    text = ""
    for budget in (10_000, 30_000):  # virtual time: the page's API calls complete within it
        done = _chromium(
            browser,
            served.tmp / f"profile-{budget}",
            f"--virtual-time-budget={budget}",
            "--dump-dom",
            page,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        text = _text(done.stdout)
        if all(f"{flow} tiny" in text for flow in FLOWS):
            break
    assert "Can't connect to Server API" not in text, text[:2000]
    for flow in FLOWS:  # the flow's name, then its run's (the spec's name)
        assert f"{flow} tiny" in text, text[:2000]
    assert "Completed" in text
    # the same page as a person sees it, kept with the test's files
    shot = served.tmp / "runs-page.png"
    done = _chromium(
        browser,
        served.tmp / "profile-shot",
        "--virtual-time-budget=10000",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        page,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"\nscreenshot of {page}: {shot}")
