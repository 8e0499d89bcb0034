"""Every finished trial of a search as a DVC experiment, without running it again through DVC
and without touching the workspace.

A DVC experiment is a git commit whose parent is its baseline, under the ref
``refs/exps/<baseline sha[:2]>/<baseline sha[2:]>/<name>`` (``dvc.repo.experiments.refs``):
``dvc exp show`` reads its params and metrics files, ``dvc exp apply`` checks its files out.
:func:`record_trial` builds that commit with git's plumbing, from HEAD's tree and the trial's
files, in a temporary index under ``.dvc/tmp``: no worktree, no checkout, no write to the
user's files (they may be editing them) and none of DVC's ``refs/exps/exec`` refs, which one
``dvc exp run`` or ``dvc exp save`` in the workspace would share. ``dvc exp save`` itself needs
a checkout of every stage's outputs (the prepared data, the checkpoints) to commit and takes
DVC's repository lock; a commit of a few small files needs neither.

The experiment's files, for the base spec ``specs/<stem>.yaml`` of one of params.yaml's specs:

- the base spec with the trial's ``-S`` overrides written in (a comment on top names the trial),
  so ``dvc exp apply`` puts the trial's spec where ``dvc repro`` runs it;
- ``runs/<stem>/spec.yaml``, the resolved spec (what the ``resolve`` stage writes): the params
  ``dvc exp show`` lists;
- the trial's copies of the small outputs dvc.yaml declares for that spec outside DVC's cache
  (``live/metrics.json``, ``history.csv``, ``live/plots/metrics``; ``metrics.json``,
  ``confusion.csv``, ``training_curves.png`` when the trial was evaluated) and its ``run.json``;
  one the trial lacks is left out, so a trial never shows the baseline's test metrics.

``dvc.lock`` stays HEAD's: the trial's checkpoints are in its run folder, not in DVC's cache, so
after ``dvc exp apply`` ``dvc status`` reports the spec's stages changed and ``dvc repro``
retrains the trial (the same seed, the same spec).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

LOCK_NAME = "pipeline-search-experiments.lock"
"""Under the repository's ``.dvc/tmp``: one record at a time, across processes."""

_GIT_ENV_DROPPED = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX")


def _record_name() -> str:
    """The run record's file name (pipeline.run owns the layout): git-tracked beside the
    metrics, as the project's .gitignore keeps it."""
    from pipeline.run import Run

    return Run(Path(".")).record.name


class DvcExperimentError(PipelineError):
    """A trial that cannot be recorded as a DVC experiment; the message says why and what to
    do. The trial itself is unaffected: its run folder keeps every result."""


def in_dvc_repo(path: str | Path) -> Path | None:
    """The root of the git + DVC repository ``path`` lies in (the nearest folder at or above it
    holding ``.dvc/``), or None: no DVC, or DVC without git (no experiments there)."""
    start = Path(os.path.realpath(path))
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            top = _git_top(folder)
            if top is not None and (folder == top or top in folder.parents):
                return folder
            return None
    return None


def recorded(repo: Path) -> set[str]:
    """The names of the experiments the repository holds, on every baseline (what
    ``dvc exp list --all-commits --name-only`` lists), so a resumed search records a trial once."""
    from dvc.repo.experiments.refs import EXPS_NAMESPACE, ITER_SKIP_NAMESPACES, STASHES

    refs = _git(Path(repo), "for-each-ref", "--format=%(refname)", EXPS_NAMESPACE).splitlines()
    names = set()
    for ref in refs:
        if ref in STASHES or any(ref.startswith(f"{ns}/") for ns in ITER_SKIP_NAMESPACES):
            continue
        parts = ref.split("/")
        if len(parts) == 5:  # refs/exps/<2>/<38>/<name>
            names.add(parts[4])
    return names


