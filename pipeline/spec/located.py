"""Located trees: the dicts and lists a spec file loads into, remembering where each mapping,
key, value and item is written, so any problem found later (in blocks, defaults, validation)
points at its line. ``pipeline.spec.yamlio`` builds them; the resolvers copy and merge them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.spec.errors import Mark, PathPart


class MappingNode(dict):
    """A dict that remembers where it, each of its keys and each of its values are written."""

    __slots__ = ("key_marks", "mark", "value_marks")

    def __init__(
        self,
        items: Any = (),
        /,
        *,
        mark: Mark | None = None,
        key_marks: dict[str, Mark] | None = None,
        value_marks: dict[str, Mark] | None = None,
    ) -> None:
        super().__init__(items)
        self.mark = mark
        self.key_marks = dict(key_marks or {})
        self.value_marks = dict(value_marks or {})

    def __copy__(self) -> MappingNode:
        return MappingNode(
            self, mark=self.mark, key_marks=self.key_marks, value_marks=self.value_marks
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> MappingNode:
        return copy_node(self)


class SequenceNode(list):
    """A list that remembers where it and each of its items are written."""

    __slots__ = ("item_marks", "mark")

    def __init__(
        self, items: Any = (), /, *, mark: Mark | None = None, item_marks: Any = ()
    ) -> None:
        super().__init__(items)
        self.mark = mark
        self.item_marks: list[Mark] = list(item_marks)

    def __copy__(self) -> SequenceNode:
        return SequenceNode(self, mark=self.mark, item_marks=self.item_marks)

    def __deepcopy__(self, memo: dict[int, Any]) -> SequenceNode:
        return copy_node(self)


def mapping(
    items: dict,
    mark: Mark | None = None,
    key_marks: dict[str, Mark] | None = None,
    value_marks: dict[str, Mark] | None = None,
) -> MappingNode:
    """A MappingNode for a merged tree; values that are nodes lend their own mark by default."""
    vmarks = {k: v.mark for k, v in items.items() if isinstance(v, MappingNode | SequenceNode)}
    vmarks = {k: m for k, m in vmarks.items() if m is not None} | dict(value_marks or {})
    return MappingNode(items, mark=mark, key_marks=key_marks, value_marks=vmarks)


def copy_node(value: Any) -> Any:
    """Deep copy of a loaded tree, keeping every mark (marks are immutable, so shared)."""
    if isinstance(value, MappingNode):
        return MappingNode(
            {k: copy_node(v) for k, v in value.items()},
            mark=value.mark,
            key_marks=value.key_marks,
            value_marks=value.value_marks,
        )
    if isinstance(value, SequenceNode):
        return SequenceNode(
            [copy_node(v) for v in value], mark=value.mark, item_marks=value.item_marks
        )
    if isinstance(value, dict):
        return {k: copy_node(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_node(v) for v in value]
    return value  # scalars from YAML are immutable


def _walk(root: Any, path: Sequence[PathPart], want_key: bool) -> Mark | None:
    """Walk a key path as far as it exists, remembering the most precise mark seen."""
    best = getattr(root, "mark", None)
    try:
        node, parts = root, list(path)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, MappingNode):
                if str(part) not in node:
                    if last:
                        break
                    continue  # pydantic puts union-tag names into paths; skip what isn't there
                marks = node.key_marks if want_key and last else node.value_marks
                mark, node = marks.get(str(part)), node[str(part)]
            elif (
                isinstance(node, SequenceNode)
                and isinstance(part, int)
                and 0 <= part < min(len(node), len(node.item_marks))
            ):
                mark, node = node.item_marks[part], node[part]
            else:
                break  # through a scalar (its own mark is best) or a part that does not fit
            best = mark or getattr(node, "mark", None) or best
    except Exception:  # locating serves error messages: it must never raise one of its own
        pass
    return best


def locate(root: Any, path: Sequence[PathPart]) -> Mark | None:
    """Best mark for a key path: the value's, else that of the deepest existing part."""
    return _walk(root, path, want_key=False)


def key_mark(root: Any, path: Sequence[PathPart]) -> Mark | None:
    """Like locate, but where the final key itself is written (for 'unknown key' errors)."""
    return _walk(root, path, want_key=True)
