"""What an exported file can do to the machine that predicts with it, and how bad files fail.

TorchScript is code: a scripted module's ``__setstate__`` runs at ``torch.jit.load`` and its
``forward`` at every call, so predict loads one only when this project's runs folder records
its sha256 (``pipeline export`` wrote it) or the user passes ``--trust``. The malicious module
here is real: it creates files with ``torch.from_file(path, True, n)``. ONNX files are data, and
every way they can be broken is one line and exit 1, before anything is allocated from them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from struct import pack

import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.cli import main
from pipeline.export import export, fold_report, read_metadata
from pipeline.model.build import build_model
from pipeline.spec import load_spec_text

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

META = {
    "format": 1,
    "name": "tiny",
    "classes": ["a", "b", "c"],
    "image_shape": [1, 8, 8],
    "color_mode": "grayscale",
    "resize": "torch_bilinear_antialias",
    "mean": [0.5],
    "std": [0.25],
    "normalization": "(x / 255 - mean) / std, per channel",
    "output_activation": "softmax",
    "input_name": "input",
    "output": "logits",
}

SPEC = """\
name: tiny
seed: 0
data: {dataset: fashion_mnist, image_size: 8, classes: {keep: [0, 1, 2]}}
model:
  layers:
    - {type: conv2d, filters: 3, kernel_size: 3, bias: false}
    - {type: batch_norm}
    - {type: relu}
    - {type: flatten}
    - {type: dense, units: 3, activation: softmax}
"""
PREPARED_META = {
    "classes": META["classes"],
    "image_shape": META["image_shape"],
    "normalization": {"mean": META["mean"], "std": META["std"]},
}


# ---- helpers -------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``pipeline ARGS`` in this process (the real CLI and its error policy)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, *names: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runs folder of this test's own (PIPELINE_RUNS_DIR): where exports are recorded."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(folder))
    return folder


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray((torch.arange(64).reshape(8, 8) * 4).to(torch.uint8).numpy()).save(path)
    return path


class Evil(nn.Module):
    """Creates ``<target>.load`` when loaded and ``<target>.fwd`` when called."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.mark = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.target + ".fwd", True, 8).fill_(1)
        return x.flatten(1)[:, :3] + written.sum() * 0  # used: the write survives scripting

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        self.mark = torch.from_file(self.target + ".load", True, 8).fill_(1)


def evil_torchscript(path: Path, target: Path) -> Path:
    """A real scripted module that writes files, with valid pipeline metadata."""
    with warnings.catch_warnings():  # TorchScript's deprecation notices
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(Evil(str(target)))
        torch.jit.save(scripted, str(path), _extra_files={"pipeline.json": json.dumps(META)})
    assert not target.with_name(target.name + ".load").exists()  # saving ran nothing
    return path


def onnx_model(
    path: Path,
    meta: dict | str | None = META,
    *,
    shape: list[int] | None = None,
    outputs: int | None = None,
) -> Path:
    """A real ONNX classifier: input (batch, C, H, W) -> global average pool -> dense."""
    c, h, w = shape or META["image_shape"]
    k = outputs or len(META["classes"])
    weight = numpy_helper.from_array(
        torch.linspace(-1, 1, c * k).reshape(c, k).numpy(), name="weight"
    )
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key = "pipeline.json"
        entry.value = meta if isinstance(meta, str) else json.dumps(meta)
    path.write_bytes(model.SerializeToString())
    return path


def tiny_model() -> nn.Module:
    model = build_model(load_spec_text(SPEC), load_weights=False)
    return model.eval()


def export_tiny(out: Path, formats: list[str]) -> dict[str, Path]:
    spec = load_spec_text(SPEC)
    return export(spec, tiny_model(), out, formats, prepared_meta=PREPARED_META, latency=False)


# ---- 1. TorchScript runs code: only ours, or --trust ---------------------------------------