def record_trial(
    repo: Path,
    *,
    base_file: Path,
    overrides: list[str],
    trial_run: Path,
    exp_name: str,
    message: str,
) -> str:
    """Record the trial trained in ``trial_run`` (the base spec with ``overrides``) as the DVC
    experiment ``exp_name`` on the current HEAD, with ``message`` as its commit message, and
    return its name. The workspace, the git index and HEAD are left as they are. The base spec
    is the workspace's file, or HEAD's when the user has edited the file since the trial
    trained (the trial's run.json says which is the spec it trained). Recording the same trial
    again changes nothing; an experiment of that name on this HEAD with other files is replaced
    (a search started afresh under the same name). Raises :class:`DvcExperimentError` when the
    base spec is not one the repository's DVC pipeline runs, neither file is what the trial
    trained, ``trial_run`` is no finished run folder or ``exp_name`` is no valid name."""
    from pipeline.spec.load import to_yaml

    repo = Path(os.path.realpath(repo))
    base_file = Path(os.path.realpath(base_file))
    trial_run = Path(trial_run)
    top = _git_top(repo)
    if top is None:
        raise DvcExperimentError(f"{repo} is not in a git repository: DVC experiments need git")
    try:
        rel = base_file.relative_to(repo).as_posix()
    except ValueError:
        raise DvcExperimentError(
            f"the base spec {base_file} is outside the DVC repository {repo}"
        ) from None
    prefix = PurePosixPath(repo.relative_to(top).as_posix())
    head = _head(top)
    ref = _ref(top, head, exp_name)
    layout = _layout(repo, head, rel)

    record = _trial_record(trial_run, exp_name)
    raw, spec = _trained_base(top, head, base_file, str(prefix / rel), overrides, record, exp_name)
    header = _header(exp_name, message, rel, overrides, _shown(trial_run, repo))
    texts = {
        rel: _spec_text(raw, base_file, overrides, spec.resolved(), header),
        layout.resolved: to_yaml(spec),
    }
    files = _trial_files(trial_run, layout)

    with _locked(repo):
        changes = _blobs(top, texts, files)
        gone = _tracked(top, head, [str(prefix / p) for p in layout.replaced])
        tree = _tree(
            top,
            repo,
            head,
            {**dict.fromkeys(gone), **{str(prefix / p): sha for p, sha in changes.items()}},
        )
        old = _git(top, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False).strip()
        if old and _git(top, "rev-parse", f"{old}^{{tree}}", f"{old}^").split() == [tree, head]:
            return exp_name  # recorded already, with these very files
        commit = _git(top, "commit-tree", tree, "-p", head, "-F", "-", input=message + "\n")
        _git(top, "update-ref", "-m", f"pipeline search: {exp_name}", ref, commit.strip(), old)
    return exp_name


# ---- where the trial's files go ---------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    folder: str  # runs/<stem>: the spec's run folder, relative to the DVC root
    resolved: str  # runs/<stem>/spec.yaml
    outputs: tuple[str, ...]  # the other git-tracked outputs dvc.yaml declares there

    @property
    def replaced(self) -> tuple[str, ...]:
        """Every path of HEAD's the experiment writes anew or leaves out."""
        return (self.resolved, *self.outputs, f"{self.folder}/{_record_name()}")


