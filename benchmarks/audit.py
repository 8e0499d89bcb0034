"""The hardening audit: each case tries the ``pipeline`` command as an attacker or a careless
user would, and says what happened. Not a test (tests/ hold one test per case); this prints the
table of outcomes a release is judged by.

    python benchmarks/audit.py [--only NAME ...] [--json FILE]

Outcomes: ``clean`` (one clear line and a non-zero exit, or the right result), ``traceback``
(a Python traceback reached the user), ``data-loss`` (a user's file or run was destroyed or
overwritten), ``code-execution`` (a file's contents ran as code), ``leak`` (another file's text or
the environment reached the output), ``wrong`` (exit 0 with a wrong or silent result, or a hang).
Every case runs the real command line in a fresh folder, on the real MNIST mirror.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("PIPELINE_DATA_MIRROR") or ROOT.parent / "shared" / "datasets")
SECRET = "audit-secret-7f3a9c"

TINY = """\
name: {name}
seed: 0
data:
  dataset: mnist
  subset: {{train_per_class: 20, test_per_class: 10}}
  validation: {{fraction: 0.2}}
model:
  input_shape: [1, 28, 28]
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 16, activation: relu}}
    - {{type: dense, units: 10, activation: softmax}}
optimizer: {{type: sgd, lr: 0.05}}
train: {{epochs: {epochs}, batch_size: 16}}
"""


@dataclass
class Result:
    rc: int | None
    out: str
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out


class Case:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.env = {
            **os.environ,
            "PIPELINE_ORCHESTRATION": "off",
            "PIPELINE_DATA_MIRROR": str(MIRROR),
            "PIPELINE_HOME": str(folder / ".home"),
            "PIPELINE_RUNS_DIR": str(folder / "runs"),
            "PYTHONPATH": str(ROOT),
            "AUDIT_SECRET": SECRET,
        }
        (folder / "dvc.yaml").write_text("stages: {}\n")  # the project's root marker

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def tiny(self, name: str = "tiny", epochs: int = 1, extra: str = "") -> Path:
        return self.write(f"{name}.yaml", TINY.format(name=name, epochs=epochs) + extra)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # a shell's background job ignores SIGINT, and Python keeps an ignored SIGINT ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def run(self, *args: str, timeout: float = 120) -> Result:
        start = time.perf_counter()
        proc = self.popen(*args)
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            rc = None
        # the case's folder name holds the case's name: keep it out of what is matched
        return Result(rc, out.replace(str(self.dir), "<dir>"), time.perf_counter() - start)


Outcome = tuple[str, str]
CASES: dict[str, tuple[str, Callable[[Case], Outcome]]] = {}


def case(group: str):
    def register(fn: Callable[[Case], Outcome]) -> Callable[[Case], Outcome]:
        CASES[fn.__name__] = (group, fn)
        return fn

    return register


def one_line_error(res: Result, *must: str) -> Outcome:
    """A bad input's expected answer: non-zero exit, no traceback, the words that locate it."""
    if res.rc is None:
        return "wrong", f"still running after {res.seconds:.0f} s (killed)"
    if res.traceback:
        return "traceback", last_line(res.out)
    if res.rc == 0:
        return "wrong", f"exit 0: {last_line(res.out)}"
    missing = [m for m in must if m.lower() not in res.out.lower()]
    if missing:
        return "wrong", f"exit {res.rc} but the message lacks {missing}: {last_line(res.out)}"
    return "clean", last_line(res.out)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "(no output)")[:160]


def trained(c: Case, name: str = "tiny", epochs: int = 1) -> Path:
    spec = c.tiny(name, epochs)
    res = c.run("train", str(spec), timeout=300)
    if res.rc != 0:
        raise RuntimeError(f"could not train the tiny spec: {last_line(res.out)}")
    return spec