def test_unrecorded_torchscript_is_refused_before_it_runs(
    tmp_path: Path, runs: Path, image: Path, capsys
):
    target = tmp_path / "owned"
    evil = evil_torchscript(tmp_path / "downloaded.pt", target)
    loaded, called = tmp_path / "owned.load", tmp_path / "owned.fwd"

    rc, out, err = run_cli(capsys, "predict", evil, image)
    line = one_error_line(err, str(evil), "--trust", "ONNX")
    assert rc == 1 and out == ""
    assert "runs code" in line
    assert not loaded.exists() and not called.exists()

    # The module really writes files: with --trust it does, at load and at the call.
    rc, out, err = run_cli(capsys, "predict", evil, image, "--trust")
    assert rc == 0, err
    assert loaded.exists() and called.exists()
    assert out.startswith(f"{image}: ")


def test_a_hash_file_beside_the_torchscript_is_no_proof(
    tmp_path: Path, runs: Path, image: Path, capsys
):
    import hashlib

    evil = evil_torchscript(tmp_path / "model.pt", tmp_path / "owned")
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    # what an attacker can ship with the file: every plausible sidecar
    (tmp_path / "model.pt.sha256").write_text(f"{digest}  model.pt\n")
    (tmp_path / "manifest.json").write_text(json.dumps({digest: {"file": str(evil)}}))
    (tmp_path / "export.json").write_text(json.dumps({"sha256": {"model.pt": digest}}))
    rc, _, err = run_cli(capsys, "predict", evil, image)
    assert rc == 1
    one_error_line(err, str(evil), "--trust")
    assert not (tmp_path / "owned.load").exists()


def test_reading_torchscript_metadata_runs_nothing(tmp_path: Path):
    evil = evil_torchscript(tmp_path / "model.pt", tmp_path / "owned")
    assert read_metadata(evil)["classes"] == META["classes"]
    assert not (tmp_path / "owned.load").exists()


def test_our_torchscript_export_is_recorded_in_the_runs_folder(
    tmp_path: Path, runs: Path, image: Path, capsys, monkeypatch
):
    paths = export_tiny(tmp_path / "out", ["torchscript"])
    manifest = json.loads((runs / ".exports" / "manifest.json").read_text())
    import hashlib

    digest = hashlib.sha256(paths["torchscript"].read_bytes()).hexdigest()
    assert manifest["files"][digest]["file"] == str(paths["torchscript"].resolve())
    rc, out, err = run_cli(capsys, "predict", paths["torchscript"], image)
    assert rc == 0 and err == "" and out.startswith(f"{image}: ")

    # the same bytes elsewhere are still ours; changed bytes are not
    copy = tmp_path / "elsewhere" / "tiny.pt"
    copy.parent.mkdir()
    shutil.copy(paths["torchscript"], copy)
    assert run_cli(capsys, "predict", copy, image)[0] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(copy))
        torch.jit.save(module, str(copy), _extra_files={"pipeline.json": json.dumps(META)})
    rc, _, err = run_cli(capsys, "predict", copy, image)
    assert rc == 1
    one_error_line(err, str(copy), "--trust")

    # another project's runs folder does not know our export
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(tmp_path / "other_runs"))
    rc, _, err = run_cli(capsys, "predict", paths["torchscript"], image)
    assert rc == 1
    one_error_line(err, str(paths["torchscript"]), str(tmp_path / "other_runs"))


def test_a_checkpoint_passed_as_an_export_says_to_pass_the_spec(
    tmp_path: Path, runs: Path, image: Path, capsys
):
    ckpt = tmp_path / "best.pt"
    torch.save({"model": tiny_model().state_dict(), "epoch": 1}, ckpt)
    rc, _, err = run_cli(capsys, "predict", ckpt, image)
    assert rc == 1
    one_error_line(err, str(ckpt), "checkpoint", "spec")


# ---- 2. broken ONNX files: one line, exit 1 ------------------------------------------------


def _text(path: Path) -> Path:
    path.write_text("name: not a model\nlayers: []\n")
    return path


