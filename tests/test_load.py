"""The loading stage: data, exact positions, and every trap as a located diagnostic."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import runner.load as load_module
from runner.load import load_document, load_text
from runner.model import Diagnostic, Location, Position, Severity, SourceDocument

CAMPAIGN = """\
# a comment line
id: spring-sale
from: "12025550100"
content:
  type: auto
  text: Hi {{ name }}
recipients:
  - msisdn: +447911000123
    substitutions: {name: Ada, vip: yes}
  - file: data/audience.csv
sendAt: 2026-11-25T09:00:00Z
"""


def write(tmp_path: Path, text: str | bytes, name: str = "campaign.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def load_ok(tmp_path: Path, text: str | bytes) -> SourceDocument:
    document, diagnostics = load_document(write(tmp_path, text), "c.yaml")
    assert diagnostics == []
    assert document is not None
    return document


def load_bad(tmp_path: Path, text: str | bytes) -> tuple[SourceDocument | None, list[Diagnostic]]:
    document, diagnostics = load_document(write(tmp_path, text), "c.yaml")
    assert diagnostics, "expected at least one diagnostic"
    assert all(d.severity is Severity.ERROR for d in diagnostics)
    return document, diagnostics


# --- data and positions --------------------------------------------------------------


def test_data_is_plain_python(tmp_path: Path) -> None:
    document = load_ok(tmp_path, CAMPAIGN)
    assert document.data == {
        "id": "spring-sale",
        "from": "12025550100",
        "content": {"type": "auto", "text": "Hi {{ name }}"},
        "recipients": [
            {"msisdn": 447911000123, "substitutions": {"name": "Ada", "vip": True}},
            {"file": "data/audience.csv"},
        ],
        "sendAt": "2026-11-25T09:00:00Z",
    }
    assert document.display_name == "c.yaml"
    assert document.path == tmp_path / "campaign.yaml"


def test_value_positions_are_exact(tmp_path: Path) -> None:
    positions = load_ok(tmp_path, CAMPAIGN).value_positions
    assert positions[()] == Position(2, 1)
    assert positions[("id",)] == Position(2, 5)
    assert positions[("from",)] == Position(3, 7)
    assert positions[("content",)] == Position(5, 3)
    assert positions[("content", "text")] == Position(6, 9)
    assert positions[("recipients",)] == Position(8, 3)
    assert positions[("recipients", 0)] == Position(8, 5)
    assert positions[("recipients", 0, "msisdn")] == Position(8, 13)
    assert positions[("recipients", 0, "substitutions")] == Position(9, 20)
    assert positions[("recipients", 0, "substitutions", "vip")] == Position(9, 37)
    assert positions[("recipients", 1)] == Position(10, 5)
    assert positions[("recipients", 1, "file")] == Position(10, 11)
    assert positions[("sendAt",)] == Position(11, 9)


def test_key_positions_are_exact(tmp_path: Path) -> None:
    keys = load_ok(tmp_path, CAMPAIGN).key_positions
    assert keys[("id",)] == Position(2, 1)
    assert keys[("content",)] == Position(4, 1)
    assert keys[("content", "type")] == Position(5, 3)
    assert keys[("recipients", 0, "msisdn")] == Position(8, 5)
    assert keys[("recipients", 0, "substitutions", "name")] == Position(9, 21)
    assert keys[("recipients", 1, "file")] == Position(10, 5)
    assert () not in keys
    assert ("recipients", 0) not in keys  # list items have no key


def test_every_value_and_key_has_a_position(tmp_path: Path) -> None:
    document = load_ok(tmp_path, CAMPAIGN)

    def walk(value: object, path: tuple[str | int, ...]) -> None:
        assert path in document.value_positions
        if isinstance(value, dict):
            for key, item in value.items():
                assert (*path, key) in document.key_positions
                walk(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*path, index))

    walk(document.data, ())


def test_locate(tmp_path: Path) -> None:
    document = load_ok(tmp_path, CAMPAIGN)
    assert document.locate(("recipients", 0, "msisdn")) == Location("c.yaml", 8, 13)
    assert document.locate(("recipients", 0, "msisdn"), key=True) == Location("c.yaml", 8, 5)
    assert str(document.locate(("content", "text"))) == "c.yaml:6:9"
    # a path that is not in the file points at its nearest ancestor
    assert document.locate(("content", "template", "id")) == Location("c.yaml", 5, 3)
    assert document.locate(("recipients", 7)) == Location("c.yaml", 8, 3)
    assert document.locate(()) == Location("c.yaml", 2, 1)


def test_display_name_defaults_to_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "a: 1\nb: [\n")
    document, diagnostics = load_document(path)
    assert document is None
    assert diagnostics[0].location.file == str(path)
    document, _ = load_document(write(tmp_path, "a: 1\n"))
    assert document is not None and document.display_name == str(path)


def test_columns_count_characters_not_bytes(tmp_path: Path) -> None:
    document = load_ok(tmp_path, "café: {naïve: ü, x: 1}\n")
    assert document.value_positions[("café", "x")] == Position(1, 21)
    assert document.key_positions[("café", "naïve")] == Position(1, 8)


def test_crlf_line_endings(tmp_path: Path) -> None:
    document = load_ok(tmp_path, b"a: 1\r\nb:\r\n  c: 2\r\n")
    assert document.data == {"a": 1, "b": {"c": 2}}
    assert document.value_positions[("b", "c")] == Position(3, 6)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    document = load_ok(tmp_path, b"\xef\xbb\xbfid: x\nn: 2\n")
    assert document.data == {"id": "x", "n": 2}
    assert document.key_positions[("id",)] == Position(1, 1)
    assert document.value_positions[("n",)] == Position(2, 4)


def test_load_text_accepts_str_and_bytes() -> None:
    for text in ("a: [1, 2]\n", b"a: [1, 2]\n"):
        document, diagnostics = load_text(text, Path("x.yaml"))
        assert diagnostics == []
        assert document is not None and document.data == {"a": [1, 2]}
        assert document.display_name == "x.yaml"


def test_c_loader_is_used_when_present() -> None:
    if yaml.__with_libyaml__:
        assert load_module.LOADER is yaml.CSafeLoader
    else:
        assert load_module.LOADER is yaml.SafeLoader


WITHOUT_LIBYAML = """
import pickle, sys
from pathlib import Path
import yaml
del yaml.CSafeLoader  # PyYAML as installed without libyaml
import runner.load
assert runner.load.LOADER is yaml.SafeLoader, runner.load.LOADER
document, diagnostics = runner.load.load_document(Path(sys.argv[1]), "c.yaml")
assert diagnostics == [], diagnostics
sys.stdout.buffer.write(pickle.dumps(
    (document.data, document.value_positions, document.key_positions, document.raw_scalars)))
