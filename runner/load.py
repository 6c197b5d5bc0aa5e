"""Loading: a YAML campaign file becomes plain data plus the line:col of every value and key.

Later stages never see YAML; they see dicts, lists and scalars, and ask the returned
`SourceDocument` where a JSON path stands so they can print `file:line:col: error: ...`.
Nothing here raises: every way a file can be wrong (unreadable, not UTF-8, bad YAML,
YAML that reads as something the author did not mean) becomes a `Diagnostic`.

Choices worth knowing about:

* The stream is parsed twice: once as events, which is flat and cheap, to refuse
  what would hurt the composer (nesting deeper than `MAX_DEPTH`, several documents,
  undefined, duplicate or self-containing anchors) with a precise location; then
  composed into nodes, from which the data is built here rather than by PyYAML's
  constructor, so every value keeps its mark.
* Timestamps stay the strings the author wrote; later stages parse dates themselves.
* Aliases are expanded into independent copies; a value reached through an alias is
  located at its anchor, where an edit would have to be made. Merge keys (`<<: *base`)
  work as in PyYAML: explicit keys win, then earlier merged mappings.
* Tags beyond the JSON-like core (`!!binary`, `!!set`, `!custom`, ...) are reported as
  `yaml-unsupported-tag`; the value is kept (a scalar as its text) so loading goes on.
* Syntax messages come from the parser in use (libyaml's wording when the C loader is
  available), reduced to one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import MarkedYAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.files import FileRefused, FileTooLarge, read_regular
from runner.model import Diagnostic, JsonPath, Location, Position, Severity, SourceDocument

# libyaml when PyYAML was built with it: faster, and its messages are the ones users
# see elsewhere. Read at call time, so the pure-Python loader can be exercised too.
LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_DEPTH = 200
# Campaign files arrive through pull requests; these bound what one can cost before
# anything is parsed. 4 MiB holds about 45,000 inline recipients with a name and a
# correlation id each; audiences larger than that belong in recipient files.
MAX_FILE_BYTES = 4 * 1024 * 1024
# Values in the file as written (plain data): beyond a realistic campaign, within what
# loads in a few seconds.
MAX_NODES = 1_000_000
# Values added by expanding aliases and merge keys: a few anchors can otherwise expand
# exponentially (an "alias bomb") from a file of a few hundred bytes.
MAX_EXPANDED_NODES = 100_000

_TAG = "tag:yaml.org,2002:"
_TEXT_TAGS = {_TAG + "str", _TAG + "timestamp", _TAG + "value", _TAG + "merge"}
_KINDS = {_TAG + "int": "an integer", _TAG + "float": "a number", _TAG + "bool": "a boolean", _TAG + "null": "null"}
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BOM = "\ufeff"


class _Mark(Protocol):
    """What PyYAML's and libyaml's marks share; both count lines, columns and index in characters."""

    line: int
    column: int
    index: int


class _Fatal(Exception):
    """Stops building when going on would be unbounded (alias bombs, runaway depth)."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def load_document(path: Path, display_name: str | None = None) -> tuple[SourceDocument | None, list[Diagnostic]]:
    """Reads bytes, not text, so a file that is not UTF-8 is located instead of failing to open."""
    name = str(path) if display_name is None else display_name
    try:
        raw = read_regular(path, MAX_FILE_BYTES)
    except FileTooLarge as error:
        return None, [_too_big(name, error)]
    except FileRefused as error:
        return None, [_error(Location(name), f"cannot read file: {error.reason}", "file-unreadable")]
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return None, [_error(Location(name), f"cannot read file: {reason}", "file-unreadable")]
    return load_text(raw, path, name)


def _too_big(name: str, error: FileTooLarge) -> Diagnostic:
    """Refused by size before parsing: a 42 MB file costs the parser minutes and gigabytes."""
    size = f"{error.size:,} bytes" if error.size is not None else "larger than that"
    return _error(
        Location(name),
        f"the file is {size}; a campaign file may hold at most {MAX_FILE_BYTES:,} bytes",
        "file-too-large",
        "put large audiences in a recipient file (`recipients: [{file: audience.csv}]`), which has no size limit",
    )