def _random(path: Path) -> Path:
    path.write_bytes(random.Random(0).randbytes(4096))
    return path


def _renamed_torchscript(path: Path) -> Path:
    return evil_torchscript(path, path.with_name("owned"))


BROKEN = {
    "text": (_text, "not an ONNX model"),
    "random_bytes": (_random, "not an ONNX model"),
    "renamed_torchscript": (_renamed_torchscript, "TorchScript"),
    "empty": (lambda p: p.write_bytes(b"") or p, "empty"),
    "no_metadata": (lambda p: onnx_model(p, None), "no pipeline.json metadata"),
    "metadata_not_json": (lambda p: onnx_model(p, "{'classes': [a, b"), "not JSON"),
    "metadata_wrong_keys": (lambda p: onnx_model(p, {"labels": ["a"], "size": 8}), "classes"),
    "metadata_wrong_types": (
        lambda p: onnx_model(p, META | {"image_shape": "8x8", "classes": "abc"}),
        "image_shape",
    ),
    "metadata_not_an_object": (lambda p: onnx_model(p, "[1, 2, 3]"), "JSON object"),
    "metadata_unknown_activation": (
        lambda p: onnx_model(p, META | {"output_activation": "tanh"}),
        "output_activation",
    ),
    "std_zero": (lambda p: onnx_model(p, META | {"std": [0.0]}), "std"),
    "mean_per_channel": (lambda p: onnx_model(p, META | {"mean": [0.1, 0.2, 0.3]}), "mean"),
    "shape_differs_from_graph": (lambda p: onnx_model(p, shape=[1, 9, 9]), "input shape"),
    "more_outputs_than_classes": (lambda p: onnx_model(p, outputs=10), "10 outputs"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_onnx_is_one_line(kind: str, tmp_path: Path, runs: Path, image: Path, capsys):
    make, says = BROKEN[kind]
    path = make(tmp_path / "model.onnx")
    rc, out, err = run_cli(capsys, "predict", path, image)
    assert rc == 1 and out == ""
    one_error_line(err, str(path), says)
    assert not (tmp_path / "owned.load").exists()


def test_a_good_onnx_file_predicts(tmp_path: Path, runs: Path, image: Path, capsys):
    # the builder above makes valid files: the broken ones fail for their one fault
    path = onnx_model(tmp_path / "model.onnx")
    rc, out, err = run_cli(capsys, "predict", path, image)
    assert rc == 0 and err == "", err
    assert out.startswith(f"{image}: ") and out.split()[1] in META["classes"]


HUGE = [1, 100_000, 100_000]  # 1e10 pixels: 10 GB of uint8, 40 GB as float32


def test_huge_declared_input_is_refused_before_allocating(tmp_path: Path, image: Path):
    """In a subprocess capped at 8 GiB of address space: a check that came after the
    allocation fails there cleanly instead of taking the machine's memory."""
    path = onnx_model(tmp_path / "huge.onnx", META | {"image_shape": HUGE}, shape=HUGE)
    limit = 8 << 30
    code = (
        "import resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
        "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT), "PIPELINE_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run(
        [sys.executable, "-c", code, "predict", str(path), str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    line = one_error_line(done.stderr, str(path), "image_shape")
    assert "100000" in line


def test_onnx_that_reads_external_data_is_refused(tmp_path: Path, runs: Path, image: Path, capsys):
    # An initializer whose bytes "live" in another file: onnxruntime would read that file
    # (relative to the working folder for a model loaded from bytes).
    path = onnx_model(tmp_path / "model.onnx")
    model = onnx.load(str(path))
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "secret.bin", "offset": "0", "length": "12"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 12)
    rc, _, err = run_cli(capsys, "predict", path, image)
    assert rc == 1
    one_error_line(err, str(path), "external data")


def test_a_broken_manifest_is_one_line(tmp_path: Path, runs: Path, image: Path, capsys):
    paths = export_tiny(tmp_path / "out", ["torchscript"])
    manifest = runs / ".exports" / "manifest.json"
    manifest.write_text("{ half written")
    rc, _, err = run_cli(capsys, "predict", paths["torchscript"], image)
    assert rc == 1
    one_error_line(err, str(manifest))


class Wide(nn.Module):
    """Ten logits a sample, for metadata that names three classes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


def test_a_model_that_does_not_fit_its_classes_is_one_line(
    tmp_path: Path, runs: Path, image: Path, capsys
):
    path = tmp_path / "wide.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(
            torch.jit.script(Wide()), str(path), _extra_files={"pipeline.json": json.dumps(META)}
        )
    rc, _, err = run_cli(capsys, "predict", path, image, "--trust")
    assert rc == 1
    one_error_line(err, str(path), "10 outputs for 3 classes")


def test_an_onnx_graph_that_fails_when_run_is_one_line(
    tmp_path: Path, runs: Path, image: Path, capsys
):
    # Its declared shapes are right; reshaping 64 pixels into rows of 3 fails only when run.
    path = onnx_model(tmp_path / "model.onnx")
    model = onnx.load(str(path))
    graph = model.graph
    del graph.node[:]
    graph.initializer.append(numpy_helper.from_array(torch.tensor([-1, 3]).numpy(), "rows"))
    graph.node.append(helper.make_node("Reshape", ["input", "rows"], ["logits"]))
    path.write_bytes(model.SerializeToString())
    rc, _, err = run_cli(capsys, "predict", path, image)
    assert rc == 1
    one_error_line(err, str(path), "fails on its input")


# ---- other paths from a file to a traceback ------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header for a huge grey image and no pixels: PIL refuses it as a decompression
    bomb at open, before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return pack(">I", len(data)) + kind + data + pack(">I", zlib.crc32(kind + data))

    header = pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_files_that_are_not_images_are_one_line_each(
    tmp_path: Path, runs: Path, image: Path, capsys
):
    model = onnx_model(tmp_path / "model.onnx")
    bad = {
        "text.png": b"not an image\n",
        "empty.png": b"",
        "bomb.png": _png_claiming(20_000, 20_000),
        "truncated.png": image.read_bytes()[:40],
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.png").mkdir()
    files = [tmp_path / n for n in [*bad, "folder.png"]]
    rc, out, err = run_cli(capsys, "predict", model, *files, image)
    assert rc == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(f) for f in files], err
    assert all(": error: cannot read image: " in line for line in lines)
    assert "bomb.png: error: cannot read image: Image size (400000000 pixels)" in err
    assert out.startswith(f"{image}: ")  # the good one is still classified


@pytest.mark.parametrize("samples", ["-1", "1"])
def test_bad_mc_samples_is_one_line(samples: str, tmp_path: Path, image: Path, capsys):
    rc, _, err = run_cli(capsys, "predict", tmp_path / "x.yaml", image, "--mc-samples", samples)
    assert rc == 1
    one_error_line(err, "--mc-samples")


# ---- 3. folding batch norm says what it folded ---------------------------------------------


def test_fold_report_counts_and_says_when_nothing_folds():
    _, report = fold_report(tiny_model(), META["image_shape"], latency=False)
    assert report["folded"] == ["batch_norm_1"]
    assert report["summary"].startswith("fold_batch_norm: folded 1 batch norm(s)")

    after_relu = SPEC.replace(
        "    - {type: batch_norm}\n    - {type: relu}\n",
        "    - {type: relu}\n    - {type: batch_norm}\n",
    )
    model = build_model(load_spec_text(after_relu), load_weights=False).eval()
    _, report = fold_report(model, META["image_shape"])
    assert report["folded"] == [] and report["not_folded"] == ["batch_norm_1"]
    assert report["summary"] == (
        "fold_batch_norm: no batch norm follows a conv/linear directly; nothing folded, "
        "1 left as they are (batch_norm_1)"
    )
    assert "latency_ms" not in report  # the same model twice: nothing to time

    no_bn = SPEC.replace("    - {type: batch_norm}\n", "")
    model = build_model(load_spec_text(no_bn), load_weights=False).eval()
    _, report = fold_report(model, META["image_shape"], latency=False)
    assert report["summary"] == "fold_batch_norm: the model has no batch norm; nothing folded"


# ---- a trained run: the CLI's export and evaluate ------------------------------------------

TRAINED = """\
name: tiny_run
seed: 0
data:
  dataset: fashion_mnist
  image_size: 8
  classes: {keep: [0, 1, 2]}
  subset: {train_per_class: 20, test_per_class: 2}
  validation: {fraction: 0.2}
model:
  layers:
    - {type: conv2d, filters: 3, kernel_size: 3}
    - {type: relu}
    - {type: batch_norm}
    - {type: flatten}
    - {type: dense, units: 3, activation: softmax}
train: {epochs: 1, batch_size: 16}
evaluate: {fold_batch_norm: true}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spec trained for one epoch on 60 images, in its own project folder."""
    from tests.conftest import MIRROR

    if not (MIRROR / "FashionMNIST" / "raw").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"dataset mirror {MIRROR} is missing")
        pytest.skip(f"dataset mirror {MIRROR} is missing (set PIPELINE_DATA_MIRROR)")
    from pipeline.train.loop import train

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        _project(mp, root)
        spec = load_spec_text(TRAINED)
        train(spec, log=lambda _m: None)
    (root / "tiny_run.yaml").write_text(TRAINED)
    return root


def _project(mp: pytest.MonkeyPatch, root: Path) -> None:
    from tests.conftest import MIRROR

    mp.setenv("PIPELINE_DATA_MIRROR", str(MIRROR))
    mp.setenv("PIPELINE_DATA_CACHE", str(root / "cache"))
    mp.delenv("PIPELINE_RUNS_DIR", raising=False)
    mp.chdir(root)


@pytest.fixture
def project(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _project(monkeypatch, trained)
    return trained


def test_export_writes_onnx_by_default_and_says_nothing_folded(project: Path, image, capsys):
    export_dir = project / "runs" / "tiny_run" / "export"
    shutil.rmtree(export_dir, ignore_errors=True)
    rc, out, err = run_cli(capsys, "export", "tiny_run.yaml")  # evaluate.fold_batch_norm: true
    assert rc == 0, err
    assert sorted(p.name for p in export_dir.iterdir()) == ["export.json", "tiny_run.onnx"]
    assert "fold_batch_norm: no batch norm follows a conv/linear directly; nothing folded" in out
    assert "max abs" not in out
    rc, out, err = run_cli(capsys, "predict", export_dir / "tiny_run.onnx", image)
    assert rc == 0 and err == "" and out.startswith(f"{image}: ")


def test_exported_torchscript_predicts_without_trust(project: Path, image, capsys):
    rc, _, err = run_cli(capsys, "export", "tiny_run.yaml", "--format", "torchscript")
    assert rc == 0, err
    pt = project / "runs" / "tiny_run" / "export" / "tiny_run.pt"
    assert (project / "runs" / ".exports" / "manifest.json").is_file()
    rc, out, err = run_cli(capsys, "predict", pt, image)
    assert rc == 0 and err == "" and out.startswith(f"{image}: ")


def test_evaluate_reports_no_fold_instead_of_a_zero_difference(project: Path):
    from pipeline.evaluate import evaluate

    lines: list[str] = []
    metrics = evaluate(load_spec_text(TRAINED), log=lines.append)
    assert metrics["fold_batch_norms_folded"] == 0
    assert "fold_max_abs_diff" not in metrics and "fold_test_accuracy" not in metrics
    assert not any(k.startswith("latency_ms") for k in metrics)
    assert (
        "fold_batch_norm: no batch norm follows a conv/linear directly; nothing folded, "
        "1 left as they are (batch_norm_1)"
    ) in lines
