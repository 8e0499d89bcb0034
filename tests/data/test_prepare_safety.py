"""prepare never loses a user's files and never answers bad input with a traceback: a folder it
did not write is refused, by name; 16-bit images are scaled, not clipped; a validation fraction
is a fraction of the subset; unreadable folders and files are named."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import stages
from pipeline.data import DataError, load_prepared, prepare, prepared_dir
from pipeline.data.folders import decode
from tests.data.conftest import need_mirror, spec_from

REPO = Path(__file__).resolve().parents[2]
MARKER = "pipeline-prepared.txt"  # what prepare writes first into a folder of its own


def image_folder(root: Path, classes: str = "ab", n: int = 1) -> Path:
    """``root/imgs/<class>/<i>.png``: 8x8 grayscale, one shade per image."""
    for c, name in enumerate(classes):
        (root / "imgs" / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (8, 8), 40 + 10 * c + i).save(root / "imgs" / name / f"{i}.png")
    return root / "imgs"


GRAY = {"dataset": "image_folder", "path": "imgs", "color_mode": "grayscale"}


def user_folder(path: Path) -> dict[str, bytes]:
    """A folder of a user's own files (not prepared data); returns what each holds."""
    (path / "notes").mkdir(parents=True)
    files = {"thesis.txt": b"three years of work", "notes/todo.md": b"- finish"}
    for name, data in files.items():
        (path / name).write_bytes(data)
    return files


def intact(path: Path, files: dict[str, bytes]) -> bool:
    return all((path / name).read_bytes() == data for name, data in files.items())


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PIPELINE_ORCHESTRATION": "off",
        "PIPELINE_DATA_CACHE": str(cwd / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def spec_file(root: Path, data: dict | None = None) -> Path:
    data = data or GRAY
    text = json.dumps(
        {
            "name": "t",
            "data": data,
            "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]},
        }
    )
    (root / "s.yaml").write_text(text)  # JSON is YAML
    return root / "s.yaml"


# ---- a folder that is not prepare's is refused, the files untouched ---------------------------


def test_prepare_out_refuses_a_users_folder_naming_it(tmp_path):
    image_folder(tmp_path)
    spec_file(tmp_path)
    files = user_folder(tmp_path / "mine")
    proc = cli("prepare", "s.yaml", "--out", "mine", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: ") and "mine" in line and "not a prepared data folder" in line
    assert intact(tmp_path / "mine", files)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes", "thesis.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_the_stages_refuse_a_users_folder(tmp_path):
    image_folder(tmp_path)
    spec = spec_from(GRAY, tmp_path)
    files = user_folder(tmp_path / "mine")
    for call in (
        lambda: stages.prepare(spec, out=tmp_path / "mine"),
        lambda: stages.prepare(spec, out=tmp_path / "mine", force=True),
        lambda: stages.experiment(spec, data=tmp_path / "mine", log=lambda _: None),
    ):
        with pytest.raises(DataError, match=r"mine.* is not a prepared data folder"):
            call()
        assert intact(tmp_path / "mine", files)


def test_the_default_folder_is_refused_too_when_someone_elses(tmp_path):
    image_folder(tmp_path)
    spec = spec_from(GRAY, tmp_path)
    target = prepared_dir(spec, tmp_path / "out")
    files = user_folder(target)
    with pytest.raises(DataError, match=target.name):
        prepare(spec, tmp_path / "out")
    assert intact(target, files)


def test_extra_files_in_a_prepared_folder_are_not_deleted(tmp_path):
    image_folder(tmp_path)
    spec = spec_from(GRAY, tmp_path)
    out = tmp_path / "out"
    prepare(spec, target=out)
    (out / "my-analysis.ipynb").write_text("{}")
    with pytest.raises(DataError, match=r"my-analysis\.ipynb"):
        prepare(spec, target=out, force=True)
    assert (out / "my-analysis.ipynb").read_text() == "{}"
    assert prepare(spec, target=out).root == out  # complete: read, nothing replaced


def test_a_file_or_unlistable_target_is_refused(tmp_path):
    image_folder(tmp_path)
    spec = spec_from(GRAY, tmp_path)
    (tmp_path / "out.txt").write_text("mine")
    with pytest.raises(DataError, match=r"out\.txt is a file"):
        prepare(spec, target=tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "mine"


def test_an_empty_folder_and_an_incomplete_one_of_ours_are_used(tmp_path):
    image_folder(tmp_path)
    spec = spec_from(GRAY, tmp_path)
    (tmp_path / "empty").mkdir()
    assert (prepare(spec, target=tmp_path / "empty").root / MARKER).is_file()
    # killed while writing (the marker comes first) and a truncated array: both replaced
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / MARKER).write_text("")
    (tmp_path / "killed" / "train_x.npy").write_bytes(b"half")
    assert len(prepare(spec, target=tmp_path / "killed").split("train")[1]) == 2
    (tmp_path / "killed" / "test_x.npy").unlink(missing_ok=True)
    (tmp_path / "killed" / "train_x.npy").write_bytes(b"truncated")
    again = prepare(spec, target=tmp_path / "killed")
    assert again.split("train")[0].shape == (2, 1, 8, 8)


def test_a_prepared_folder_of_an_earlier_version_is_ours(tmp_path):
    # written before the marker existed: meta.json with the prepared layout is the evidence
    image_folder(tmp_path)
    spec = spec_from(GRAY, tmp_path)
    out = tmp_path / "out"
    prepare(spec, target=out)
    (out / MARKER).unlink()
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "key": "00000000"}))  # stale
    again = prepare(spec, target=out)
    assert again.meta["key"] == meta["key"] and (out / MARKER).is_file()


