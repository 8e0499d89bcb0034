"""Paths a spec names stay inside its project (or an allowed folder); no error message carries
the text of a file that is not a spec, nor the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.spec import SpecError, load_spec, load_spec_text
from pipeline.spec.paths import ALLOWED_ENV, SETTINGS_ENV, project_root
from tests.spec.conftest import BASE

CANARY = "canary-7f3a9c1e-not-for-messages"
FOLDER = "data: {dataset: image_folder, path: %s}\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No allow-list from the caller's environment; a secret a leak would show."""
    for name in (ALLOWED_ENV, *SETTINGS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIPELINE_TEST_SECRET", CANARY)


def _one(err: pytest.ExceptionInfo[SpecError]):
    (p,) = err.value.errors
    return p


def _leaks(message: str) -> list[str]:
    """Lines of /etc/passwd and values of the environment that appear in ``message``."""
    passwd = Path("/etc/passwd").read_text().splitlines() if Path("/etc/passwd").is_file() else []
    named = {str(Path.cwd().resolve()), str(Path.cwd())}  # the allowed root is named, rightly
    values = [v for v in os.environ.values() if len(v) >= 8 and v not in named]
    return [t for t in [*passwd, *values] if t.strip() and t in message]


@pytest.mark.parametrize(
    "text",
    [
        "extends: /etc/passwd\nname: x\n",
        "extends: /proc/self/environ\nname: x\n",
        "extends: ../../../../../../../../etc/passwd\nname: x\n",
        BASE.replace("    - {type: flatten}", "    - {type: reuse, spec: ../../../../etc/passwd}"),
        BASE.replace("    - {type: flatten}", "    - {type: reuse, spec: /proc/self/environ}"),
    ],
)
def test_an_inline_spec_naming_a_system_file_gets_one_located_error_without_its_text(text):
    with pytest.raises(SpecError) as err:
        load_spec_text(text)
    p = _one(err)
    assert p.mark is not None and p.mark.file == "<string>"
    assert p.path[-1] in ("extends", "spec")
    assert p.code in ("path-not-spec", "path-outside")
    message = str(err.value)
    assert ("/etc/passwd" in message) or ("/proc/self/environ" in message)  # as written
    assert _leaks(message) == [] and CANARY not in message


def test_a_yaml_outside_the_project_is_refused_naming_the_roots_and_the_setting(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "base.yaml").write_text(BASE + f"description: {CANARY}\n")
    project = tmp_path / "project"
    (project / "specs").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    spec = project / "specs" / "child.yaml"
    spec.write_text("name: child\nextends: ../../outside/base.yaml\nunknown_key: 1\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    p = _one(err)
    assert (p.mark.file, p.mark.line, p.mark.column) == (str(spec), 2, 10)
    assert p.path == ("extends",) and "'../../outside/base.yaml'" in p.message
    assert str(project) in p.message and ALLOWED_ENV in p.hint
    assert CANARY not in str(err.value)


def test_the_allow_list_widens_the_roots(tmp_path, monkeypatch):
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "base.yaml").write_text(BASE + "train: {epochs: 7}\n")
    (tmp_path / "project").mkdir()
    spec = tmp_path / "project" / "child.yaml"
    spec.write_text(f"name: child\nextends: {outside / 'base.yaml'}\n")
    with pytest.raises(SpecError, match="outside the folders"):
        load_spec(spec)
    monkeypatch.setenv(ALLOWED_ENV, os.pathsep.join(["/nonexistent", str(outside)]))
    assert load_spec(spec).train.epochs == 7


def test_project_root_is_the_nearest_marker_folder_else_the_spec_s_own(tmp_path):
    (tmp_path / "proj" / "specs" / "deep").mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text("")
    assert project_root(tmp_path / "proj" / "specs" / "deep") == tmp_path / "proj"
    (tmp_path / "loose").mkdir()
    assert project_root(tmp_path / "loose") == tmp_path / "loose"
    # inside the project, a base one folder up is fine; from a loose folder it is not
    (tmp_path / "proj" / "base.yaml").write_text(BASE)
    child = tmp_path / "proj" / "specs" / "deep" / "c.yaml"
    child.write_text("extends: ../../base.yaml\nname: c\n")
    assert load_spec(child).name == "c"
    (tmp_path / "base.yaml").write_text(BASE)
    loose = tmp_path / "loose" / "c.yaml"
    loose.write_text("extends: ../base.yaml\nname: c\n")
    with pytest.raises(SpecError, match="outside the folders"):
        load_spec(loose)


def test_symlinks_are_followed_before_dot_dot(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "base.yaml").write_text(BASE + f"description: {CANARY}\n")
    project = tmp_path / "project"
    (project / "inner").mkdir(parents=True)
    (project / ".git").mkdir()
    (project / "link.yaml").symlink_to(secret / "base.yaml")
    (project / "door").symlink_to(secret)
    (tmp_path / "x.yaml").write_text(BASE + f"description: {CANARY}\n")
    # each is inside the project as written; door/.. is tmp_path, as the system opens it
    for ref in ("link.yaml", "door/base.yaml", "door/../x.yaml"):
        spec = project / "inner" / "c.yaml"
        spec.write_text(f"extends: ../{ref}\nname: c\n")
        with pytest.raises(SpecError) as err:
            load_spec(spec)
        p = _one(err)
        assert p.code == "path-outside" and "after following symlinks" in p.message
        assert CANARY not in str(err.value)


def test_the_target_is_never_opened(tmp_path):
    # a FIFO blocks whoever opens it for reading: a load that opened it would hang
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "base.yaml")
    (tmp_path / "project").mkdir()
    spec = tmp_path / "project" / "c.yaml"
    spec.write_text("extends: ../outside/base.yaml\nname: c\n")
    code = (
        "import sys\nfrom pipeline.spec import SpecError, load_spec\n"
        f"try:\n    load_spec({str(spec)!r})\nexcept SpecError as e:\n    print(e.errors[0].code)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (ALLOWED_ENV, *SETTINGS_ENV)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.stdout.strip() == "path-outside", done.stderr


@pytest.mark.parametrize(
    ("section", "where"),
    [
        (FOLDER % "/etc", ("data", "path")),
        (
            "data: {dataset: image_folder, path: imgs, test_path: ../../../../etc}\n",
            ("data", "test_path"),
        ),
        (
            "data: {dataset: image_folder, path: imgs, validation: {path: /root}}\n",
            ("data", "validation", "path"),
        ),
    ],
)
def test_image_folders_outside_are_refused(write, section, where):
    text = BASE.replace("data: {dataset: mnist, validation: {fraction: 0.1}}\n", section)
    with pytest.raises(SpecError) as err:
        load_spec(write(text))
    p = _one(err)
    assert p.path == where and p.code == "path-outside"


def test_weights_and_checkpoints_outside_are_refused_where_written(write):
    layer = "    - {type: backbone, arch: resnet18, weights: {path: /etc/shadow}}"
    text = BASE.replace("data: {dataset: mnist,", "data: {dataset: cifar10,").replace(
        "    - {type: conv2d, filters: 8, kernel_size: 3, activation: relu}", layer
    )
    with pytest.raises(SpecError) as err:
        load_spec(write(text))
    p = _one(err)
    assert p.path == ("model", "layers", 0, "weights", "path") and p.mark.line == 5
    write(BASE, "a.yaml")
    reuse = "    - {type: reuse, spec: a.yaml, checkpoint: ../../../../etc/passwd}"
    with pytest.raises(SpecError) as err:
        load_spec(write(BASE.replace("    - {type: flatten}", reuse)))
    p = _one(err)
    assert p.path == ("model", "layers", 1, "checkpoint") and _leaks(str(err.value)) == []


def test_an_override_cannot_lead_out_and_is_blamed(write):
    with pytest.raises(SpecError) as err:
        load_spec(write(BASE), ["data.dataset=image_folder", "data.path=/etc"])
    p = _one(err)
    assert p.mark.file == "-S data.path=/etc" and p.path == ("data", "path")


def test_paths_inside_the_project_and_the_data_settings_still_work(write, tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    spec = load_spec(write(BASE.replace("{dataset: mnist,", "{dataset: image_folder, path: imgs,")))
    assert spec.path_of(spec.data.path) == (tmp_path / "imgs").resolve()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-mirror"
    monkeypatch.setenv("PIPELINE_DATA_MIRROR", str(elsewhere))
    text = BASE.replace("{dataset: mnist,", f"{{dataset: image_folder, path: {elsewhere}/cats,")
    assert load_spec(write(text)).data.path == f"{elsewhere}/cats"


def test_a_top_level_file_that_is_not_a_spec_is_not_read(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec("/etc/passwd")
    assert _one(err).code == "path-not-spec" and _leaks(str(err.value)) == []


def test_the_prefect_flows_inline_spec_is_confined_too(tmp_path, monkeypatch):
    from pipeline.flows import _spec  # how every flow turns its ``spec`` parameter into a Spec

    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    inline = {"name": "x", "extends": "/proc/self/environ"}
    with pytest.raises(SpecError) as err:
        _spec(inline, [])
    p = _one(err)
    assert p.mark.file == "<inline spec>" and p.path == ("extends",)
    assert CANARY not in str(err.value) and _leaks(str(err.value)) == []
    reuse = {"spec": "../../../../etc/passwd.yaml", "type": "reuse"}
    inline = {"name": "x", "data": {"dataset": "mnist"}, "model": {"layers": [reuse]}}
    with pytest.raises(SpecError) as err:
        _spec(inline, [])
    assert _one(err).code == "path-outside" and str(tmp_path) in str(err.value)
    (tmp_path / "base.yaml").write_text(textwrap.dedent(BASE))
    assert _spec({"name": "y", "extends": "base.yaml"}, []).name == "y"