def load_text(
    text: str | bytes, path: Path, display_name: str | None = None
) -> tuple[SourceDocument | None, list[Diagnostic]]:
    """Takes text as well as bytes so callers (and tests) need no file; `path` only names the source."""
    name = str(path) if display_name is None else display_name
    try:
        return _load(text, path, name)
    except Exception as error:  # noqa: BLE001 - callers rely on "never raises"; say what broke
        message = " ".join(f"cannot load the file: {type(error).__name__}: {error}".split())
        return None, [_error(Location(name), message, "load-internal-error", "this is a bug in campaign-runner")]


def _load(text: str | bytes, path: Path, name: str) -> tuple[SourceDocument | None, list[Diagnostic]]:
    if isinstance(text, bytes):
        decoded = _decode(text, name)
        if isinstance(decoded, Diagnostic):
            return None, [decoded]
        text = decoded
    text = text.removeprefix(_BOM)
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        code = ord(bad.group())
        location = _location_at(name, text, bad.start())
        if 0xD800 <= code <= 0xDFFF:
            message = f"the text holds a lone surrogate U+{code:04X}, which is not Unicode"
            return None, [_error(location, message, "file-encoding", "save the file as UTF-8")]
        escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        return None, [
            _error(
                location,
                f"control character U+{code:04X} is not allowed in YAML",
                "yaml-syntax",
                f"remove it, or write it as {escape} inside a double-quoted string",
            )
        ]
    loader = LOADER
    problem = _check_events(text, name, loader)
    if problem is not None:
        return None, [problem]
    try:
        root = yaml.compose(text, Loader=loader)
    except MarkedYAMLError as error:
        return None, [_syntax_error(error, text, name)]
    except RecursionError:
        return None, [_error(Location(name, 1, 1), "the document is nested too deeply", "yaml-too-deep")]
    if root is None or _is_empty(root):
        return None, [_empty(name)]
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else _scalar_kind(root)
        return None, [
            _error(
                _loc(name, root.start_mark),
                f"the top level of the file is {kind}, not a mapping",
                "yaml-not-mapping",
                "a campaign file is a mapping of keys to values, such as `id: spring-sale`",
            )
        ]
    builder = _Builder(text, name)
    try:
        data = builder.value(root, (), True)
    except _Fatal as fatal:
        return None, _sorted(builder.diagnostics + [fatal.diagnostic])
    except RecursionError:
        fatal_diag = _error(Location(name, 1, 1), "the document is nested too deeply", "yaml-too-deep")
        return None, _sorted(builder.diagnostics + [fatal_diag])
    document = SourceDocument(
        path=path,
        display_name=name,
        data=data,
        value_positions=builder.value_positions,
        key_positions=builder.key_positions,
        raw_scalars=builder.raw_scalars,
    )
    return document, _sorted(builder.diagnostics)