@functools.lru_cache(maxsize=16)
def _layout(repo: Path, head: str, rel: str) -> _Layout:
    """From HEAD's dvc.yaml (a commit never changes, so one read per HEAD): the stages whose
    command names the spec file, the resolved spec they take params from and their outputs
    kept out of DVC's cache (git's, so an experiment commit carries them)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(repo), rev=head) as dvc:
            root = dvc.root_dir
            stages = list(dvc.index.stages)
            ours = [s for s in stages if rel in _tokens(s.cmd)]
            params = {
                _rel(d.fs_path, root)
                for s in ours
                for d in s.deps
                if isinstance(d, ParamsDependency)
            }
            outs = [(_rel(o.fs_path, root), o) for s in ours for o in s.outs]
    except DvcException as err:
        raise DvcExperimentError(
            f"DVC cannot read the pipeline at HEAD ({head[:7]}): {err}"
        ) from None
    if not ours:
        items = sorted({s.name.partition("@")[2] for s in stages if "@" in (s.name or "")})
        runs = ", ".join(items) or "none"
        raise DvcExperimentError(
            f"{rel} is not in the DVC pipeline (the specs dvc.yaml runs at HEAD {head[:7]}: "
            f"{runs}), so its trials cannot be DVC experiments that `dvc repro` reruns: add "
            f"'{PurePosixPath(rel).stem}' to params.yaml `specs` and commit to record them (the "
            "trials' results are in their run folders either way)"
        )
    resolved = sorted(path for path, out in outs if path in params and not out.use_cache)
    if len(resolved) != 1:
        raise DvcExperimentError(
            f"dvc.yaml at HEAD {head[:7]} does not name one resolved spec of {rel} (an output of "
            f"its stages that is also their params file): found {resolved or 'none'}"
        )
    folder = str(PurePosixPath(resolved[0]).parent)
    kept = tuple(
        path
        for path, out in outs
        if not out.use_cache and path != resolved[0] and path.startswith(f"{folder}/")
    )
    return _Layout(folder, resolved[0], kept)


def _tokens(cmd: Any) -> list[str]:
    cmds = cmd if isinstance(cmd, list) else [cmd or ""]
    try:
        return [t for c in cmds for t in shlex.split(c)]
    except ValueError:
        return [t for c in cmds for t in c.split()]


def _rel(path: str, root: str) -> str:
    return PurePosixPath(os.path.relpath(path, root)).as_posix()


def _trial_files(trial_run: Path, layout: _Layout) -> dict[str, Path]:
    """Each declared output the trial has (a folder: every file in it), by its place in the
    experiment."""
    files: dict[str, Path] = {}
    for path in (*layout.outputs, f"{layout.folder}/{_record_name()}"):
        source = trial_run / PurePosixPath(path).relative_to(layout.folder)
        if source.is_file():
            files[path] = source
        elif source.is_dir():
            for f in sorted(source.rglob("*")):
                if f.is_file():
                    files[f"{path}/{f.relative_to(source).as_posix()}"] = f
    return files


def _trial_record(trial_run: Path, exp_name: str) -> dict[str, Any]:
    from pipeline.run import Run

    run = Run(trial_run)
    record, live = run.record, run.live_metrics
    if not record.is_file() or not live.is_file():
        missing = (record if not record.is_file() else live).relative_to(trial_run)
        raise DvcExperimentError(
            f"{exp_name}: {trial_run} is not a finished trial's run folder (no {missing})"
        )
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DvcExperimentError(f"{exp_name}: cannot read {record}: {err}") from None


def _trained_base(
    top: Path,
    head: str,
    base_file: Path,
    in_git: str,
    overrides: Sequence[str],
    record: dict[str, Any],
    exp_name: str,
) -> tuple[Any, Spec]:
    """The base spec as the trial trained it, its raw tree and the spec with the overrides:
    the workspace's file, or HEAD's when the user has edited it since (the trial's run.json
    says which resolves to what it trained; its name aside, which changes nothing trained)."""
    from pipeline.spec import yamlio
    from pipeline.spec.errors import SpecError
    from pipeline.spec.load import load_spec_text

    trained = _jsonable(record.get("spec"))
    if not isinstance(trained, dict):
        raise DvcExperimentError(f"{exp_name}: the trial's run.json records no resolved spec")
    found: list[str] = []
    for where in ("the workspace", "HEAD"):
        try:
            if where == "HEAD":
                text = _git(top, "show", f"{head}:{in_git}")
            else:
                text = base_file.read_text(encoding="utf-8-sig")
            raw = yamlio.load_text(text, str(base_file))
            spec = load_spec_text(text, overrides, file=str(base_file), base_dir=base_file.parent)
        except (OSError, UnicodeDecodeError, SpecError, DvcExperimentError) as err:
            found.append(f"{where}'s does not load: {str(err).strip()}")
            continue
        now = _jsonable(spec.resolved())
        differ = sorted(
            k for k in now.keys() | trained.keys() if k != "name" and now.get(k) != trained.get(k)
        )
        if not differ:
            return raw, spec
        found.append(f"{where}'s differs in {', '.join(differ)}")
    raise DvcExperimentError(
        f"{exp_name}: neither the workspace's {base_file.name} nor HEAD's, with the trial's "
        f"overrides, is the spec the trial trained (its run.json): {'; '.join(found)}. Not "
        "recorded; the trial's run folder keeps its results"
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ---- the spec file as the experiment holds it -------------------------------------------------


def _header(exp_name: str, message: str, rel: str, overrides: Sequence[str], run: str) -> str:
    lines = [
        f"DVC experiment {exp_name}: a trial of a pipeline search",
        f"(its run folder: {run})",
        *message.splitlines(),
        f"{rel} with the trial's values:" if overrides else f"{rel} as it is:",
        *(f"  -S {o}" for o in overrides),
    ]
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def _spec_text(
    raw: Any, base_file: Path, overrides: Sequence[str], resolved: Any, header: str
) -> str:
    """The base file's own tree (its ``extends`` kept) with the overrides set, as YAML, checked
    to resolve to the very spec the trial trained."""
    import yaml

    from pipeline.spec.errors import SpecError
    from pipeline.spec.load import apply_overrides, load_spec_text, parse_override

    candidates = []
    tree, problems = apply_overrides(raw, overrides)
    if not problems:
        candidates.append(tree)
    # under `extends`, a section the file leaves out comes from its base: set only the keys
    # (apply_overrides would start the section afresh from the schema's default type)
    plain = _plain(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = plain
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        node[path[-1]] = value
    candidates.append(plain)
    want = _jsonable(resolved)
    for candidate in candidates:
        body = yaml.safe_dump(
            _plain(candidate), sort_keys=False, default_flow_style=None, width=100
        )
        text = header + body
        try:
            spec = load_spec_text(text, file=str(base_file), base_dir=base_file.parent)
        except SpecError:
            continue
        if _jsonable(spec.resolved()) == want:
            return text
    raise DvcExperimentError(
        f"cannot write {base_file.name} with the overrides {list(overrides)} so that it resolves "
        "to the trial's spec"
    )


def _plain(value: Any) -> Any:
    """A loaded (located) tree as plain dicts and lists, for yaml.safe_dump."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _shown(path: Path, repo: Path) -> str:
    try:
        return Path(os.path.realpath(path)).relative_to(repo).as_posix()
    except ValueError:
        return str(path)


