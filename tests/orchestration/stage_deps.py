"""Which modules of the package each DVC stage's code can import, by static analysis (ast), and
whether dvc.yaml lists them as the stage's deps.

A stage's command is ``pipeline <command> ...``: its code is ``pipeline.cli.main`` and the
command's handler (what the parser sets). From there the analysis follows imports, at module
level and inside functions, transitively. In the layers that hold one function per stage or
command (``GRANULAR``: the CLI, the orchestration, the stages, the flows) it follows a function
only when the running code refers to it, so the train stage's code is not the prepare stage's;
everywhere else (the library) a module reached counts whole: every import in it, anywhere.

Two calls go through tables the ast cannot read, and are edges given here: ``main`` calls the
command's handler (the root), and the dispatch runs a stage function as its flow
(``pipeline.flows.FLOWS``): a stage function reached brings its flow.
"""

from __future__ import annotations

import ast
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import yaml

PACKAGE = "pipeline"
GRANULAR = ("pipeline.cli", "pipeline.orchestrate", "pipeline.stages", "pipeline.flows")

Unit = tuple[str, str | None]
"""(module, None): the module's top level runs; (module, name): its top-level def ``name`` runs
too. A module outside ``GRANULAR`` is always whole: (module, "*")."""
WHOLE = "*"


def _granular(module: str) -> bool:
    return any(module == g or module.startswith(g + ".") for g in GRANULAR)


class Package:
    """The package's modules, parsed once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, Path] = {}
        for f in sorted((root / PACKAGE).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            self.files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
        self.trees = {m: ast.parse(f.read_text(), str(f)) for m, f in self.files.items()}

    def is_package(self, module: str) -> bool:
        return self.files[module].name == "__init__.py"

    def absolute(self, module: str | None, level: int, current: str) -> str:
        """The absolute name an ``ImportFrom`` in ``current`` names."""
        if not level:
            return module or ""
        base = current.split(".") if self.is_package(current) else current.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def defs(self, module: str) -> dict[str, ast.AST]:
        return {
            n.name: n
            for n in self.trees[module].body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }

    def bindings(self, module: str, nodes: Iterable[ast.AST]) -> dict[str, Unit]:
        """The package names the import statements among ``nodes`` bind: name -> (module, attr),
        attr None for a module object."""
        bound: dict[str, Unit] = {}
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != PACKAGE:
                        continue
                    if alias.asname:
                        bound[alias.asname] = (self.existing(alias.name), None)
                    else:
                        bound[alias.name.split(".")[0]] = (PACKAGE, None)
            elif isinstance(node, ast.ImportFrom):
                target = self.absolute(node.module, node.level, module)
                if target.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    name = alias.asname or alias.name
                    bound[name] = (sub, None) if sub in self.files else (target, alias.name)
        return bound

    def existing(self, name: str) -> str:
        """The module ``name`` is, or is in (``a.b.c`` of a package ``a.b`` with no ``c``)."""
        while name not in self.files:
            name = name.rpartition(".")[0]
        return name


def _type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``, whose body never runs."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> list[ast.AST]:
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:``."""
    nodes, todo = [], [node]
    while todo:
        n = todo.pop()
        nodes.append(n)
        children = n.orelse if _type_checking(n) else ast.iter_child_nodes(n)  # type: ignore[attr-defined]
        todo.extend(children)
    return nodes


def _top_level(tree: ast.Module) -> list[ast.AST]:
    """The nodes of a module's top level, outside function and class bodies (decorators and
    defaults of top-level defs run at import too)."""
    nodes: list[ast.AST] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for expr in stmt.decorator_list:
                nodes.extend(_walk(expr))
        else:
            nodes.extend(_walk(stmt))
    return nodes


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