def test_stale_temp_cleanup_removes_only_prepares_own(tmp_path):
    image_folder(tmp_path)
    spec = spec_from(GRAY, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dead = 2**22 + 12345  # above any pid_max: no such process
    theirs = out / f".tmp-x-{dead}-abcdef"  # named like a temp folder, but a user's
    files = user_folder(theirs)
    ours = out / f".tmp-x-{dead}-123456"
    ours.mkdir()
    (ours / MARKER).write_text("")
    prepare(spec, target=out / "x")
    assert intact(theirs, files) and not ours.exists()


# ---- 16-bit images: scaled to 8 bits, not clipped ---------------------------------------------


def png_rgb16(path: Path, rgb: np.ndarray) -> None:
    """A real 16-bit RGB PNG (colour type 2, bit depth 16), which PIL cannot write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    h, w, _ = rgb.shape
    rows = b"".join(b"\0" + rgb[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


RAMP = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 256 + 255).astype(np.uint16)


def test_16_bit_grayscale_and_rgb_decode_to_their_high_byte(tmp_path):
    Image.fromarray(RAMP).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"  # a real 16-bit PNG
    expected = (RAMP >> 8).astype(np.uint8)  # 0..255 across the ramp, never clipped
    assert np.array_equal(decode(tmp_path / "g.png", "L", None)[0], expected)
    assert np.array_equal(decode(tmp_path / "g.png", "RGB", None)[1], expected)
    Image.fromarray(RAMP).save(tmp_path / "g.tif")
    assert np.array_equal(decode(tmp_path / "g.tif", "L", None)[0], expected)
    (tmp_path / "g.pgm").write_bytes(b"P5\n16 16\n65535\n" + RAMP.astype(">u2").tobytes())
    assert np.array_equal(decode(tmp_path / "g.pgm", "L", None)[0], expected)
    rgb = np.stack([RAMP, 65535 - RAMP, RAMP // 2], -1)
    png_rgb16(tmp_path / "c.png", rgb)
    assert np.array_equal(decode(tmp_path / "c.png", "RGB", None), (rgb >> 8).transpose(2, 0, 1))


def test_16_bit_pngs_prepare_to_8_bit_values(tmp_path):
    for name, scale in (("dark", 1), ("light", 2)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.fromarray(RAMP // scale).save(tmp_path / "imgs" / name / "0.png")
    p = prepare(spec_from(GRAY, tmp_path), target=tmp_path / "out")
    x = p.split("train")[0].numpy()[:, 0]
    assert np.array_equal(x[0], (RAMP >> 8).astype(np.uint8))
    assert np.array_equal(x[1], ((RAMP // 2) >> 8).astype(np.uint8))
    assert (x[0] == 255).mean() < 0.01  # was 99.6% white


# ---- validation.fraction is a fraction of the subset ------------------------------------------


def test_validation_fraction_is_taken_of_the_subset(tmp_path):
    data = {
        "dataset": "mnist",
        "mirror": str(need_mirror("MNIST")),
        "subset": {"train_per_class": 30, "test_per_class": 5},
        "validation": {"fraction": 0.2},
    }
    p = prepare(spec_from(data, tmp_path), tmp_path / "out")
    assert p.meta["counts"]["train"] == {str(c): 24 for c in range(10)}  # was 300 in all
    assert p.meta["counts"]["val"] == {str(c): 6 for c in range(10)}  # was 12,000
    assert len(p.split("test")[1]) == 50
    train, val = (p.split(s)[0].flatten(1) for s in ("train", "val"))
    assert not (train[:, None] == val[None]).all(-1).any()  # disjoint
    # validation.first still holds out the first N of the whole training split
    first = prepare(spec_from({**data, "validation": {"first": 500}}, tmp_path), tmp_path / "out")
    assert len(first.split("val")[1]) == 500 and len(first.split("train")[1]) == 300


# ---- bad image folders: one clear error naming the file or folder -----------------------------


def test_non_image_files_are_ignored_and_a_fake_image_is_named(tmp_path):
    imgs = image_folder(tmp_path)
    (imgs / "README.txt").write_text("not a class")
    (imgs / "a" / "labels.csv").write_text("0,a")
    assert prepare(spec_from(GRAY, tmp_path), tmp_path / "out").meta["counts"]["train"] == {
        "a": 1,
        "b": 1,
    }
    (imgs / "b" / "fake.png").write_text("not a png")
    with pytest.raises(DataError, match=r"cannot read image .*b/fake\.png"):
        prepare(spec_from(GRAY, tmp_path), tmp_path / "out")
    skip = prepare(spec_from({**GRAY, "skip_corrupt": True}, tmp_path), tmp_path / "out")
    assert skip.meta["skipped_corrupt"]["files"]["train"] == ["b/fake.png"]


def test_an_empty_class_folder_is_named(tmp_path):
    image_folder(tmp_path)
    (tmp_path / "imgs" / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder .*imgs/c has no images"):
        prepare(spec_from(GRAY, tmp_path), tmp_path / "out")


def test_a_file_given_as_the_image_folder_is_named(tmp_path):
    image_folder(tmp_path)
    with pytest.raises(DataError, match=r"imgs/a/0\.png is a file, not a folder"):
        prepare(spec_from({**GRAY, "path": "imgs/a/0.png"}, tmp_path), tmp_path / "out")


def without_root_overrides() -> list[str]:
    """Run as root, drop the capabilities that let root read any file (else chmod is moot)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


UNREADABLE = {  # case: (what is made unreadable, what the one line must name)
    "file": (lambda imgs: (imgs / "a" / "0.png").chmod(0), r"cannot read image .*imgs/a/0\.png"),
    "class-folder": (lambda imgs: (imgs / "a").chmod(0), r"cannot read folder .*imgs/a\b"),
    "class-folder-no-x": (lambda imgs: (imgs / "a").chmod(0o644), r"cannot read folder .*imgs/a"),
    "image-folder": (lambda imgs: imgs.chmod(0), r"cannot read folder .*image-folder/imgs:"),
    "out-folder": (
        lambda imgs: (imgs.parent / "out").mkdir(mode=0),
        r"cannot read out \(Permission denied\)",
    ),
    "read-only": (lambda imgs: imgs.parent.chmod(0o555), r"cannot write the prepared data in"),
}
# One process runs `pipeline prepare s.yaml --out out` in each case's project through the CLI's
# own main (what the console script runs), and reports its exit status, stderr, and any
# exception that escaped it.
RUN_CASES = """
import contextlib, io, json, os, sys, traceback
from pipeline.cli import main
results = {}
for project in sys.argv[1:]:
    os.chdir(project)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(["prepare", "s.yaml", "--out", "out"])
        except BaseException:
            rc, err = "escaped", io.StringIO(traceback.format_exc())
    results[os.path.basename(project)] = [rc, err.getvalue()]
print(json.dumps(results))
"""


def test_unreadable_files_and_folders_are_named_not_a_traceback(tmp_path):
    projects = []
    for case, (spoil, _) in UNREADABLE.items():
        project = tmp_path / case
        project.mkdir()
        spec_file(project)
        spoil(image_folder(project))
        projects.append(str(project))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PIPELINE_ORCHESTRATION": "off",
        "PIPELINE_DATA_CACHE": str(tmp_path / "cache"),
    }
    try:
        proc = subprocess.run(
            [*without_root_overrides(), sys.executable, "-c", RUN_CASES, *projects],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        for p in [tmp_path, *tmp_path.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, (_, named) in UNREADABLE.items():
        rc, stderr = results[case]
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert rc == 1 and len(lines) == 1, (case, stderr)
        assert re.search(named, lines[0]), (case, lines[0])
        assert sorted(p.name for p in (tmp_path / case / "imgs" / "a").iterdir()) == ["0.png"]


# ---- the prepared folder's own listing --------------------------------------------------------


def test_the_marker_is_written_and_explains_itself(tmp_path):
    image_folder(tmp_path)
    p = prepare(spec_from(GRAY, tmp_path), target=tmp_path / "out")
    assert "pipeline prepare" in (p.root / MARKER).read_text()
    assert torch.equal(load_prepared(p.root).split("train")[1], torch.tensor([0, 1]))
