"""Read manifest files into ``Manifest`` objects that remember where each field was written.

Loading never raises on bad input: a file that cannot be read becomes
diagnostics, and the other files still load. Hostile input is bounded before
it can cost much: files over ``MAX_FILE_BYTES`` are not parsed, nesting is
capped at ``MAX_DEPTH``, alias expansion at ``MAX_VALUES`` and a file's documents at
``MAX_DOCUMENTS``. Whatever is refused says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import yaml

from gitmesh.apis.kinds import CLUSTER_SCOPED
from gitmesh.objects import Location, Manifest, Path
from gitmesh.revision.diagnostics import Diagnostic, field_path

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 100_000
MAX_DOCUMENTS = 10_000
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# libyaml composes nodes recursively in C; past a few thousand levels it would
# overflow the C stack. Files that might nest that deep are measured on the
# (flat) event stream first.
_COMPOSE_SAFE_DEPTH = 2_000
_SCAN_ABOVE_BYTES = 64 * 1024

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_LOCATE_BY_CONTEXT = frozenset({"while scanning a quoted scalar", "while scanning a simple key"})
# libyaml 0.2.6 (in the PyYAML 6.0.4 wheels) stops at 1,000 levels by itself, before our own count.
_LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_ctor = yaml.constructor.SafeConstructor()
_SCALARS: dict[str, Callable[[yaml.ScalarNode], Any]] = {
    "tag:yaml.org,2002:null": _ctor.construct_yaml_null,
    "tag:yaml.org,2002:bool": _ctor.construct_yaml_bool,
    "tag:yaml.org,2002:int": _ctor.construct_yaml_int,
    "tag:yaml.org,2002:float": _ctor.construct_yaml_float,
    # Kubernetes reads YAML as JSON, where a timestamp is just a string.
    "tag:yaml.org,2002:timestamp": lambda node: node.value,
}


class _Loader(yaml.CSafeLoader):
    """libyaml's parser, with each distinct short scalar's implicit tag resolved once.

    Resolving is regex matching in Python for every scalar, and manifests repeat the
    same keys and values thousands of times; for the safe loader the answer depends
    on the scalar alone.
    """

    _resolved: ClassVar[dict[tuple[str, tuple[bool, bool]], str]] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        if kind is not yaml.ScalarNode or len(value) > 64:
            return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
        key = (value, implicit)
        tag = self._resolved.get(key)
        if tag is None:
            if len(self._resolved) >= 100_000:
                self._resolved.clear()
            tag = self._resolved[key] = str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
        return tag


@dataclass(frozen=True)
class RevisionFile:
    """A file of a revision, to load: its repo-relative path, its size, and its bytes (empty when
    over the limit)."""

    path: str
    size: int
    data: bytes


@dataclass(frozen=True)
class Loaded:
    manifests: tuple[Manifest, ...]
    diagnostics: tuple[Diagnostic, ...]


def is_manifest_path(path: str) -> bool:
    return path.endswith(MANIFEST_SUFFIXES)


def load_files(files: Iterable[RevisionFile]) -> Loaded:
    manifests: list[Manifest] = []
    diagnostics: list[Diagnostic] = []
    for f in files:
        found, problems = load_file(f)
        manifests.extend(found)
        diagnostics.extend(problems)
    return Loaded(tuple(manifests), tuple(diagnostics))


def load_file(f: RevisionFile) -> tuple[list[Manifest], list[Diagnostic]]:
    """All objects in one file, with namespaces inferred, or the diagnostics that stopped it."""
    manifests, diagnostics = parse_file(f)
    return _infer_namespaces(manifests), diagnostics


def parse_file(f: RevisionFile, max_bytes: int = MAX_FILE_BYTES) -> tuple[list[Manifest], list[Diagnostic]]:
    """All objects in one file as written, or the diagnostics that stopped it."""
    here = Location(f.path)
    if f.size > max_bytes:
        return [], [Diagnostic(here, "GM003", f"file is {f.size:,} bytes; the limit is {max_bytes:,}")]
    if b"\0" in f.data:
        return [], [Diagnostic(here, "GM002", "file contains NUL bytes: it looks binary")]
    try:
        text = f.data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = f.data.count(b"\n", 0, e.start) + 1
        return [], [Diagnostic(Location(f.path, line), "GM002", f"not UTF-8: byte 0x{f.data[e.start]:02x}")]

    too_big = _scan_events(text, f.path) if _needs_event_scan(f.data) else None
    if too_big is not None:
        return [], [too_big]

    manifests: list[Manifest] = []
    diagnostics: list[Diagnostic] = []
    loader = _Loader(text)
    documents = 0
    try:
        while loader.check_node():
            documents += 1
            if documents > MAX_DOCUMENTS:
                return [], [
                    Diagnostic(here, "GM009", f"more than {MAX_DOCUMENTS:,} documents; none of them is used")
                ]
            node = loader.get_node()
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
                continue  # an empty document (a stray ---, or only comments)
            builder = _Builder(f.path)
            value = builder.build(node)
            diagnostics.extend(builder.problems)
            if builder.problems:
                continue
            manifests.extend(_objects(value, builder.positions, _loc(f.path, node), diagnostics))
    except yaml.MarkedYAMLError as e:
        # An unclosed quote, or a key missing its colon, is best shown where it starts; anything else
        # where the parser stopped.
        mark = e.problem_mark or e.context_mark
        if e.context in _LOCATE_BY_CONTEXT and e.context_mark:
            mark = e.context_mark
        loc = _loc(f.path, mark) if mark else here
        at_tab = e.problem_mark is not None and text[e.problem_mark.index : e.problem_mark.index + 1] == "\t"
        if e.problem == _LIBYAML_TOO_DEEP:
            diagnostics.append(Diagnostic(loc, "GM004", f"nesting deeper than {MAX_DEPTH} levels"))
        else:
            diagnostics.append(Diagnostic(loc, "GM001", _yaml_message(e, at_tab)))
    except yaml.YAMLError as e:
        diagnostics.append(Diagnostic(here, "GM001", str(e)))
    finally:
        loader.dispose()
    return manifests, diagnostics


def _objects(
    value: Any, positions: dict[Path, tuple[int, int]], start: Location, diagnostics: list[Diagnostic]
) -> list[Manifest]:
    """The objects of one document: the document itself, or the items of a List."""
    if not isinstance(value, dict):
        diagnostics.append(Diagnostic(start, "GM008", f"expected an object, found {_json_type(value)}"))
        return []
    if value.get("kind") == "List" and isinstance(value.get("items"), list):
        out = []
        for i, item in enumerate(value["items"]):
            prefix = ("items", i)
            here = Location(start.file, *positions[prefix]) if prefix in positions else start
            if not isinstance(item, dict):
                diagnostics.append(
                    Diagnostic(here, "GM008", f"List item is {_json_type(item)}, not an object")
                )
                continue
            sub = {p[2:]: loc for p, loc in positions.items() if p[:2] == prefix}
            out.append(Manifest(item, here, sub))
        return out
    return [Manifest(value, start, positions)]


def _infer_namespaces(manifests: list[Manifest]) -> list[Manifest]:
    """Objects without a namespace take the one Namespace object defined in the same file."""
    names = [
        m.obj["metadata"].get("name")
        for m in manifests
        if m.obj.get("kind") == "Namespace" and isinstance(m.obj.get("metadata"), dict)
    ]
    if len(names) != 1 or not isinstance(names[0], str):
        return manifests
    return default_namespace(manifests, names[0])


def default_namespace(manifests: list[Manifest], namespace: str) -> list[Manifest]:
    """``manifests``, the namespaced ones that name no namespace now in ``namespace``."""
    for m in manifests:
        meta = m.obj.get("metadata")
        if isinstance(meta, dict) and not meta.get("namespace") and m.obj.get("kind") not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
    return manifests


class _Builder:
    """Turns one composed YAML node tree into JSON-like values without recursion.

    Aliased nodes are built once and shared, but counted at their expanded size,
    so an alias bomb is refused before anything downstream walks it.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[Path, tuple[int, int]] = {}
        self.problems: list[Diagnostic] = []
        self._built: dict[int, Any] = {}
        self._sizes: dict[int, int] = {}
        self._merged: dict[int, list[tuple[yaml.Node, yaml.Node]]] = {}
        self._merging: set[int] = set()
        self._count = 0

    def build(self, root: yaml.Node) -> Any:
        # The hot loop of loading a repo: it runs once per value, so it avoids repeated lookups.
        holder: list[Any] = [None]
        stack: list[tuple[yaml.Node, Path, Any, Any]] = [(root, (), holder, 0)]
        built = self._built
        while stack:
            node, path, parent, slot = stack.pop()
            if len(path) > MAX_DEPTH:
                self._fail(node, path, "GM004", f"nesting deeper than {MAX_DEPTH} levels")
                break
            if type(node) is yaml.ScalarNode:
                self._count += 1
                parent[slot] = node.value if node.tag == _STR else self._scalar(node, path)
            elif id(node) in built:  # an alias: share the value, count its full size
                self._count += self._size(node)
                parent[slot] = built[id(node)]
            else:
                self._count += 1
                parent[slot] = built[id(node)] = self._collection(node, path, stack)
            if self._count > MAX_VALUES:
                self._fail(node, path, "GM005", f"document expands to more than {MAX_VALUES:,} values")
            if self.problems:
                break
        return holder[0]

    def _collection(self, node: yaml.Node, path: Path, stack: list[tuple[yaml.Node, Path, Any, Any]]) -> Any:
        """An empty list or dict for ``node``; its children are pushed on ``stack`` to fill it."""
        if node.tag not in _COLLECTION_TAGS:
            self._fail(node, path, "GM006", f"tag {node.tag} has no JSON form")
            return None
        positions = self.positions
        if type(node) is yaml.SequenceNode:
            children = node.value
            items: list[Any] = [None] * len(children)
            for i in range(len(children) - 1, -1, -1):
                child = children[i]
                at = (*path, i)
                mark = child.start_mark
                positions[at] = (mark.line + 1, mark.column + 1)
                stack.append((child, at, items, i))
            return items
        mapping: dict[str, Any] = {}
        # Past the tag check, anything not a sequence is a mapping.
        for key_node, child in reversed(self._pairs(cast(yaml.MappingNode, node), path)):
            key = key_node.value
            at = (*path, key)
            mark = key_node.start_mark
            positions[at] = (mark.line + 1, mark.column + 1)
            stack.append((child, at, mapping, key))
        return mapping

    def _pairs(self, node: yaml.MappingNode, path: Path, depth: int = 0) -> list[tuple[yaml.Node, yaml.Node]]:
        """Key/value node pairs with merge keys (<<) resolved; explicit keys win over merged ones.

        Each mapping is flattened once (memoised), so repeated merges cost nothing extra.
        """
        pairs: list[tuple[yaml.Node, yaml.Node]] = node.value
        if not any(k.tag == _MERGE for k, _ in pairs):
            seen: set[str] = set()
            for key_node, _ in pairs:
                if type(key_node) is not yaml.ScalarNode:
                    self._fail(key_node, path, "GM006", "mapping keys must be strings")
                    return []
                if key_node.value in seen:
                    self._fail(
                        key_node, (*path, key_node.value), "GM007", f"key {key_node.value!r} appears twice"
                    )
                    return []
                seen.add(key_node.value)
            return pairs
        if id(node) in self._merged:
            return self._merged[id(node)]
        explicit: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self._merging.add(id(node))
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode) or id(src) in self._merging:
                        self._fail(key_node, path, "GM006", "a merge key (<<) must refer to another mapping")
                        return []
                    if depth >= MAX_DEPTH:
                        self._fail(
                            key_node, path, "GM004", f"merge keys (<<) chained deeper than {MAX_DEPTH}"
                        )
                        return []
                    for k, v in self._pairs(src, path, depth + 1):
                        merged.setdefault(k.value, (k, v))
                    if self.problems:
                        return []
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(key_node, path, "GM006", "mapping keys must be strings")
                return []
            if key_node.value in explicit:
                self._fail(
                    key_node, (*path, key_node.value), "GM007", f"key {key_node.value!r} appears twice"
                )
                return []
            explicit[key_node.value] = (key_node, value_node)
        self._merging.discard(id(node))
        flat = list({**merged, **explicit}.values())
        self._merged[id(node)] = flat
        return flat

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag == _STR:
            return node.value
        construct = _SCALARS.get(node.tag)
        if construct is None:
            self._fail(node, path, "GM006", f"tag {node.tag} has no JSON form")
            return None
        try:
            value = construct(node)
        except (ValueError, KeyError, IndexError, yaml.YAMLError):
            self._fail(
                node, path, "GM006", f"{node.value[:40]!r} cannot be read as {node.tag.rpartition(':')[2]}"
            )
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self._fail(node, path, "GM006", f"{node.value} is not a finite number")
        return value

    def _size(self, node: yaml.Node) -> int:
        """Expanded number of values under ``node``, memoised so shared subtrees cost once."""
        todo = [node]
        open_: set[int] = set()
        while todo:
            n = todo[-1]
            if id(n) in self._sizes:
                todo.pop()
                continue
            children = _children(n)
            missing = [c for c in children if id(c) not in self._sizes]
            if any(id(c) in open_ for c in missing):  # an alias inside its own anchor
                return MAX_VALUES + 1
            if missing:
                open_.add(id(n))
                todo.extend(missing)
                continue
            todo.pop()
            self._sizes[id(n)] = 1 + sum(self._sizes[id(c)] for c in children)
        return self._sizes[id(node)]

    def _fail(self, node: yaml.Node, path: Path, code: str, message: str) -> None:
        self.problems.append(Diagnostic(_loc(self.file, node), code, message, field_path(path)))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _needs_event_scan(data: bytes) -> bool:
    """Large files, and files that might nest past what libyaml composes safely, are measured first.

    Composing nodes costs about 700 bytes a value, before the builder can count
    them; below 64 KiB that is bounded anyway. Nesting needs a bracket, a '- ',
    a '? ' or more indentation per level, which bounds it cheaply from the bytes.
    """
    if len(data) > _SCAN_ABOVE_BYTES:
        return True
    bound = sum(data.count(t) for t in (b"[", b"{", b"- ", b"-\n", b"? ")) + math.isqrt(2 * len(data)) + 1
    return bound > _COMPOSE_SAFE_DEPTH