class Reach:
    """The modules the units run from ``roots`` can import; ``extra`` gives the edges the ast
    cannot see (a unit -> the units it runs through a table)."""

    def __init__(
        self,
        package: Package,
        roots: Iterable[Unit],
        extra: Callable[[Unit], Iterable[Unit]] = lambda _unit: (),
    ) -> None:
        self.package = package
        self.extra = extra
        self.via: dict[str, Unit] = {}  # module -> the unit that first reached it
        self._seen: set[Unit] = set()
        self._todo: list[tuple[Unit, Unit]] = [(self._unit(m, n), (m, n)) for m, n in roots]
        while self._todo:
            unit, parent = self._todo.pop()
            if unit in self._seen:
                continue
            self._seen.add(unit)
            self.via.setdefault(unit[0], parent)
            self._visit(unit)

    def _unit(self, module: str, name: str | None) -> Unit:
        return (module, name) if _granular(module) else (module, WHOLE)

    def _add(self, unit: Unit, parent: Unit) -> None:
        self._todo.append((self._unit(*unit), parent))

    def _visit(self, unit: Unit) -> None:
        module, name = unit
        pkg = self.package
        parent = module.rpartition(".")[0]
        if parent:
            self._add((parent, None), unit)  # importing a module runs its package's __init__
        tree = pkg.trees[module]
        if name == WHOLE:
            nodes = _walk(tree)
            for target in pkg.bindings(module, nodes).values():
                self._add(target, unit)
            self._add_imports(nodes, unit)
            return
        if name is None:
            nodes = _top_level(tree)
            self._add_imports(nodes, unit)
            # what the top level calls (a decorator, a check): a name only passed on (a stage
            # function handed to the decorator that registers its flow) is not run here
            calls = [n.func for n in nodes if isinstance(n, ast.Call)]
            self._add_references(module, calls, {}, unit)
        else:
            self._add((module, None), unit)
            node = pkg.defs(module).get(name)
            if node is None:  # a module-level object (a table, a constant): its top level
                return
            nodes = _walk(node)
            self._add_imports(nodes, unit)
            self._add_references(module, nodes, pkg.bindings(module, nodes), unit)
        for more in self.extra(unit):
            self._add(more, unit)

    def _add_imports(self, nodes: Iterable[ast.AST], unit: Unit) -> None:
        """An import statement runs the top level of every module it names."""
        pkg = self.package
        for node in nodes:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = pkg.absolute(node.module, node.level, unit[0])
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            for full in names:
                if full.split(".")[0] == PACKAGE:
                    self._add((pkg.existing(full), None), unit)

    def _add_references(
        self, module: str, nodes: Iterable[ast.AST], local: Mapping[str, Unit], unit: Unit
    ) -> None:
        """Every package name among the nodes (a call, a callback passed on): its unit."""
        pkg = self.package
        bound = {**pkg.bindings(module, pkg.trees[module].body), **local}
        own = pkg.defs(module)
        for node in nodes:
            if not isinstance(node, ast.Name | ast.Attribute) or isinstance(
                getattr(node, "ctx", None), ast.Store
            ):
                continue
            parts = _dotted(node)
            if not parts:
                continue
            head, *attrs = parts
            if head in bound:
                self._add(self._resolve(*bound[head], attrs), unit)
            elif head in own:  # a def of this module (a class's attributes are in its body)
                self._add((module, head), unit)

    def _resolve(self, module: str, attr: str | None, attrs: list[str]) -> Unit:
        """The unit ``module.attr.attrs...`` names: a submodule, a def, a re-exported name."""
        pkg = self.package
        names = ([attr] if attr else []) + attrs
        for i, name in enumerate(names):
            if f"{module}.{name}" in pkg.files:
                module = f"{module}.{name}"
                continue
            if not _granular(module) or name in pkg.defs(module):
                return (module, name)
            reexport = pkg.bindings(module, pkg.trees[module].body).get(name)
            if reexport is None:
                return (module, name)
            return self._resolve(*reexport, names[i + 1 :])
        return (module, None)

    def files(self) -> dict[str, str]:
        """Each module file reached (relative to the project), with the unit that reached it."""
        root = self.package.root
        return {
            self.package.files[m].relative_to(root).as_posix(): ":".join(filter(None, via))
            for m, via in self.via.items()
        }


def _stages(dvc_yaml: Path) -> dict[str, tuple[str, list[str]]]:
    """Each stage of dvc.yaml: its command (``${item}`` filled in) and its deps."""
    out = {}
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        body = stage.get("do", stage)
        cmd = body["cmd"].replace("${item}", "x")
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps") or []]
        out[name] = (cmd, [d.replace("${item}", "x") for d in deps])
    return out


def stage_roots(cmd: str) -> list[Unit]:
    """What ``pipeline <command> ...`` runs: ``pipeline.cli.main`` and the command's handler."""
    from pipeline.cli import parser

    argv = shlex.split(cmd)
    if argv[0] != "pipeline":
        raise ValueError(f"not a pipeline command: {cmd}")
    handler = parser().parse_args(argv[1:]).handler
    return [("pipeline.cli", "main"), (handler.__module__, handler.__name__)]


def flow_edges() -> Callable[[Unit], Iterable[Unit]]:
    """The dispatch's table: a stage function of ``pipeline.stages`` -> its flow's function."""
    from pipeline.flows import FLOWS

    flows = {stage.__name__: flow.fn.__name__ for stage, flow in FLOWS.items()}

    def edges(unit: Unit) -> Iterable[Unit]:
        if unit[0] == "pipeline.stages" and unit[1] in flows:
            return [("pipeline.flows", flows[unit[1]])]
        return []

    return edges


def problems(dvc_yaml: Path, root: Path) -> list[str]:
    """What is wrong with the code deps of dvc.yaml's stages: a module a stage's code can import
    that no dep of that stage covers, and a code dep that does not exist."""
    package = Package(root)
    edges = flow_edges()
    found = []
    for stage, (cmd, deps) in _stages(dvc_yaml).items():
        code = [d.rstrip("/") for d in deps if d.split("/")[0] == PACKAGE]
        found += [
            f"stage {stage!r}: the code dep {d} does not exist"
            for d in code
            if not (root / d).exists()
        ]
        reached = Reach(package, stage_roots(cmd), edges).files()
        for file, via in sorted(reached.items()):
            if not any(file == d or file.startswith(d + "/") for d in code):
                found.append(
                    f"stage {stage!r}: its code imports {file} (reached from {via}), "
                    "which no dep of the stage covers"
                )
    return found