def png(path: Path, pixels: list[list[int]], bits: int = 8) -> Path:
    """A grayscale PNG written by hand (8 or 16 bits), so the audit needs no imaging library."""
    height, width = len(pixels), len(pixels[0])
    fmt = ">" + ("B" if bits == 8 else "H") * width
    raw = b"".join(b"\0" + struct.pack(fmt, *row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


# ---- security -------------------------------------------------------------------------------


EVIL = """
import json, sys, torch
from typing import Tuple
class Evil(torch.nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.w = torch.zeros(1)
        self.target = target

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool, str]:
        return (self.w, self.training, self.target)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool, str]):
        self.w = state[0]
        self.training = state[1]
        self.target = state[2]
        # runs at torch.jit.load (used, so that TorchScript does not drop it as dead code)
        self.w = self.w + torch.from_file(self.target, True, 1).fill_(1) * 0

    def forward(self, x):
        used = torch.from_file(self.target, True, 1).fill_(2) * 0  # and at every call
        return x.flatten(1)[:, :10] + used

extra = {"pipeline.json": json.dumps(json.load(open(sys.argv[2]))["metadata"])}
torch.jit.save(torch.jit.script(Evil(sys.argv[1])), sys.argv[3], _extra_files=extra)
"""


@case("security")
def torchscript_runs_code(c: Case) -> Outcome:
    """A scripted module that writes a file when loaded and when called, carrying the metadata
    of a real export, so that nothing but its code tells it from ours."""
    spec = trained(c)
    c.run("export", str(spec), "--format", "onnx", timeout=300)
    meta = next((c.dir / "runs").rglob("export.json"))
    target = c.dir / "pwned"
    (c.dir / "evil.py").write_text(EVIL)  # TorchScript reads the module's source file
    args = [str(c.dir / "evil.py"), str(target), str(meta), str(c.dir / "model.pt")]
    subprocess.run([sys.executable, *args], check=True, env=c.env, capture_output=True)
    target.unlink(missing_ok=True)
    png(c.dir / "digit.png", [[0] * 28 for _ in range(28)])
    res = c.run("predict", str(c.dir / "model.pt"), str(c.dir / "digit.png"))
    if target.exists():
        return "code-execution", f"exit {res.rc}; {target.name} was written by the model file"
    return one_line_error(res, "model.pt")


def leaks(res: Result) -> bool:
    return "root:x:0:0" in res.out or SECRET in res.out


@case("security")
def extends_etc_passwd(c: Case) -> Outcome:
    spec = c.write("x.yaml", "extends: /etc/passwd\nname: x\n")
    res = c.run("validate", str(spec))
    return ("leak", last_line(res.out)) if leaks(res) else one_line_error(res, "extends")


@case("security")
def extends_proc_environ(c: Case) -> Outcome:
    spec = c.write("x.yaml", "extends: /proc/self/environ\nname: x\n")
    res = c.run("validate", str(spec))
    return ("leak", last_line(res.out)) if leaks(res) else one_line_error(res, "extends")


@case("security")
def reuse_spec_outside(c: Case) -> Outcome:
    spec = c.tiny(extra="")
    text = spec.read_text().replace(
        "    - {type: flatten}", "    - {type: reuse, spec: ../../../../../../etc/passwd}"
    )
    spec.write_text(text)
    res = c.run("validate", str(spec))
    return ("leak", last_line(res.out)) if leaks(res) else one_line_error(res, "reuse")


@case("security")
def server_pid_by_substring(c: Case) -> Outcome:
    bystander = subprocess.Popen(
        ["bash", "-c", "exec -a 'prefect worker start --pool audit' sleep 60"],
        start_new_session=True,
    )
    try:
        time.sleep(0.3)
        home = Path(c.env["PIPELINE_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        state = {
            "pid": bystander.pid,
            "url": "http://127.0.0.1:9/api",
            "prefect_home": str(home / "prefect"),
            "log": str(home / "server.log"),
            "started": time.time(),
        }
        (home / "prefect-server.json").write_text(json.dumps(state))
        res = c.run("server", "stop", timeout=60)
        time.sleep(0.5)
        if bystander.poll() is not None:
            return "data-loss", "an unrelated 'prefect worker' process was killed"
        return ("traceback", last_line(res.out)) if res.traceback else ("clean", last_line(res.out))
    finally:
        bystander.kill()


# ---- data loss ------------------------------------------------------------------------------


@case("data-loss")
def prepare_out_user_folder(c: Case) -> Outcome:
    spec = c.tiny()
    out = c.dir / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    res = c.run("prepare", str(spec), "--out", str(out))
    if not (out / "thesis.tex").exists():
        return "data-loss", f"exit {res.rc}; {out.name}/thesis.tex deleted"
    return one_line_error(res, "mine")


@case("data-loss")
def two_trains_at_once(c: Case) -> Outcome:
    spec = c.tiny(epochs=3)
    c.run("prepare", str(spec), timeout=300)
    first, second = c.popen("train", str(spec)), c.popen("train", str(spec))
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    rcs = [first.returncode, second.returncode]
    if rcs == [0, 0]:
        return "data-loss", "both runs exit 0 into the same folder"
    if any("Traceback" in o for o in outs):
        return "traceback", last_line(outs[rcs.index(max(rcs))])
    return "clean", last_line(outs[rcs.index(max(rcs))])


@case("data-loss")
def png_16_bit(c: Case) -> Outcome:
    path = png(c.dir / "deep.png", [[v * 256 for v in range(28)] for _ in range(28)], bits=16)
    code = (
        "import sys, numpy; from pathlib import Path; from pipeline.data.folders import decode;"
        "a = numpy.asarray(decode(Path(sys.argv[1]), 'L', None));"
        "print(int(a.max()), int(a.min()), float((a >= 255).mean()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=c.env, capture_output=True, text=True
    )
    if res.returncode:
        return "traceback", last_line(res.stderr)
    high, low, white = res.stdout.split()
    if float(white) > 0.5:
        return "wrong", f"{float(white):.1%} of pixels clipped to 255"
    return ("clean", f"max {high}, min {low}") if int(high) == 27 else ("wrong", res.stdout)


@case("data-loss")
def stale_checkpoint_temps(c: Case) -> Outcome:
    spec = trained(c)
    folder = c.dir / "runs" / "tiny" / "checkpoints"
    # what torch.save into a temp left when killed: this version's name, and the one before's
    stale = [folder / ".last.pt.k9x2a1bq.tmp.pt", folder / ".last.pt.k9x2a1bq.pt"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    res = c.run("train", str(spec), "--resume", timeout=300)
    if res.traceback:
        return "traceback", last_line(res.out)
    left = [p.name for p in stale if p.exists()]
    return ("wrong", f"stale temps stay: {left}") if left else ("clean", "removed")


# ---- resume and stops -----------------------------------------------------------------------


def _sigterm(c: Case, sig: int) -> Outcome:
    spec = c.tiny(epochs=200)
    c.run("prepare", str(spec), timeout=300)
    proc = c.popen("train", str(spec))
    last = c.dir / "runs" / "tiny" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return "wrong", "did not stop within 60 s of the signal"
    res = Result(proc.returncode, out, 0)
    return one_line_error(res, "--resume")


@case("resume")
def sigterm_during_training(c: Case) -> Outcome:
    return _sigterm(c, signal.SIGTERM)


@case("resume")
def ctrl_c_during_training(c: Case) -> Outcome:
    return _sigterm(c, signal.SIGINT)


@case("resume")
def resume_without_last(c: Case) -> Outcome:
    spec = c.tiny()
    res = c.run("train", str(spec), "--resume", timeout=300)
    if res.traceback:
        return "traceback", last_line(res.out)
    said = "fresh" in res.out.lower() or "no checkpoint" in res.out.lower()
    return ("clean", "says it starts fresh") if said else ("wrong", "silent")


@case("resume")
def early_stopping_resume_exact(c: Case) -> Outcome:
    extra = "  early_stopping: {monitor: val_accuracy, patience: 0, min_delta: 0.5}\n"
    spec_text = TINY.format(name="es", epochs=8).replace(
        "train: {epochs: 8, batch_size: 16}", "train:\n  epochs: 8\n  batch_size: 16\n" + extra
    )
    spec = c.write("es.yaml", spec_text)
    whole = c.run("train", str(spec), timeout=300)
    epochs_whole = json.loads((c.dir / "runs/es/train.json").read_text()).get("epochs")
    shutil.rmtree(c.dir / "runs")
    c.run("train", str(spec), "-S", "train.epochs=1", timeout=300)
    res = c.run("train", str(spec), "--resume", timeout=300)
    if whole.traceback or res.traceback:
        return "traceback", last_line(res.out)
    epochs_resumed = json.loads((c.dir / "runs/es/train.json").read_text()).get("epochs")
    if epochs_whole != epochs_resumed:
        return "wrong", f"uninterrupted stops after {epochs_whole}, resumed after {epochs_resumed}"
    return "clean", f"both stop after {epochs_whole} epochs"


# ---- tracebacks and limits ------------------------------------------------------------------


def _tiny_with(c: Case, old: str, new: str, name: str = "tiny") -> Path:
    spec = c.tiny(name)
    spec.write_text(spec.read_text().replace(old, new))
    return spec


@case("limits")
def filters_googol(c: Case) -> Outcome:
    spec = _tiny_with(
        c, "{type: dense, units: 16,", "{type: dense, units: " + "1" + "0" * 100 + ","
    )
    validate = c.run("validate", str(spec))
    if validate.rc == 0:
        return one_line_error(c.run("summary", str(spec)), "units")
    return one_line_error(validate, "units")


@case("limits")
def int_5000_digits(c: Case) -> Outcome:
    spec = _tiny_with(c, "units: 16,", "units: " + "7" * 5000 + ",")
    return one_line_error(c.run("validate", str(spec)), "units")


@case("limits")
def name_300_chars(c: Case) -> Outcome:
    spec = _tiny_with(c, "name: tiny", "name: " + "n" * 300)
    res = c.run("validate", str(spec))
    if res.rc == 0:
        return one_line_error(c.run("train", str(spec), timeout=300), "name")
    return one_line_error(res, "name")


def _bad_checkpoint(c: Case, payload: bytes | None, command: str) -> Outcome:
    spec = trained(c)
    best = c.dir / "runs" / "tiny" / "checkpoints"
    target = next(iter(sorted(best.glob("best*.pt"))), best / "last.pt")
    for path in best.glob("*.pt"):
        if payload is None:
            path.write_bytes(path.read_bytes()[:200])
        else:
            path.write_bytes(payload)
    args = {"resume": ("train", str(spec), "--resume"), "evaluate": ("evaluate", str(spec))}
    args["export"] = ("export", str(spec), "--format", "onnx")
    png(c.dir / "d.png", [[0] * 28 for _ in range(28)])
    args["predict"] = ("predict", str(spec), str(c.dir / "d.png"))
    res = c.run(*args[command], timeout=300)
    if (c.dir / "pwned").exists():
        return "code-execution", "the pickle ran"
    return one_line_error(res, target.parent.name)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@case("limits")
def pickle_checkpoint_evaluate(c: Case) -> Outcome:
    return _bad_checkpoint(c, pickle.dumps(_Evil()), "evaluate")


@case("limits")
def truncated_checkpoint_resume(c: Case) -> Outcome:
    return _bad_checkpoint(c, None, "resume")


@case("limits")
def empty_checkpoint_predict(c: Case) -> Outcome:
    return _bad_checkpoint(c, b"", "predict")


@case("limits")
def pickle_checkpoint_export(c: Case) -> Outcome:
    return _bad_checkpoint(c, pickle.dumps({"not": "a checkpoint"}), "export")


def _bad_onnx(c: Case, make: Callable[[Path], None]) -> Outcome:
    path = c.dir / "model.onnx"
    make(path)
    png(c.dir / "d.png", [[0] * 28 for _ in range(28)])
    return one_line_error(c.run("predict", str(path), str(c.dir / "d.png")), "model.onnx")


@case("limits")
def onnx_text(c: Case) -> Outcome:
    return _bad_onnx(c, lambda p: p.write_text("this is not a model\n"))


@case("limits")
def onnx_random_bytes(c: Case) -> Outcome:
    return _bad_onnx(c, lambda p: p.write_bytes(os.urandom(4096)))


@case("limits")
def onnx_renamed_torchscript(c: Case) -> Outcome:
    script = "import torch; torch.jit.save(torch.jit.script(torch.nn.Flatten()), 'model.onnx')"
    return _bad_onnx(c, lambda p: subprocess.run([sys.executable, "-c", script], cwd=c.dir))


def _doctored_export(c: Case, change: str) -> Outcome:
    """A real ONNX export of the tiny model whose pipeline metadata is replaced by ``change``
    (a Python expression of ``meta``: the new metadata, a string, or None for none)."""
    spec = trained(c)
    res = c.run("export", str(spec), "--format", "onnx", timeout=300)
    made = sorted((c.dir / "runs").rglob("*.onnx"))
    if res.rc or not made:
        raise RuntimeError(f"could not export: {last_line(res.out)}")
    script = f"""
import json, onnx
model = onnx.load({str(made[0])!r})
props = {{p.key: p.value for p in model.metadata_props}}
meta = json.loads(props["pipeline.json"])
new = {change}
del model.metadata_props[:]
if new is not None:
    text = new if isinstance(new, str) else json.dumps(new)
    model.metadata_props.add(key="pipeline.json", value=text)
onnx.save(model, "model.onnx")
"""
    source = change.__doc__ or ""
    subprocess.run(
        [sys.executable, "-c", script.replace("{change}", source)], cwd=c.dir, check=True
    )
    png(c.dir / "d.png", [[0] * 28 for _ in range(28)])
    return one_line_error(
        c.run("predict", str(c.dir / "model.onnx"), str(c.dir / "d.png")), "model.onnx"
    )


@case("limits")
def onnx_no_metadata(c: Case) -> Outcome:
    return _doctored_export(c, "None")


@case("limits")
def onnx_non_json_metadata(c: Case) -> Outcome:
    return _doctored_export(c, "'{not json'")


@case("limits")
def onnx_bad_metadata(c: Case) -> Outcome:
    return _doctored_export(c, "{**meta, 'classes': 7, 'mean': 'x'}")


@case("limits")
def onnx_huge_shape(c: Case) -> Outcome:
    return _doctored_export(c, "{**meta, 'image_shape': [1, 100000, 100000]}")


def _mounted(c: Case, options: str) -> Path | None:
    folder = c.dir / "mnt"
    folder.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)])
    return folder if ok.returncode == 0 else None


def _umount(folder: Path | None) -> None:
    if folder:
        subprocess.run(["umount", "-l", str(folder)])


def _train_into_mount(c: Case, options: str) -> Outcome:
    """Train with the runs folder on a tmpfs mounted with ``options`` (tiny, or read-only)."""
    spec = c.tiny()
    c.run("prepare", str(spec), timeout=300)
    folder = _mounted(c, options)
    if folder is None:
        return "skipped", "no tmpfs mount here"
    try:
        c.env["PIPELINE_RUNS_DIR"] = str(folder)
        return one_line_error(c.run("train", str(spec), timeout=300), "mnt")
    finally:
        _umount(folder)


@case("limits")
def disk_full(c: Case) -> Outcome:
    return _train_into_mount(c, "size=48k")


@case("limits")
def read_only_runs_folder(c: Case) -> Outcome:
    return _train_into_mount(c, "size=1m,ro")


@case("limits")
def model_beyond_memory(c: Case) -> Outcome:
    # 784 * 800k + 800k * 800k + 800k * 10 weights: ~640 billion, 2.3 TiB in fp32
    spec = _tiny_with(c, "units: 16,", "units: 800000}\n    - {type: dense, units: 800000,")
    res = c.run("validate", str(spec))
    if res.rc == 0:
        return "wrong", "validate accepts a model of ~640 billion parameters"
    return one_line_error(res, "GiB")


@case("limits")
def cuda_without_cuda(c: Case) -> Outcome:
    spec = _tiny_with(c, "batch_size: 16}", "batch_size: 16, device: cuda}")
    return one_line_error(c.run("train", str(spec), timeout=300), "cuda")


@case("limits")
def spec_50_mb(c: Case) -> Outcome:
    spec = c.tiny()
    with spec.open("a") as f:
        f.write("# " + "x" * 80 + "\n" * 1)
        for _ in range(600_000):
            f.write("# " + "x" * 80 + "\n")
    res = c.run("validate", str(spec), timeout=60)
    if res.rc is None:
        return "wrong", "validate still running after 60 s"
    return one_line_error(res, "MiB") if res.rc else ("wrong", f"accepted in {res.seconds:.0f} s")


@case("limits")
def epochs_1e9(c: Case) -> Outcome:
    spec = _tiny_with(c, "train: {epochs: 1,", "train: {epochs: 1000000000,")
    return one_line_error(c.run("validate", str(spec)), "epochs")


@case("limits")
def schedule_preview_1e9(c: Case) -> Outcome:
    spec = _tiny_with(c, "train: {epochs: 1,", "train: {epochs: 1000000000,")
    spec.write_text(spec.read_text() + "schedule: {type: cosine}\n")
    res = c.run("schedule-preview", str(spec), timeout=60)
    if res.rc is None:
        return "wrong", "schedule-preview still running after 60 s"
    return one_line_error(res, "epochs")


@case("limits")
def drop_last_batch_too_big(c: Case) -> Outcome:
    spec = _tiny_with(c, "batch_size: 16}", "batch_size: 4096, drop_last: true}")
    res = c.run("validate", str(spec))
    if res.rc == 0:
        res = c.run("train", str(spec), timeout=300)
    return one_line_error(res, "batch")


@case("limits")
def override_broken_yaml(c: Case) -> Outcome:
    res = c.run("validate", str(c.tiny()), "-S", "optimizer={type: sgd, lr: [1e-3")
    words = ("expected", "unclosed", "bracket", "flow", "while parsing", "end of stream")
    said = any(w in res.out.lower() for w in words)
    if res.rc and not res.traceback and not said:
        return "wrong", f"the YAML error of the override is lost: {last_line(res.out)}"
    return one_line_error(res, "optimizer")


@case("limits")
def server_stop_during_stage(c: Case) -> Outcome:
    spec = c.tiny(epochs=400)
    c.env["PIPELINE_ORCHESTRATION"] = "auto"
    c.run("prepare", str(spec), timeout=300)
    proc = c.popen("train", str(spec))
    last = c.dir / "runs" / "tiny" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    c.run("server", "stop", timeout=60)
    start = time.time()
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return "wrong", "the stage ran on 120 s after its server stopped"
    finally:
        c.run("server", "stop", timeout=60)
    if "Traceback (most recent call last)" in out:
        return "traceback", f"{out.count('Traceback (most recent')} tracebacks"
    took = time.time() - start
    if proc.returncode == 0:
        return "wrong", "exit 0"
    return ("clean", f"{took:.0f} s: {last_line(out)}") if took < 30 else ("wrong", f"{took:.0f} s")


@case("limits")
def ui_points_at_its_api(c: Case) -> Outcome:
    import urllib.request

    c.env["PIPELINE_ORCHESTRATION"] = "auto"
    start = c.run("server", "start", timeout=120)
    try:
        url = c.run("server", "url").out.strip().splitlines()[-1]
        base = url.removesuffix("/api")
        settings = json.loads(urllib.request.urlopen(base + "/ui-settings", timeout=10).read())
        api = settings.get("api_url")
        if api != url:
            return "wrong", f"the UI talks to {api}, the server is {url}"
        return "clean", f"ui-settings api_url {api}"
    except Exception as err:
        return "wrong", f"{type(err).__name__}: {err}; {last_line(start.out)}"
    finally:
        c.run("server", "stop", timeout=60)


# ---- correctness found by the feature audit -------------------------------------------------


@case("correctness")
def unfreeze_reused_inner(c: Case) -> Outcome:
    base = trained(c, "base")
    spec = c.write(
        "top.yaml",
        f"""\
        name: top
        data: {{dataset: mnist, subset: {{train_per_class: 20}}, validation: {{fraction: 0.2}}}}
        model:
          input_shape: [1, 28, 28]
          layers:
            - {{type: reuse, name: base, spec: {base.name}, drop_last: 1, trainable: false}}
            - {{type: dense, units: 10, activation: softmax}}
        optimizer: {{type: sgd, lr: 0.05}}
        train:
          batch_size: 16
          phases:
            - {{epochs: 1}}
            - {{epochs: 1, unfreeze: ["base.dense_1"]}}
        """,
    )
    listed = "base.dense_1" in c.run("summary", str(spec), "--expand").out
    res = c.run("validate", str(spec))
    if res.rc:
        return "wrong", f"summary lists base.dense_1: {listed}; validate: {res.out[-120:]}"
    return "clean", "validates"


@case("correctness")
def freeze_and_unfreeze(c: Case) -> Outcome:
    spec = _tiny_with(
        c,
        "train: {epochs: 1, batch_size: 16}",
        "train:\n  batch_size: 16\n  phases:\n"
        "    - {epochs: 1, freeze: [dense_1], unfreeze: [dense_1]}\n",
    )
    return one_line_error(c.run("validate", str(spec)), "dense_1")


def _npy_length(path: Path) -> int:
    """The first dimension of a .npy file, read from its header (no numpy needed)."""
    head = path.read_bytes()[:512].decode("latin1")
    shape = head.split("'shape':", 1)[1].split(")", 1)[0].strip(" (")
    return int(shape.split(",")[0])


@case("correctness")
def validation_fraction_with_subset(c: Case) -> Outcome:
    spec = c.tiny()
    res = c.run("prepare", str(spec), "--out", str(c.dir / "prepared"), timeout=300)
    if res.rc:
        return one_line_error(res)
    sizes = {}
    for labels in (c.dir / "prepared").rglob("*_y.npy"):
        sizes[labels.name.removesuffix("_y.npy")] = _npy_length(labels)
    val = sizes.get("val")
    if val is None:
        return "wrong", f"no validation split in {sorted(sizes)}"
    return ("clean", f"validation {val}") if int(val) <= 60 else ("wrong", f"validation {val}")


@case("correctness")
def restore_best_without_best(c: Case) -> Outcome:
    spec = _tiny_with(
        c,
        "train: {epochs: 1, batch_size: 16}",
        "train:\n  epochs: 1\n  batch_size: 16\n  early_stopping: {restore_best: true}\n"
        "  checkpoint: {best: false}\n",
    )
    return one_line_error(c.run("validate", str(spec)), "best")


@case("correctness")
def fold_nothing(c: Case) -> Outcome:
    spec = trained(c)
    res = c.run("export", str(spec), "--format", "onnx", "--fold", timeout=300)
    if res.traceback:
        return "traceback", last_line(res.out)
    said = "nothing" in res.out.lower() or "no batch norm" in res.out.lower()
    return ("clean", last_line(res.out)) if said else ("wrong", last_line(res.out))


@case("correctness")
def dead_fraction_of_flatten(c: Case) -> Outcome:
    spec = _tiny_with(c, "batch_size: 16}", "batch_size: 16, diagnostics: true}")
    res = c.run("train", str(spec), timeout=300)
    if res.rc:
        return one_line_error(res)
    import csv

    rows = []
    for table in (c.dir / "runs" / "tiny").rglob("diagnostics*.csv"):
        with table.open() as f:
            rows += [
                f"{r['layer']} dead_fraction {r['dead_fraction']}"
                for r in csv.DictReader(f)
                if r.get("layer", "").startswith("flatten") and r.get("dead_fraction")
            ]
    return ("wrong", rows[0][:120]) if rows else ("clean", "no dead_fraction for flatten")


@case("correctness")
def nan_first_epoch(c: Case) -> Outcome:
    spec = _tiny_with(c, "lr: 0.05", "lr: 1e30")
    res = c.run("train", str(spec), timeout=300)
    if res.traceback:
        return "traceback", last_line(res.out)
    lied = "checkpoint is kept" in res.out and not list((c.dir / "runs").rglob("last.pt"))
    if lied:
        return "wrong", "says a checkpoint is kept, none exists"
    if not (c.dir / "runs" / "tiny" / "train.json").exists():
        return "wrong", "no train.json after divergence"
    return one_line_error(res)


def _suggests(c: Case, old: str, new: str, want: str) -> Outcome:
    return _hint(c.run("validate", str(_tiny_with(c, old, new))), want)


def _hint(res: Result, want: str) -> Outcome:
    """A mistake's answer with the right did-you-mean, and no validation-library noise."""
    outcome = one_line_error(res)
    if outcome[0] != "clean":
        return outcome
    if "constrained-int" in res.out:
        return "wrong", "a validation-library line (constrained-int) beside the error"
    hints = [line.strip() for line in res.out.splitlines() if "did you mean" in line]
    if not any(want in h for h in hints):
        return "wrong", f"hint {hints[:1] or 'none'}, not {want}"
    return "clean", hints[0]


@case("correctness")
def suggest_relu(c: Case) -> Outcome:
    return _suggests(c, "activation: relu}", "activation: Relu}", "'relu'")


@case("correctness")
def suggest_categorical_crossentropy(c: Case) -> Outcome:
    return _suggests(
        c, "batch_size: 16}", "batch_size: 16, loss: categorical_crossentropy}", "'cross_entropy'"
    )


@case("correctness")
def suggest_random_rotation(c: Case) -> Outcome:
    spec = c.tiny(extra="augment:\n  transforms: [{type: random_rotation, degrees: 10}]\n")
    return _hint(c.run("validate", str(spec)), "'rotation'")


@case("correctness")
def padding_upper_case(c: Case) -> Outcome:
    spec = c.write(
        "pad.yaml",
        TINY.format(name="pad", epochs=1).replace(
            "    - {type: flatten}",
            "    - {type: conv2d, filters: 4, kernel_size: 3, padding: SAME}\n"
            "    - {type: flatten}",
        ),
    )
    return _hint(c.run("validate", str(spec)), "'same'")


@case("correctness")
def pool_size_tuple(c: Case) -> Outcome:
    spec = c.write(
        "pool.yaml",
        TINY.format(name="pool", epochs=1).replace(
            "    - {type: flatten}",
            "    - {type: max_pool2d, pool_size: (2, 2)}\n    - {type: flatten}",
        ),
    )
    res = c.run("validate", str(spec))
    outcome = one_line_error(res, "pool_size")
    if outcome[0] == "clean" and "constrained-int" in res.out:
        return "wrong", "a validation-library line (constrained-int) beside the error"
    return outcome


@case("correctness")
def ignore_checks_unknown(c: Case) -> Outcome:
    spec = c.tiny(extra="ignore_checks: [no_such_check]\n")
    return one_line_error(c.run("validate", str(spec)), "no_such_check")


@case("correctness")
def sigmoid_over_ten(c: Case) -> Outcome:
    spec = _tiny_with(c, "units: 10, activation: softmax", "units: 10, activation: sigmoid")
    return one_line_error(c.run("validate", "--strict", str(spec)), "sigmoid")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = args.only or list(CASES)
    rows = []
    for name in names:
        group, fn = CASES[name]
        with tempfile.TemporaryDirectory(prefix=f"audit-{name}-") as tmp:
            start = time.perf_counter()
            try:
                outcome, detail = fn(Case(Path(tmp)))
            except Exception as err:
                outcome, detail = "harness-error", f"{type(err).__name__}: {err}"[:160]
            seconds = time.perf_counter() - start
        rows.append({"case": name, "group": group, "outcome": outcome, "detail": detail})
        print(f"{group:<12} {name:<34} {outcome:<15} {seconds:5.1f}s  {detail}", flush=True)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    print("\ncases", len(rows), " ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
