"""Safe, located YAML loading for spec files: YAML 1.2 core scalars, no tags, no bombs.

It builds the located trees of ``pipeline.spec.located``; their helpers (copy, merge, locate)
are re-exported, so loading and locating are one import for the loader.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml import nodes

from pipeline.spec.errors import Mark, Problem, SpecError
from pipeline.spec.located import MappingNode, SequenceNode, copy_node, key_mark, locate, mapping

__all__ = [
    "MAX_BYTES",
    "MAX_INT_DIGITS",
    "MAX_NODES",
    "MappingNode",
    "SequenceNode",
    "copy_node",
    "key_mark",
    "load_file",
    "load_text",
    "locate",
    "mapping",
]

MAX_NODES = 100_000  # values after alias expansion; far above any real spec, far below a bomb
MAX_BYTES = 1 << 20  # a spec is a few KiB; 1 MiB is refused before parsing (50 MB took 140 s)
MAX_INT_DIGITS = 32  # an int64 has 19; Python refuses to read more than 4300

_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TAG_MESSAGE = "tags are not allowed in a spec (a spec can never construct objects or run code)"


class _Recursive(Exception):
    """An alias used inside the very node its anchor names (would be an infinite tree)."""

    def __init__(self, yaml_mark: Any) -> None:
        self.yaml_mark = yaml_mark


class _Loader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    yaml.resolver.Resolver,
):
    """Scanner, parser and composer only: with no constructor, nothing can build objects."""

    yaml_implicit_resolvers: ClassVar[dict] = {}  # our own table: YAML 1.2 core, not 1.1

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.open_anchors: set[str] = set()

    def compose_node(self, parent: Any, index: Any) -> nodes.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            # PyYAML happily builds cyclic node graphs; stop at the alias that closes the loop.
            if event.anchor in self.open_anchors:
                raise _Recursive(event.start_mark)
            return super().compose_node(parent, index)
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        node = super().compose_node(parent, index)
        self.open_anchors.discard(event.anchor)
        if event.tag is not None:  # the composer folds it into node.tag: remember it was explicit
            node.explicit_tag = event.tag  # type: ignore[attr-defined]
        return node


for _tag, _pattern, _first in [
    (_NULL, r"(?:~|null|Null|NULL|)\Z", ["~", "n", "N", ""]),
    (_BOOL, r"(?:true|True|TRUE|false|False|FALSE)\Z", list("tTfF")),
    (_INT, r"(?:[-+]?[0-9]+(?:_[0-9]+)*|0o[0-7]+|0x[0-9a-fA-F]+)\Z", list("-+0123456789")),
    (
        _FLOAT,
        r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z",
        list("-+0123456789."),
    ),
]:
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def _digits(text: str) -> int:
    return sum(ch.isalnum() for ch in text.removeprefix("0x").removeprefix("0o"))


def _scalar(node: nodes.ScalarNode) -> Any:
    text = node.value
    if node.tag == _NULL:
        return None
    if node.tag == _BOOL:
        return text.lower() == "true"
    if node.tag == _INT:
        text = text.replace("_", "")
        if text[:2] in ("0o", "0x"):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)
    if node.tag == _FLOAT:
        low = text.lower().lstrip("+")
        return float(low.replace(".inf", "inf").replace(".nan", "nan"))
    return text  # timestamps, quoted values, explicit-tag leftovers: all strings


class _Builder:
    """Turns composed nodes into Mapping/SequenceNodes, collecting every problem on the way."""

    def __init__(self, file: str, lines: list[str]) -> None:
        self.file, self.lines = file, lines
        self.problems: dict[tuple, Problem] = {}  # keyed so an aliased subtree reports once

    def mark(self, yaml_mark: Any) -> Mark:
        return Mark(self.file, yaml_mark.line + 1, yaml_mark.column + 1, self.lines)

    def problem(
        self, message: str, path: tuple, mark: Mark | None, code: str, hint: str | None = None
    ) -> None:
        line = self.lines[mark.line - 1] if mark and 0 < mark.line <= len(self.lines) else None
        self.problems.setdefault(
            (message, mark), Problem(message, path, mark, code=code, hint=hint, source_line=line)
        )

    def size(self, node: nodes.Node, memo: dict[int, int]) -> int:
        """Node count after alias expansion, memoised so a bomb is measured, never expanded."""
        if id(node) in memo:
            return memo[id(node)]
        children: list = []
        if isinstance(node, nodes.SequenceNode):
            children = node.value
        elif isinstance(node, nodes.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1 + sum(self.size(child, memo) for child in children)
        memo[id(node)] = total
        return total

    def build(self, node: nodes.Node, path: tuple) -> Any:
        mark = self.mark(node.start_mark)
        tag = getattr(node, "explicit_tag", None)
        if tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            self.problem(
                f"{_TAG_MESSAGE}; found '{shown}'",
                path,
                mark,
                "yaml-tag",
                "remove the tag and write a plain value (quote it to force a string)",
            )
        if isinstance(node, nodes.ScalarNode):
            if tag is None and node.tag == _INT and _digits(node.value) > MAX_INT_DIGITS:
                self.problem(
                    f"an integer of {_digits(node.value)} digits is too large for a spec "
                    f"(at most {MAX_INT_DIGITS})",
                    path,
                    mark,
                    "int-too-large",
                    "write a smaller number (quote it to make it a string)",
                )
                return 0
            return str(node.value) if tag is not None else _scalar(node)
        if isinstance(node, nodes.SequenceNode):
            seq = SequenceNode(mark=mark)
            for i, item in enumerate(node.value):
                seq.append(self.build(item, (*path, i)))
                seq.item_marks.append(self.mark(item.start_mark))
            return seq
        out = MappingNode(mark=mark)
        for key_node, value_node in node.value:
            kmark = self.mark(key_node.start_mark)
            key = self.build(key_node, path) if isinstance(key_node, nodes.ScalarNode) else None
            if (
                isinstance(key_node, nodes.ScalarNode)
                and key_node.value == "<<"
                and key_node.style is None
            ):
                self.problem(
                    "merge keys ('<<') are not supported in a spec",
                    path,
                    kmark,
                    "merge-key",
                    "use 'extends:' to reuse another spec or section",
                )
                continue
            if not isinstance(key, str):
                shown = key_node.value if isinstance(key_node, nodes.ScalarNode) else "[...]"
                self.problem(
                    f"keys must be strings, got {shown!r}",
                    path,
                    kmark,
                    "key-type",
                    "quote the key, e.g. '1': ..., or use a name",
                )
                continue
            if key in out:
                first = out.key_marks[key].line
                self.problem(
                    f"duplicate key '{key}' (first at line {first})",
                    (*path, key),
                    kmark,
                    "duplicate-key",
                    "keep one of them; a later one would silently replace the earlier one",
                )
                continue
            out.key_marks[key] = kmark
            out.value_marks[key] = self.mark(value_node.start_mark)
            out[key] = self.build(value_node, (*path, key))
        return out


def _fail(
    builder: _Builder, message: str, mark: Mark | None, code: str, hint: str | None = None
) -> SpecError:
    builder.problem(message, (), mark, code, hint)
    return SpecError(builder.problems.values())


def _syntax_problem(b: _Builder, err: yaml.MarkedYAMLError) -> SpecError:
    ymark = err.problem_mark or err.context_mark
    mark = b.mark(ymark) if ymark else Mark(b.file, 1, 1)
    context = err.context or ""
    if context and err.context_mark:
        context += f" at line {err.context_mark.line + 1}"
    message = "invalid YAML: " + ", ".join(p for p in (context, err.problem) if p)
    hint = None
    if "'\\t'" in str(err.problem):
        line = b.lines[mark.line - 1] if mark.line <= len(b.lines) else ""
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        hint = (
            "indent with spaces; YAML forbids tabs for indentation"
            if "\t" in indent
            else "replace the tab with spaces (PyYAML rejects a tab after ':' too)"
        )
    return _fail(b, message, mark, "yaml-syntax", hint)


def too_large(size: int | None, what: str, file: str) -> SpecError:
    """The error for a spec text of ``size`` bytes (None: unknown) over :data:`MAX_BYTES`."""
    figure = f"{size / (1 << 20):.1f} MiB ({size} bytes)" if size else "larger than that"
    return SpecError(
        [
            Problem(
                f"{what} is too large: a spec may be at most {MAX_BYTES // (1 << 20)} MiB, "
                f"this one is {figure}",
                mark=Mark(file, 1, 1),
                code="too-large",
                hint="a spec is a few KiB of settings: keep data out of it",
            )
        ]
    )


def load_text(text: str, file: str = "<string>", *, require_mapping: bool = True) -> Any:
    """Parse one YAML document into Mapping/SequenceNodes and plain scalars; raise SpecError."""
    if len(text) > MAX_BYTES // 4 and len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise too_large(len(text.encode("utf-8", "replace")), f"the spec {file}", file)
    b, loader = _Builder(file, text.splitlines()), None
    start = Mark(file, 1, 1, b.lines)
    try:
        loader = _Loader(text)
        root = loader.get_node() if loader.check_node() else None
        if loader.check_node():
            raise _fail(
                b,
                "one YAML document per spec",
                b.mark(loader.peek_event().start_mark),
                "multiple-documents",
                "merge the documents into one mapping",
            )
        if root is None or (
            isinstance(root, nodes.ScalarNode)
            and root.tag == _NULL
            and getattr(root, "explicit_tag", None) is None
        ):
            if not require_mapping:
                return None
            raise _fail(
                b, "the spec is empty; a spec is a mapping like `name: ...`", start, "empty"
            )
        memo: dict[int, int] = {}
        total = b.size(root, memo)
    except yaml.MarkedYAMLError as err:
        raise _syntax_problem(b, err) from None
    except _Recursive as rec:
        raise _fail(
            b,
            "an alias is used inside the node its anchor names (recursive structure)",
            b.mark(rec.yaml_mark),
            "alias-recursive",
        ) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise _fail(
            b,
            f"invalid YAML: {err.reason} (character #x{err.character:04x})",
            Mark(file, line, column, b.lines),
            "yaml-syntax",
            "remove the character",
        ) from None
    except RecursionError:
        raise _fail(b, "the YAML is nested too deeply", start, "yaml-syntax") from None
    finally:
        if loader is not None:
            loader.dispose()
    if total > MAX_NODES and total > len(memo):  # only aliases can make a tree outgrow its text
        raise _fail(
            b,
            f"alias expansion too large (possible billion-laughs bomb): {total} "
            f"values > {MAX_NODES}",
            b.mark(root.start_mark),
            "alias-bomb",
            "reuse fewer anchors, or use 'extends:'",
        )
    value = b.build(root, ())
    if b.problems and isinstance(root, nodes.ScalarNode):
        raise SpecError(b.problems.values())  # what is wrong with it says more than its kind
    if require_mapping and not isinstance(value, MappingNode):
        got = "a list" if isinstance(value, list) else f"the scalar {value!r}"
        b.problem(
            f"a spec must be a mapping of sections (name, data, model, ...), got {got}",
            (),
            b.mark(root.start_mark),
            "not-mapping",
            "write `name: ...` at the top",
        )
    if b.problems:
        raise SpecError(b.problems.values())
    return value


def load_file(path: str | Path, *, require_mapping: bool = True) -> Any:
    """Read a UTF-8 spec file and load it; unreadable or undecodable files raise SpecError."""
    file = str(path)
    try:
        with open(path, "rb") as f:  # at most one byte over the bound: never a whole huge file
            data = f.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                size = os.fstat(f.fileno()).st_size
                raise too_large(size if size > MAX_BYTES else None, file, file)
    except FileNotFoundError:
        raise SpecError([Problem(f"spec file not found: {file}", code="file-not-found")]) from None
    except OSError as err:
        raise SpecError(
            [
                Problem(
                    f"cannot read spec file {file}: {err.strerror or err}", code="file-unreadable"
                )
            ]
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        message = f"{file} is not UTF-8 text (byte 0x{data[err.start]:02x})"
        raise SpecError(
            [
                Problem(
                    message,
                    mark=Mark(file, line, column),
                    code="encoding",
                    hint="save the file as UTF-8",
                )
            ]
        ) from None
    return load_text(text, file, require_mapping=require_mapping)
