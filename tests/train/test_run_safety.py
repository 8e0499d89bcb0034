"""A training run is safe to start twice, to stop, to kill, to resume, and to point at a full or
read-only disk: real processes, real signals, real mounts, real files."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline import atomic
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.run import Run
from pipeline.spec import load_spec_text
from pipeline.train import checkpoint as ckpt
from pipeline.train.loop import TrainingDiverged, train
from tests.test_errors import SPEC  # the tiny MLP those one-line-error tests train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PIPELINE_RUNS_DIR", raising=False)
    (tmp_path / "tiny.yaml").write_text(SPEC)
    return tmp_path


def tiny(*overrides: str):
    return load_spec_text(SPEC, list(overrides))


def quiet(_: str) -> None:
    pass


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and "Warning" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    for needle in needles:
        assert needle in line, line
    return line


# ---- real subprocesses ---------------------------------------------------------------------

ENV = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "PIPELINE_ORCHESTRATION": "off"}


class Proc:
    """A ``pipeline`` subprocess whose merged output is read line by line as it comes."""

    def __init__(self, cwd: Path, argv: list[str]) -> None:
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=os.environ | ENV, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            # a shell's background job (CI run under nohup, say) ignores SIGINT, and Python keeps
            # an ignored SIGINT ignored: give the child the default, as a terminal would
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def pipeline(cls, cwd: Path, *args: str) -> Proc:
        return cls(cwd, [sys.executable, "-m", "pipeline", *args])

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float = 120) -> str:
        """The first line (from now on) that starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r} in:\n{self.text}")

    def finish(self, timeout: float = 120) -> int:
        code = self.popen.wait(timeout=timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    @property
    def text(self) -> str:
        return "".join(self.lines)


def pipeline(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=os.environ | ENV,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


# ---- 1. one run folder, one training -------------------------------------------------------


def test_a_second_training_of_the_same_run_fails_at_once_naming_the_first(workdir):
    first = Proc.pipeline(workdir, "train", "tiny.yaml", "-S", "train.epochs=1000")
    try:
        first.wait_for("epoch 1 ")
        run = Run.named("tiny")
        record = run.read_record()
        # a checkpoint write of the first run in flight: the second must not touch it
        with contextlib.suppress(LookupError), atomic.replacing(run.checkpoint()) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            second = pipeline(workdir, "train", "tiny.yaml", "-S", "train.epochs=1")
            assert tmp.read_bytes() == b"half a checkpoint"
            raise LookupError  # leave best.pt as the first run wrote it
        assert second.returncode == 1, second.stdout + second.stderr
        assert "Traceback" not in second.stderr and "epoch" not in second.stdout
        (line,) = [ln for ln in second.stderr.splitlines() if ln.startswith("error: ")]
        for needle in ("runs/tiny", f"pid {first.popen.pid}", socket.gethostname(), "since 20"):
            assert needle in line, line
        assert run.read_record() == record  # the second did not replace the first's record
        first.wait_for("epoch 3 ")  # and the first trains on, undisturbed
        first.popen.kill()  # kill -9: its lock dies with it
        first.finish()
        epochs = [ln.split(",")[0] for ln in run.history.read_text().splitlines()[1:]]
        assert epochs[:3] == ["1", "2", "3"]
        assert main(["train", "tiny.yaml"]) == 0  # a dead holder's lock does not block
    finally:
        if first.popen.poll() is None:
            first.popen.kill()
            first.finish()


# ---- 2. unique temp names -------------------------------------------------------------------


def test_atomic_writes_of_one_file_at_once_never_collide(tmp_path):
    target = tmp_path / "history.csv"
    with atomic.replacing(target) as a, atomic.replacing(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the outer one replaced last
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        for _ in range(300):
            try:
                atomic.write_text(target, tag * 20_000)
            except BaseException as err:  # any collision is the failure
                errors.append(err)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in {tag * 20_000 for tag in "xyz"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


# ---- 3. temps of a killed write ---------------------------------------------------------------

KILLED_WRITE = """\
import os, sys
from pathlib import Path
from pipeline import atomic
with atomic.replacing(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(os.urandom(4096))
    os.kill(os.getpid(), 9)
"""


def test_temps_of_a_write_killed_by_sigkill_are_removed_at_the_next_start(workdir, capsys):
    assert main(["train", "tiny.yaml"]) == 0
    run = Run.named("tiny")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(run.checkpoint("last"))],
        env=os.environ | ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (stale,) = [p for p in run.checkpoints.iterdir() if p.name not in ("best.pt", "last.pt")]
    assert stale.name.startswith(".last.pt.")
    legacy = run.checkpoints / ".best.pt.k9x2a1bq.pt"  # the temp name before this version
    legacy.write_bytes(b"half a checkpoint")
    theirs = [run.checkpoints / "notes.txt", run.checkpoints / ".last.pt.keep", run.dir / "x.tmp"]
    for path in theirs:
        path.write_text("not ours")
    assert main(["train", "tiny.yaml", "--resume", "-S", "train.epochs=2"]) == 0
    assert not stale.exists() and not legacy.exists()
    assert all(p.read_text() == "not ours" for p in theirs)
    assert "removed a temporary file" in capsys.readouterr().out


# ---- 5. signals -------------------------------------------------------------------------------

KEPT = re.compile(r"kept (\S+/last\.pt) \(epoch (\d+)\)")


def test_sigterm_and_ctrl_c_say_what_was_kept_and_how_to_resume(workdir):
    first = Proc.pipeline(workdir, "train", "tiny.yaml", "-S", "train.epochs=1000")
    first.wait_for("epoch 2 ")
    first.popen.send_signal(signal.SIGTERM)
    assert first.finish() == 143, first.text
    assert "Traceback" not in first.text
    path, epoch = KEPT.search(first.text).groups()
    assert Path(workdir / path) == workdir / "runs" / "tiny" / "checkpoints" / "last.pt"
    assert ckpt.load(workdir / path)["epoch"] == int(epoch) >= 2
    command = re.search(r"resume with: (.+)", first.text).group(1)
    argv = shlex.split(command)
    assert argv[-4:] == ["tiny.yaml", "-S", "train.epochs=1000", "--resume"], command

    second = Proc(workdir, argv)  # the printed command, as it is
    second.wait_for(f"resuming tiny after epoch {epoch}")
    second.wait_for(f"epoch {int(epoch) + 1} ")
    second.popen.send_signal(signal.SIGINT)
    assert second.finish() == 130, second.text
    assert "Traceback" not in second.text and "KeyboardInterrupt" not in second.text
    assert int(KEPT.search(second.text).group(2)) > int(epoch)
    assert "--resume" in re.search(r"resume with: (.+)", second.text).group(1)


def test_resume_without_a_checkpoint_says_it_starts_fresh(workdir):
    lines: list[str] = []
    result = train(tiny(), resume=True, log=lines.append)
    assert len(result.history) == 1
    (said,) = [ln for ln in lines if "starting fresh" in ln]
    assert "runs/tiny/checkpoints/last.pt" in said


# ---- 6. divergence ----------------------------------------------------------------------------


def test_divergence_in_the_first_epoch_says_nothing_was_kept_and_records_it(workdir):
    with pytest.raises(TrainingDiverged) as err:
        train(tiny("optimizer={type: sgd, lr: 1e25}"), log=quiet)
    message = str(err.value)
    assert "NaN/inf at epoch 1" in message
    assert "last good checkpoint" not in message and "no checkpoint was written" in message
    summary = json.loads((workdir / "runs" / "tiny" / "train.json").read_text())
    assert summary["epochs"] == 0 and summary["stopped"].startswith("diverged")
    assert summary["diverged"]["epoch"] == 1 and "NaN/inf" in summary["diverged"]["reason"]
    assert summary["diverged"]["kept"] is None


def test_divergence_later_names_the_checkpoint_it_kept(workdir):
    s = tiny(
        "train.epochs=3",
        "optimizer={type: sgd, lr: 0.01}",
        "schedule={type: step, step_size: 1, gamma: 1e30}",
    )
    with pytest.raises(TrainingDiverged, match=r"NaN/inf at epoch 2") as err:
        train(s, log=quiet)
    assert "the last good checkpoint (epoch 1) is kept in runs/tiny/checkpoints/last.pt" in str(
        err.value
    )
    summary = json.loads((workdir / "runs" / "tiny" / "train.json").read_text())
    assert summary["epochs"] == 1 and summary["diverged"]["epoch"] == 2
    assert summary["diverged"]["kept"] == "runs/tiny/checkpoints/last.pt"


# ---- 7. dead units only where an activation can leave them dead --------------------------------

CONV = """\
name: tiny
seed: 0
data:
  dataset: mnist
  subset: {train_per_class: 20, test_per_class: 5}
  validation: {fraction: 0.2}
model:
  layers:
    - {type: conv2d, filters: 4, kernel_size: 3, activation: relu}
    - {type: max_pool2d}
    - {type: flatten}
    - {type: dense, units: 16, activation: tanh}
    - {type: dense, units: 16}
    - {type: relu}
    - {type: dense, units: 10, activation: softmax}
train: {epochs: 1, batch_size: 32, diagnostics: true}
"""


def test_dead_fraction_is_reported_only_after_a_relu(workdir):
    train(load_spec_text(CONV), log=quiet)
    text = (workdir / "runs" / "tiny" / "diagnostics.csv").read_text().splitlines()
    header = text[0].split(",")
    rows = [line.split(",") for line in text[1:]]
    dead = {row[header.index("layer")]: row[header.index("dead_fraction")] for row in rows}
    assert set(dead) == {
        "conv2d_1", "max_pool2d_1", "flatten_1", "dense_1", "dense_2", "relu_1", "dense_3",
    }  # fmt: skip
    reported = {name for name, value in dead.items() if value}
    assert reported == {"conv2d_1", "relu_1"}, dead  # flatten of ReLU maps showed one


# ---- 8. restore_best --------------------------------------------------------------------------


def test_restoring_the_best_weights_is_said_and_recorded(workdir):
    lines: list[str] = []
    # the loss falls every epoch here, so "best" as its highest makes epoch 1 the best
    es = "train.early_stopping={monitor: val_loss, mode: max, patience: 1}"
    best_is_first = "train.checkpoint={monitor: val_loss, mode: max}"
    result = train(tiny("train.epochs=6", es, best_is_first), log=lines.append)
    assert len(result.history) == 3 and result.best_epoch == 1
    (said,) = [ln for ln in lines if "restored" in ln]
    assert "epoch 1" in said and "best.pt" in said
    summary = json.loads((workdir / "runs" / "tiny" / "train.json").read_text())
    assert summary["weights"] == {"epoch": 1, "restored_best": True}
    best = ckpt.load(workdir / "runs" / "tiny" / "checkpoints" / "best.pt")
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, best["model"][key]), key

    train(tiny("train.epochs=2"), log=lines.append)
    summary = json.loads((workdir / "runs" / "tiny" / "train.json").read_text())
    assert summary["weights"] == {"epoch": 2, "restored_best": False}


# ---- 9. corrupt checkpoints -------------------------------------------------------------------


class Evil:
    """Unpickling this would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad(kind: str, path: Path, marker: Path) -> None:
    good = path.read_bytes()
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}}))
    elif kind == "malicious pickle":
        path.write_bytes(pickle.dumps({"model": Evil(marker)}))
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign torch file":
        torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, path)
    elif kind == "bare state dict":
        torch.save(torch.load(path, weights_only=True)["model"], path)


_TRAINED: list[Path] = []


@pytest.fixture
def trained_run(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """A trained tiny run and an image to classify, made once for the module's tests."""
    if _TRAINED:
        return _TRAINED[0]
    folder = tmp_path_factory.mktemp("trained")
    (folder / "tiny.yaml").write_text(SPEC)
    env = os.environ | ENV | {"PIPELINE_DATA_CACHE": str(folder / "cache")}
    env.pop("PIPELINE_RUNS_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "tiny.yaml"],
        cwd=folder, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    from PIL import Image

    Image.new("L", (28, 28), 128).save(folder / "digit.png")
    _TRAINED.append(folder)
    return folder


@pytest.mark.parametrize(
    "kind",
    ["pickle", "malicious pickle", "truncated", "empty", "foreign torch file", "bare state dict"],
)
def test_a_bad_checkpoint_is_one_line_on_every_command(kind, trained_run, tmp_path, capsys,
                                                       monkeypatch):  # fmt: skip
    shutil.copytree(trained_run, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PIPELINE_RUNS_DIR", raising=False)
    marker = tmp_path / "pwned"
    checkpoints = tmp_path / "runs" / "tiny" / "checkpoints"
    for name in ("best.pt", "last.pt"):
        _bad(kind, checkpoints / name, marker)
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    commands = {
        "last.pt": ["train", "tiny.yaml", "--resume", "-S", "train.epochs=2"],
        "best.pt": ["evaluate", "tiny.yaml"],
    }
    for which, argv in [
        *commands.items(),
        ("best.pt", ["predict", "tiny.yaml", "digit.png"]),
        ("best.pt", ["export", "tiny.yaml"]),
    ]:
        line = one_line_error(capsys, main(argv), f"runs/tiny/checkpoints/{which}")
        assert "train again" in line or "train from scratch" in line, line
        assert len(line) < 400, line
    assert not marker.exists()  # the malicious pickle's payload never ran
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
    if kind == "malicious pickle":  # torch warns about such files: nothing but the one line
        done = pipeline(tmp_path, "evaluate", "tiny.yaml")
        assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
        assert not marker.exists()


def test_a_checkpoint_of_the_older_format_is_not_resumed_inexactly(trained_run, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    shutil.copytree(trained_run, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PIPELINE_RUNS_DIR", raising=False)
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    for key in ("early_stopping", "rng", "loader_epoch", "scaler", "format"):
        del state[key]
    state["stale"], state["rng"] = 0, torch.get_rng_state()  # what the format-1 code wrote
    torch.save(state, last)
    code = main(["train", "tiny.yaml", "--resume", "-S", "train.epochs=2"])
    line = one_line_error(capsys, code, str(Path("runs/tiny/checkpoints/last.pt")), "exactly")
    assert "early_stopping" in line and "without --resume" in line
    assert main(["evaluate", "tiny.yaml", "-S", "evaluate.checkpoint=last"]) == 0  # still usable


def test_reused_weights_from_a_malicious_pickle_are_one_line_and_never_run(tmp_path):
    from pipeline.model.errors import ModelBuildError
    from pipeline.model.weights import read_state_dict

    marker, path = tmp_path / "pwned", tmp_path / "best.pt"
    path.write_bytes(pickle.dumps({"model": Evil(marker)}))
    with pytest.raises(ModelBuildError) as err:
        read_state_dict(path, "missing")
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "weights_only" not in message
    assert not marker.exists()


# ---- 10. full and read-only disks, and other OS errors ----------------------------------------


@contextlib.contextmanager
def mounted(target: Path, *options: str):
    """A real mount at ``target`` (root only); skipped where mounting is not possible."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount: {done.stderr}")
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_disk_is_one_line_with_the_free_space_and_keeps_the_good_files(
    workdir, capsys, monkeypatch
):
    assert main(["train", "tiny.yaml"]) == 0
    small = workdir / "small"
    with mounted(small, "-t", "tmpfs", "-o", "size=1m", "tmpfs"):
        shutil.copytree(workdir / "runs", small, dirs_exist_ok=True)
        free = shutil.disk_usage(small).free
        (small / "filler").write_bytes(b"\0" * (free - 48 * 1024))  # 48 KiB left
        monkeypatch.setenv("PIPELINE_RUNS_DIR", str(small))
        checkpoints = small / "tiny" / "checkpoints"
        before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
        capsys.readouterr()
        code = main(["train", "tiny.yaml", "--resume", "-S", "train.epochs=2"])
        line = one_line_error(capsys, code, str(checkpoints), "no space left", "free")
        assert re.search(r"\d+(\.\d+)? [KM]iB free", line), line
        assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before


def test_a_read_only_run_folder_is_one_line_and_nothing_is_removed(workdir, capsys):
    assert main(["train", "tiny.yaml"]) == 0
    runs = workdir / "runs"
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    with mounted(runs, "--bind", str(runs)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(runs)], check=True)
        capsys.readouterr()
        code = main(["train", "tiny.yaml", "-S", "train.epochs=2"])
        one_line_error(capsys, code, "runs/tiny", "read-only")
        code = main(["train", "tiny.yaml", "-S", "name=other"])
        one_line_error(capsys, code, "runs", "read-only")
        assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before


def test_a_name_too_long_for_the_file_system_is_one_line(workdir, capsys, monkeypatch):
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(workdir / ("r" * 300)))
    code = main(["train", "tiny.yaml"])
    one_line_error(capsys, code, "File name too long", "rrrr")


def test_an_os_error_naming_a_file_is_one_line_at_the_cli(workdir, capsys):
    (workdir / "afile").write_text("a file, not a folder")
    code = main(["schedule-preview", "tiny.yaml", "-o", "afile/preview"])
    one_line_error(capsys, code, "afile/preview", "Not a directory")


# ---- 11. a missing device, before any work -------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_cuda_device_fails_before_any_data_is_prepared(workdir, capsys):
    for command in ("train", "run"):  # run prepares first: the device is checked before
        code = main([command, "tiny.yaml", "-S", "train.device=cuda"])
        one_line_error(capsys, code, "CUDA is not available", "device: auto")
        assert not (workdir / "data").exists() and not (workdir / "runs").exists()


def test_every_new_error_is_a_pipeline_error():
    from pipeline.atomic import OutputError
    from pipeline.runlock import RunLocked

    assert issubclass(OutputError, PipelineError) and issubclass(RunLocked, PipelineError)