def _decode(raw: bytes, name: str) -> str | Diagnostic:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _error(Location(name, 1, 1), "the file is UTF-16, not UTF-8", "file-encoding", "save the file as UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        prefix = raw[: error.start].decode("utf-8").removeprefix(_BOM)
        return _error(
            _location_at(name, prefix, len(prefix)),
            f"the file is not valid UTF-8: byte 0x{raw[error.start]:02x}: {error.reason}",
            "file-encoding",
            "save the file as UTF-8",
        )


def _check_events(text: str, name: str, loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader]) -> Diagnostic | None:
    """Refuses, from the flat event stream, what the recursive composer should never see."""
    documents = 0
    depth = 0
    anchors: dict[str, Location] = {}
    open_anchors: list[str | None] = []
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    return _error(
                        _loc(name, event.start_mark),
                        "the file holds more than one YAML document",
                        "yaml-multiple-documents",
                        "a campaign file is one document; remove this `---` or split the file",
                    )
            elif isinstance(event, yaml.AliasEvent):
                alias = str(event.anchor)
                if alias not in anchors:
                    return _error(
                        _loc(name, event.start_mark),
                        f"alias *{alias} refers to no anchor defined before it",
                        "yaml-alias",
                        f"define `&{alias}` on a value earlier in the file",
                    )
                if alias in open_anchors:
                    return _error(
                        _loc(name, event.start_mark),
                        f"alias *{alias} is inside the value it refers to",
                        "yaml-alias",
                        "a value cannot contain itself",
                    )
            elif isinstance(event, yaml.NodeEvent):
                anchor = event.anchor
                if anchor is not None:
                    if anchor in anchors:
                        first = anchors[anchor]
                        return _error(
                            _loc(name, event.start_mark),
                            f"anchor &{anchor} is defined twice",
                            "yaml-alias",
                            f"the first is at line {first.line}, column {first.col}; rename one",
                        )
                    anchors[anchor] = _loc(name, event.start_mark)
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    open_anchors.append(anchor)
                    if depth > MAX_DEPTH:
                        return _too_deep(_loc(name, event.start_mark))
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                open_anchors.pop()
    except MarkedYAMLError as error:
        return _syntax_error(error, text, name)
    except yaml.YAMLError as error:  # a ReaderError for something the pre-check let through
        return _error(Location(name), _first_line(error), "yaml-syntax")
    if documents == 0:
        return _empty(name)
    return None