def _scan_events(text: str, file: str) -> Diagnostic | None:
    """Nesting depth and values per document, on the flat event stream, before anything is composed."""
    depth = count = 0
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            # depth counts open collections: a collection's field path is ``depth`` long, as in
            # _Builder. Scalars are left to _Builder, which sees keys and values apart.
            if isinstance(event, yaml.DocumentStartEvent):
                count = 0
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.NodeEvent):
                if isinstance(event, yaml.CollectionStartEvent):
                    if depth > MAX_DEPTH:
                        return Diagnostic(
                            _loc(file, event), "GM004", f"nesting deeper than {MAX_DEPTH} levels"
                        )
                    depth += 1
                count += 1
                if count > MAX_VALUES:
                    return Diagnostic(
                        _loc(file, event), "GM005", f"document has more than {MAX_VALUES:,} values"
                    )
    except yaml.YAMLError:
        return None  # the real parse reports the syntax error with its position
    return None


def _loc(file: str, where: Any) -> Location:
    mark = getattr(where, "start_mark", where)
    return Location(file, mark.line + 1, mark.column + 1)


def _yaml_message(e: yaml.MarkedYAMLError, at_tab: bool) -> str:
    text = "; ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
    return text + " (a tab: YAML indents with spaces only)" if at_tab else text


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list"}.get(
        type(value), type(value).__name__
    )