"""


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="needs PyYAML built with libyaml to compare against")
def test_both_loaders_agree(tmp_path: Path) -> None:
    """The pure-Python fallback (what runner.load picks when PyYAML has no libyaml, run in
    a process of its own) gives the same data and marks as libyaml."""
    text = CAMPAIGN + "extra: [1, 'two', {three: 3.0}, ~, '']\nflag: on\n"
    document = load_ok(tmp_path, text)
    assert load_module.LOADER is yaml.CSafeLoader
    with_libyaml = (document.data, document.value_positions, document.key_positions, document.raw_scalars)
    done = subprocess.run([sys.executable, "-c", WITHOUT_LIBYAML, str(tmp_path / "campaign.yaml")],
                          capture_output=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr.decode()
    assert pickle.loads(done.stdout) == with_libyaml


# --- scalars -------------------------------------------------------------------------


def test_timestamps_stay_strings(tmp_path: Path) -> None:
    document = load_ok(
        tmp_path,
        "sendAt: 2026-11-25T09:00:00Z\nexpireAt: 2026-11-25 10:00:00+01:00\nday: 2026-11-25\n",
    )
    assert document.data == {
        "sendAt": "2026-11-25T09:00:00Z",
        "expireAt": "2026-11-25 10:00:00+01:00",
        "day": "2026-11-25",
    }
    assert document.raw_scalars == {}


def test_raw_scalars_keep_the_source_of_plain_non_strings(tmp_path: Path) -> None:
    document = load_ok(
        tmp_path,
        "msisdn: +447911000123\nvip: yes\nflag: on\nrate: 0.5\nnothing: ~\nempty:\n"
        "quoted: '+447911000123'\ndq: \"yes\"\nplain: hello\nlist: [1, '2', off]\n",
    )
    assert document.data == {
        "msisdn": 447911000123,
        "vip": True,
        "flag": True,
        "rate": 0.5,
        "nothing": None,
        "empty": None,
        "quoted": "+447911000123",
        "dq": "yes",
        "plain": "hello",
        "list": [1, "2", False],
    }
    assert document.raw_scalars == {
        ("msisdn",): "+447911000123",
        ("vip",): "yes",
        ("flag",): "on",
        ("rate",): "0.5",
        ("nothing",): "~",
        ("empty",): "",
        ("list", 0): "1",
        ("list", 2): "off",
    }


def test_yaml_11_oddities_are_converted_like_pyyaml(tmp_path: Path) -> None:
    document = load_ok(tmp_path, "octal: 0o17\nhex: 0x1F\nsexagesimal: 1:30\ninf: .inf\nunder: 1_000\n")
    # YAML 1.1: `0o` is not an octal prefix there (a string), 0x is hex, 1:30 is base 60.
    assert document.data == {"octal": "0o17", "hex": 31, "sexagesimal": 90, "inf": float("inf"), "under": 1000}
    assert document.raw_scalars[("sexagesimal",)] == "1:30"


# --- anchors, aliases, merge keys ----------------------------------------------------


def test_aliases_expand_and_point_at_the_anchor(tmp_path: Path) -> None:
    document = load_ok(tmp_path, "base: &b {type: text, n: 1}\ncopy: *b\nlist: [*b]\n")
    assert document.data["copy"] == {"type": "text", "n": 1}
    assert document.data["list"] == [{"type": "text", "n": 1}]
    assert document.data["copy"] is not document.data["base"]
    assert document.value_positions[("copy", "type")] == Position(1, 17)
    assert document.raw_scalars[("list", 0, "n")] == "1"


def test_merge_keys(tmp_path: Path) -> None:
    text = "base: &b {type: text, text: hi}\nother: &o {text: other, extra: 1}\ncontent:\n  <<: [*b, *o]\n  type: unicode\n"
    document = load_ok(tmp_path, text)
    assert document.data["content"] == {"type": "unicode", "text": "hi", "extra": 1}
    # YAML's merge rule: of the merged mappings, the earlier one wins (`text: hi`), the
    # node's own keys win over both. Stated here, not taken from yaml.safe_load, whose
    # answer changed between PyYAML releases.
    assert document.data == {
        "base": {"type": "text", "text": "hi"},
        "other": {"text": "other", "extra": 1},
        "content": {"type": "unicode", "text": "hi", "extra": 1},
    }
    assert document.key_positions[("content", "type")] == Position(5, 3)
    assert document.value_positions[("content", "text")] == Position(1, 29)


# --- traps ---------------------------------------------------------------------------

TRAPS = [
    ("tab-indent", "a:\n\tb: 1\n", "yaml-tab", 2, 1),
    ("tab-after-spaces", "a:\n  b: 1\n  \tc: 2\n", "yaml-tab", 3, 3),
    ("unclosed-quote", "a: 'abc\nb: 2\n", "yaml-syntax", 3, 1),
    ("bad-indent", "a:\n  b: 1\n c: 2\n", "yaml-syntax", 3, 2),
    ("unclosed-flow", "a: [1, 2\n", "yaml-syntax", 2, 1),
    ("control-char", "a: b\x07\n", "yaml-syntax", 1, 5),
    ("duplicate", "a: 1\nb: 2\na: 3\n", "yaml-duplicate-key", 3, 1),
    ("empty", "", "yaml-empty", 1, 1),
    ("only-comments", "# nothing\n\n   \n# here\n", "yaml-empty", 1, 1),
    ("only-marker", "---\n", "yaml-empty", 1, 1),
    ("list", "- a\n- b\n", "yaml-not-mapping", 1, 1),
    ("scalar", "\n  just text\n", "yaml-not-mapping", 2, 3),
    ("two-documents", "a: 1\n---\nb: 2\n", "yaml-multiple-documents", 2, 1),
    ("two-documents-after-end", "a: 1\n...\n---\nb: 2\n", "yaml-multiple-documents", 3, 1),
    ("content-after-end", "a: 1\n...\nb: 2\n", "yaml-syntax", 3, 1),
    ("bool-key", "yes: 1\n", "yaml-key-not-string", 1, 1),
    ("int-key", "a:\n  1: x\n", "yaml-key-not-string", 2, 3),
    ("null-key", "null: x\n", "yaml-key-not-string", 1, 1),
    ("list-key", "[a, b]: x\n", "yaml-key-not-string", 1, 1),
    ("undefined-alias", "a: 1\nb: *nope\n", "yaml-alias", 2, 4),
    ("recursive-alias", "a: &x [1, *x]\n", "yaml-alias", 1, 11),
    ("duplicate-anchor", "a: &x 1\nb: &x 2\n", "yaml-alias", 2, 4),
    ("binary", "a: !!binary aGk=\n", "yaml-unsupported-tag", 1, 4),
    ("custom-tag", "a: !thing [1]\n", "yaml-unsupported-tag", 1, 4),
    ("set", "a: !!set {x, y}\n", "yaml-unsupported-tag", 1, 4),
    ("bad-int", "a: !!int twelve\n", "yaml-bad-value", 1, 4),
    ("bad-merge", "a:\n  <<: text\n", "yaml-merge", 2, 7),
    ("deep", "a: " + "[" * 500 + "]" * 500 + "\n", "yaml-too-deep", 1, 203),
]


@pytest.mark.parametrize(("text", "rule", "line", "col"), [t[1:] for t in TRAPS], ids=[t[0] for t in TRAPS])
def test_each_trap_is_located(tmp_path: Path, text: str, rule: str, line: int, col: int) -> None:
    _, diagnostics = load_bad(tmp_path, text)
    assert [(d.rule, d.location) for d in diagnostics] == [(rule, Location("c.yaml", line, col))]
    assert "\n" not in diagnostics[0].message
    assert diagnostics[0].hint or rule == "yaml-syntax"


def test_tab_message(tmp_path: Path) -> None:
    document, diagnostics = load_bad(tmp_path, "content:\n  type: text\n\ttext: hi\n")
    assert document is None
    assert [str(d) for d in diagnostics] == [
        "c.yaml:3:1: error: found a tab character where YAML expects spaces [yaml-tab]"
        " (hint: YAML indentation must use spaces, not tabs)"
    ]


def test_tab_inside_a_block_scalar_is_content(tmp_path: Path) -> None:
    document = load_ok(tmp_path, "text: |\n  line\n  \tindented\n")
    assert document.data == {"text": "line\n\tindented\n"}


def test_syntax_message(tmp_path: Path) -> None:
    _, diagnostics = load_bad(tmp_path, "id: x\ntext: 'unclosed\n")
    assert [str(d) for d in diagnostics] == [
        "c.yaml:3:1: error: found unexpected end of stream [yaml-syntax]"
        " (hint: while scanning a quoted scalar at line 2, column 7)"
    ]


def test_colon_in_value_hints_to_quote(tmp_path: Path) -> None:
    _, diagnostics = load_bad(tmp_path, "text: Sale: 20% off\n")
    (diagnostic,) = diagnostics
    assert diagnostic.rule == "yaml-syntax"
    assert diagnostic.location == Location("c.yaml", 1, 11)
    assert diagnostic.hint == "a value that contains ': ' must be quoted"


def test_all_duplicates_are_reported_and_loading_goes_on(tmp_path: Path) -> None:
    text = "id: a\ncontent:\n  type: text\n  type: auto\nid: b\nid: c\nlist: [{x: 1, x: 2}]\n"
    document, diagnostics = load_bad(tmp_path, text)
    assert [str(d) for d in diagnostics] == [
        "c.yaml:4:3: error: duplicate key 'type' [yaml-duplicate-key]"
        " (hint: 'type' is first defined at line 3; the later value would replace it)",
        "c.yaml:5:1: error: duplicate key 'id' [yaml-duplicate-key]"
        " (hint: 'id' is first defined at line 1; the later value would replace it)",
        "c.yaml:6:1: error: duplicate key 'id' [yaml-duplicate-key]"
        " (hint: 'id' is first defined at line 1; the later value would replace it)",
        "c.yaml:7:15: error: duplicate key 'x' [yaml-duplicate-key]"
        " (hint: 'x' is first defined at line 7; the later value would replace it)",
    ]
    assert document is not None
    assert document.data == {"id": "c", "content": {"type": "auto"}, "list": [{"x": 2}]}
    assert document.key_positions[("id",)] == Position(6, 1)
    assert document.value_positions[("content", "type")] == Position(4, 9)


def test_duplicate_inside_an_overridden_value_is_still_reported(tmp_path: Path) -> None:
    _, diagnostics = load_bad(tmp_path, "a: {x: 1, x: 2}\na: 3\n")
    assert [(d.rule, d.location.line, d.location.col) for d in diagnostics] == [
        ("yaml-duplicate-key", 1, 11),
        ("yaml-duplicate-key", 2, 1),
    ]


def test_non_string_keys_are_kept_as_their_source_text(tmp_path: Path) -> None:
    document, diagnostics = load_bad(tmp_path, "yes: 1\n2: two\n~: n\n0.5: half\n")
    assert document is not None
    assert document.data == {"yes": 1, "2": "two", "~": "n", "0.5": "half"}
    assert document.key_positions[("2",)] == Position(2, 1)
    assert str(diagnostics[0]) == (
        "c.yaml:1:1: error: the key 'yes' was read as a boolean, not a string [yaml-key-not-string]"
        ' (hint: quote the key: "yes":)'
    )
    assert [d.rule for d in diagnostics] == ["yaml-key-not-string"] * 4


def test_unsupported_tag_keeps_the_text(tmp_path: Path) -> None:
    document, diagnostics = load_bad(tmp_path, "a: !!binary aGk=\nb: ok\n")
    assert document is not None and document.data == {"a": "aGk=", "b": "ok"}
    assert str(diagnostics[0]).startswith("c.yaml:1:4: error: unsupported YAML tag !!binary [yaml-unsupported-tag]")


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    document, diagnostics = load_bad(tmp_path, "\n".join(lines) + "\n")
    assert document is None
    assert [d.rule for d in diagnostics] == ["yaml-too-large"]
    assert diagnostics[0].location.line == 5  # the top-level key where the budget ran out


def test_merge_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["m0: &m0 {k: 1}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 40)]
    document, diagnostics = load_bad(tmp_path, "\n".join(lines) + "\n")
    assert document is None
    assert [d.rule for d in diagnostics] == ["yaml-too-large"]


def test_depth_through_aliases_is_capped(tmp_path: Path) -> None:
    lines = ["c0: &c0 " + "[" * 150 + "]" * 150]
    lines += [f"c{i}: &c{i} " + "[" * 150 + f"*c{i - 1}" + "]" * 150 for i in range(1, 4)]
    document, diagnostics = load_bad(tmp_path, "\n".join(lines) + "\n")
    assert document is None
    assert [d.rule for d in diagnostics] == ["yaml-too-deep"]


def test_very_deep_nesting_does_not_recurse(tmp_path: Path) -> None:
    for text in ("a: " + "[" * 100_000, "".join(" " * i + f"k{i}:\n" for i in range(1000)), "{" * 50_000):
        document, diagnostics = load_bad(tmp_path, text)
        assert document is None
        assert [d.rule for d in diagnostics] == ["yaml-too-deep"]


# --- files ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    document, diagnostics = load_document(tmp_path / "nope.yaml", "nope.yaml")
    assert document is None
    assert [str(d) for d in diagnostics] == ["nope.yaml: error: cannot read file: No such file or directory [file-unreadable]"]
    assert diagnostics[0].location == Location("nope.yaml", 0, 0)


def test_directory(tmp_path: Path) -> None:
    document, diagnostics = load_document(tmp_path)
    assert document is None
    assert [(d.rule, d.location, d.message) for d in diagnostics] == [
        ("file-unreadable", Location(str(tmp_path)), "cannot read file: Is a directory")
    ]


def test_not_utf8(tmp_path: Path) -> None:
    _, diagnostics = load_bad(tmp_path, "id: x\nname: caf".encode() + b"\xe9\n")
    assert [str(d) for d in diagnostics] == [
        "c.yaml:2:10: error: the file is not valid UTF-8: byte 0xe9: invalid continuation byte [file-encoding]"
        " (hint: save the file as UTF-8)"
    ]


def test_latin1_after_multibyte_characters(tmp_path: Path) -> None:
    _, diagnostics = load_bad(tmp_path, "ü: é\n".encode() + b"x: \xff\n")
    assert [(d.rule, d.location) for d in diagnostics] == [("file-encoding", Location("c.yaml", 2, 4))]


def test_utf16(tmp_path: Path) -> None:
    _, diagnostics = load_bad(tmp_path, "id: x\n".encode("utf-16"))
    assert [(d.rule, d.location) for d in diagnostics] == [("file-encoding", Location("c.yaml", 1, 1))]


def test_lone_surrogate_in_text() -> None:
    document, diagnostics = load_text("a: \ud800\n", Path("x.yaml"))
    assert document is None
    assert [(d.rule, d.location) for d in diagnostics] == [("file-encoding", Location("x.yaml", 1, 4))]