# ---- git ---------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROPPED}
    return env | extra


def _git(
    cwd: Path,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(cwd), *args],
            input=input,
            capture_output=True,
            text=True,
            env=env or _env(),
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DvcExperimentError(f"git {args[0]} failed: {err}") from None
    if check and proc.returncode != 0:
        raise DvcExperimentError(f"git {args[0]} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _git_top(folder: Path) -> Path | None:
    try:
        out = _git(folder, "rev-parse", "--show-toplevel").strip()
    except DvcExperimentError:
        return None
    return Path(os.path.realpath(out)) if out else None


def _head(top: Path) -> str:
    head = _git(top, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False).strip()
    if not head:
        raise DvcExperimentError(
            f"the git repository {top} has no commit yet: commit the project first (an "
            "experiment is based on one)"
        )
    return head


def _ref(top: Path, head: str, name: str) -> str:
    """The experiment's ref, checked by DVC's rules (git's ref-name rules, and no ``/``)."""
    from dvc.repo.experiments.refs import ExpRefInfo

    ref = str(ExpRefInfo(head, name))
    proc = subprocess.run(["git", "check-ref-format", ref], capture_output=True, env=_env())
    if not name or "/" in name or proc.returncode != 0:
        raise DvcExperimentError(
            f"{name!r} cannot name a DVC experiment: a name follows git's branch-name rules "
            "(no '/', spaces, '..', '~', '^', ':', '?', '*', '[' or '\\\\', not ending in "
            "'.lock' or '.'); e.g. letters, digits, '-' and '_'"
        )
    return ref


def _blobs(top: Path, texts: dict[str, str], files: dict[str, Path]) -> dict[str, str]:
    """Each text and file written into git's object store: its blob's sha, by path."""
    out = {p: _git(top, "hash-object", "-w", "--stdin", input=t).strip() for p, t in texts.items()}
    if files:
        paths = list(files)
        shas = _git(
            top,
            "hash-object",
            "-w",
            "--no-filters",
            "--stdin-paths",
            input="".join(f"{files[p].resolve()}\n" for p in paths),
        ).split()
        out |= dict(zip(paths, shas, strict=True))
    return out


def _tracked(top: Path, head: str, paths: Sequence[str]) -> list[str]:
    """HEAD's files at or under ``paths``."""
    listed = _git(top, "ls-tree", "-r", "-z", "--name-only", "--full-tree", head, "--", *paths)
    return [p for p in listed.split("\0") if p]


def _tree(top: Path, repo: Path, head: str, changes: dict[str, str | None]) -> str:
    """HEAD's tree with ``changes`` (path: blob sha, or None to leave it out), built in an
    index of its own under .dvc/tmp: git's index and the workspace stay as they are."""
    with tempfile.TemporaryDirectory(prefix="exp-index-", dir=_tmp(repo)) as tmp:
        env = _env(GIT_INDEX_FILE=str(Path(tmp) / "index"))
        _git(top, "read-tree", head, env=env)
        zero = "0" * len(head)
        lines = [
            f"0 {zero}\t{p}" if sha is None else f"100644 {sha}\t{p}" for p, sha in changes.items()
        ]
        _git(top, "update-index", "--index-info", input="".join(f"{x}\n" for x in lines), env=env)
        return _git(top, "write-tree", env=env).strip()


def _tmp(repo: Path) -> Path:
    tmp = repo / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


@contextlib.contextmanager
def _locked(repo: Path) -> Iterator[None]:
    """One record at a time in this repository (parallel trials finish together)."""
    with open(_tmp(repo) / LOCK_NAME, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