class _Builder:
    """Turns composed nodes into plain data, recording marks and diagnostics on the way."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.value_positions: dict[JsonPath, Position] = {}
        self.key_positions: dict[JsonPath, Position] = {}
        self.raw_scalars: dict[JsonPath, str] = {}
        self.diagnostics: list[Diagnostic] = []
        self.nodes = 0
        self.expanded = 0  # values built again through an alias or merge key
        self.expanding = 0  # > 0 while inside a collection built before (an alias's copy)
        self.collections: set[int] = set()  # ids of the collection nodes built so far
        self.top: tuple[str, _Mark] | None = None  # the top-level key being built, to blame for a bomb
        self.constructor = SafeConstructor()

    def value(self, node: Node, path: JsonPath, record: bool) -> Any:
        """`record` is False for values that lose to a later duplicate key: checked, not kept."""
        self.count(node)
        if len(path) > MAX_DEPTH:
            raise _Fatal(_too_deep(_loc(self.name, node.start_mark)))
        if record:
            self.value_positions[path] = _position(node.start_mark)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path, record)
        again = id(node) in self.collections  # the composer hands an alias its anchor's node
        self.collections.add(id(node))
        self.expanding += again
        try:
            return self.collection(node, path, record)
        finally:
            self.expanding -= again

    def collection(self, node: Node, path: JsonPath, record: bool) -> Any:
        if node.tag not in (_TAG + "map", _TAG + "seq"):
            self.unsupported(node)
        if isinstance(node, SequenceNode):
            return [self.value(item, (*path, index), record) for index, item in enumerate(node.value)]
        assert isinstance(node, MappingNode)
        result: dict[str, Any] = {}
        winners: dict[str, tuple[Node, Node]] = {}
        firsts: dict[str, _Mark] = {}
        losers: list[tuple[str, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                continue
            key = self.key(key_node)
            first = firsts.setdefault(key, key_node.start_mark)
            if key in winners:
                self.diagnostics.append(
                    _error(
                        _loc(self.name, key_node.start_mark),
                        f"duplicate key {key!r}",
                        "yaml-duplicate-key",
                        f"{key!r} is first defined at line {first.line + 1}; the later value would replace it",
                    )
                )
                losers.append((key, winners[key][1]))
            winners[key] = (key_node, value_node)
        for key, (key_node, value_node) in self.merged(node, depth=len(path)).items():
            winners.setdefault(key, (key_node, value_node))
        for key, value_node in losers:
            self.value(value_node, (*path, key), False)
        for key, (key_node, value_node) in winners.items():
            if record:
                self.key_positions[(*path, key)] = _position(key_node.start_mark)
            if not path:
                self.top = (key, key_node.start_mark)
            result[key] = self.value(value_node, (*path, key), record)
        return result

    def count(self, node: Node, merged: bool = False) -> None:
        """Bounds the work, which aliases and merge keys can make exponential in the text.

        Plain data and expansion have separate budgets, so that a long list of inline
        recipients is told to move to a recipient file, not suspected of an alias bomb.
        """
        self.nodes += 1
        if self.expanding or merged:
            self.expanded += 1
        where, mark = ("", node.start_mark) if self.top is None else (f" (reached in {self.top[0]!r})", self.top[1])
        if self.expanded > MAX_EXPANDED_NODES:
            raise _Fatal(
                _error(
                    _loc(self.name, mark),
                    f"aliases expand the document by more than {MAX_EXPANDED_NODES:,} values{where}",
                    "yaml-too-large",
                    "an anchor is expanded through aliases too many times (an alias bomb?)",
                )
            )
        if self.nodes > MAX_NODES:
            raise _Fatal(
                _error(
                    _loc(self.name, mark),
                    f"the document holds more than {MAX_NODES:,} values{where}",
                    "yaml-too-large",
                    "put large audiences in a recipient file (`recipients: [{file: audience.csv}]`)",
                )
            )

    def merged(self, node: MappingNode, depth: int) -> dict[str, tuple[Node, Node]]:
        """The pairs `<<` brings into `node`, earlier sources winning, as PyYAML's flatten_mapping does."""
        pairs: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag != _TAG + "merge":
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.diagnostics.append(
                        _error(
                            _loc(self.name, source.start_mark),
                            "a merge key `<<` takes a mapping or a list of mappings",
                            "yaml-merge",
                            "write `<<: *anchor` where the anchor names a mapping",
                        )
                    )
                    continue
                self.count(source, merged=True)
                if depth + 1 > MAX_DEPTH:
                    raise _Fatal(_too_deep(_loc(self.name, source.start_mark)))
                own = {self.key(k): (k, v) for k, v in source.value if k.tag != _TAG + "merge"}
                for key, pair in [*own.items(), *self.merged(source, depth + 1).items()]:
                    pairs.setdefault(key, pair)
        return pairs

    def key(self, node: Node) -> str:
        """Mapping keys must be strings; any other key is reported and kept as its source text."""
        if not isinstance(node, ScalarNode):
            text = self.text[node.start_mark.index : node.end_mark.index]
            key = " ".join(text.split())
            self.diagnostics.append(
                _error(
                    _loc(self.name, node.start_mark),
                    f"a key here is a {'list' if isinstance(node, SequenceNode) else 'mapping'}, not a string",
                    "yaml-key-not-string",
                    "mapping keys must be plain names",
                )
            )
            return key
        key = str(node.value)
        if node.tag in _KINDS:
            shown = repr(key) if key else "(empty)"
            self.diagnostics.append(
                _error(
                    _loc(self.name, node.start_mark),
                    f"the key {shown} was read as {_KINDS[node.tag]}, not a string",
                    "yaml-key-not-string",
                    f"quote the key: \"{key}\":",
                )
            )
        elif node.tag not in _TEXT_TAGS:
            self.unsupported(node)
        return key

    def scalar(self, node: ScalarNode, path: JsonPath, record: bool) -> Any:
        tag = node.tag
        if tag in _TEXT_TAGS:
            return str(node.value)
        if tag not in _KINDS:
            self.unsupported(node)
            return str(node.value)
        try:
            value: Any
            if tag == _TAG + "int":
                value = self.constructor.construct_yaml_int(node)
            elif tag == _TAG + "float":
                value = self.constructor.construct_yaml_float(node)
            elif tag == _TAG + "bool":
                value = self.constructor.construct_yaml_bool(node)
            else:
                value = None
        except Exception:  # noqa: BLE001 - PyYAML's converters fail in assorted ways on explicit tags (`!!int ""`)
            self.diagnostics.append(
                _error(
                    _loc(self.name, node.start_mark),
                    # the value is not quoted: it may sit under a credential-like key
                    f"this value cannot be read as {_KINDS[tag]} (it is tagged {_short_tag(tag)})",
                    "yaml-bad-value",
                    "quote it to keep it as text",
                )
            )
            return str(node.value)
        if record and not node.style:  # plain: None from PyYAML, "" from libyaml
            self.raw_scalars[path] = str(node.value)
        return value

    def unsupported(self, node: Node) -> None:
        self.diagnostics.append(
            _error(
                _loc(self.name, node.start_mark),
                f"unsupported YAML tag {_short_tag(node.tag)}",
                "yaml-unsupported-tag",
                "campaign files use plain strings, numbers, booleans, lists and mappings; remove the tag",
            )
        )


def _syntax_error(error: MarkedYAMLError, text: str, name: str) -> Diagnostic:
    mark = error.problem_mark or error.context_mark
    if mark is None:
        return _error(Location(name), _first_line(error), "yaml-syntax")
    tab = _tab_near(text, mark)
    if tab is not None:
        return _error(
            Location(name, mark.line + 1, tab + 1),
            "found a tab character where YAML expects spaces",
            "yaml-tab",
            "YAML indentation must use spaces, not tabs",
        )
    message = " ".join((error.problem or error.context or "invalid YAML").split())
    if "maximum nesting depth" in message:  # libyaml's own limit (PyYAML >= 6.0.3 wheels) met first
        return _too_deep(_loc(name, mark))
    hint = None
    if "mapping values are not allowed" in message:
        hint = "a value that contains ': ' must be quoted"
    elif "cannot start any token" in message and _char_at(text, mark) in ("@", "`"):
        hint = "a value starting with @ or ` must be quoted"
    context = error.context_mark
    if hint is None and error.context and context is not None and context.index != mark.index:
        hint = f"{' '.join(error.context.split())} at line {context.line + 1}, column {context.column + 1}"
    return _error(_loc(name, mark), message, "yaml-syntax", hint)


def _first_line(error: yaml.YAMLError) -> str:
    """PyYAML's own text goes on to name the stream and quote a snippet: noise on a diagnostic line."""
    return str(error).strip().split("\n")[0] or type(error).__name__


def _tab_near(text: str, mark: _Mark) -> int | None:
    """The column of a tab on the failing line: a tab is the likeliest cause and the parser won't say so."""
    lines = _BREAK.split(text)
    if mark.line >= len(lines):
        return None
    line = lines[mark.line]
    if line[mark.column : mark.column + 1] == "\t":
        return mark.column
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    return indent.index("\t") if "\t" in indent else None


def _char_at(text: str, mark: _Mark) -> str:
    lines = _BREAK.split(text)
    return lines[mark.line][mark.column : mark.column + 1] if mark.line < len(lines) else ""


def _is_empty(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null" and node.value == "" and not node.style


def _scalar_kind(node: Node) -> str:
    return _KINDS.get(node.tag, "a string" if node.tag in _TEXT_TAGS else f"a {_short_tag(node.tag)} value")


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


def _empty(name: str) -> Diagnostic:
    return _error(
        Location(name, 1, 1),
        "the file is empty",
        "yaml-empty",
        "a campaign file is a mapping of keys to values, such as `id: spring-sale`",
    )


def _too_deep(location: Location) -> Diagnostic:
    return _error(
        location,
        f"the document is nested more than {MAX_DEPTH} levels deep",
        "yaml-too-deep",
        "a campaign needs only a few levels; look for runaway brackets or aliases",
    )


def _error(location: Location, message: str, rule: str, hint: str | None = None) -> Diagnostic:
    return Diagnostic(location, Severity.ERROR, message, rule, hint)


def _position(mark: _Mark) -> Position:
    return Position(mark.line + 1, mark.column + 1)


def _loc(name: str, mark: _Mark | None) -> Location:
    return Location(name, 1, 1) if mark is None else Location(name, mark.line + 1, mark.column + 1)


def _location_at(name: str, text: str, index: int) -> Location:
    """Line and column of a character index, counting line breaks the way YAML does."""
    line, start = 1, 0
    for match in _BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return Location(name, line, index - start + 1)


def _sorted(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """In file order, each once: a problem inside an anchor is met again at every alias."""
    unique = list(dict.fromkeys(diagnostics))
    return sorted(unique, key=lambda d: (d.location.line, d.location.col))
