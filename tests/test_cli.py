"""The command line as a user meets it: real files, the real `campaign` process, exit codes.

Most cases go through `click.testing.CliRunner` on `runner.cli.cli` (same code, no
process start); a handful run the installed console command as a subprocess to check
what only a real process shows: its exit status, what lands on stderr, and that no
Python traceback ever reaches the user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from runner import __version__
from runner.cli import cli
from runner.errors import ExitCode
from tests.helpers import json_lines, number, write_campaign, write_csv

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "campaigns"
BROKEN = Path(__file__).parent / "data" / "broken"
NOW = "2026-11-23T12:00:00Z"

# Unset what would change the output (colour forced on, secrets to redact) for every run.
_UNSET = ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "WEBEX_CONNECT_SERVICE_KEY", "WEBEX_CONNECT_JWT",
          "WEBEX_CONNECT_SERVICE_KEY_FILE", "WEBEX_CONNECT_JWT_FILE")
RUNNER_ENV: dict[str, str | None] = {"CAMPAIGN_NOW": NOW, **{name: None for name in _UNSET}}

# `path:line:col: error: message [rule]`, optionally followed by ` (hint: ...)`.
ERROR_LINE = re.compile(r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.+) "
                        r"\[(?P<rule>[a-z0-9.-]+)\](?: \(hint: .+\))?$")
VALID_CAMPAIGN = {
    "content": {"text": "Hi {{ name }}"},
    "substitutions": {"name": "there"},
    "recipients": [{"msisdn": number(1)}],
}


def _console_command() -> list[str]:
    """The installed entry point next to this interpreter (not a pyenv shim), else the same code via -c."""
    beside = Path(sys.executable).with_name("campaign")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("campaign")
    if found and "shims" not in Path(found).parts:
        return [found]
    return [sys.executable, "-c", "from runner.cli import main; main()"]


CAMPAIGN = _console_command()


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text
        assert "unexpected error" not in text, text  # the handler's word for a bug


def run_campaign(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console command in a real process, clock pinned."""
    environment = {k: v for k, v in os.environ.items() if k not in _UNSET}
    environment["CAMPAIGN_NOW"] = NOW
    environment.update(env or {})
    proc = subprocess.run([*CAMPAIGN, *map(str, args)], cwd=cwd, env=environment, capture_output=True,
                          encoding="utf-8", timeout=120)
    no_traceback(proc.stdout, proc.stderr)
    return proc


def invoke(*args: str | Path, env: dict[str, str | None] | None = None) -> Result:
    """`campaign ARGS` in-process; an exception that escaped the CLI's own handling fails the test."""
    result = CliRunner().invoke(cli, [str(a) for a in args], env={**RUNNER_ENV, **(env or {})}, prog_name="campaign")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"exception escaped the CLI: {result.exception!r}") from result.exception
    no_traceback(result.stdout, result.stderr)
    return result


def plan_json(*args: str | Path) -> dict[str, Any]:
    result = invoke("plan", "--format", "json", *args)
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from tmp_path so file names in output are the short relative ones a user types."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    return ROOT


def copy_broken(folder: Path, name: str) -> Path:
    return Path(shutil.copy(BROKEN / name, folder / name))


# --- validate ---------------------------------------------------------------------------


def test_validate_examples_real_process() -> None:
    proc = run_campaign("validate", "campaigns/", cwd=ROOT)
    assert proc.returncode == 0
    assert proc.stdout == "ok: 4 campaign files checked, 0 errors, 0 warnings\n"
    assert proc.stderr == ""


def test_validate_broken_file_real_process(tmp_path: Path) -> None:
    copy_broken(tmp_path, "multiple-errors.yaml")
    proc = run_campaign("validate", "multiple-errors.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[-1] == "failed: 1 campaign file checked, 3 errors, 0 warnings"
    errors = lines[:-1]
    assert len(errors) == 3
    for line in errors:
        assert ERROR_LINE.match(line), line
    found = [(m["file"], int(m["line"]), int(m["col"]), m["rule"]) for m in map(ERROR_LINE.match, errors) if m]
    assert found == [
        ("multiple-errors.yaml", 6, 7, "from-no-plus"),
        ("multiple-errors.yaml", 9, 13, "msisdn-e164"),
        ("multiple-errors.yaml", 10, 11, "validity-range"),
    ]
    assert errors[2] == ("multiple-errors.yaml:10:11: error: validity is 288000 s; it must be between 1 s and 72 h "
                         "[validity-range]")
    assert errors[0].endswith("[from-no-plus] (hint: write \"12025550100\")")
    assert proc.stderr == ""


def test_validate_examples_text_and_markdown_ok(in_root: Path) -> None:
    result = invoke("validate", "campaigns")
    assert (result.exit_code, result.stdout) == (0, "ok: 4 campaign files checked, 0 errors, 0 warnings\n")
    result = invoke("validate", "--format", "markdown", "campaigns")
    assert (result.exit_code, result.stdout) == (0, "### ✅ campaign validate: 0 errors, 0 warnings\n\n")
    result = invoke("validate", "--format", "json", "campaigns")
    data = json.loads(result.stdout)
    assert (result.exit_code, data["ok"], data["errors"], data["warnings"]) == (0, True, 0, 0)
    assert [f["file"] for f in data["files"]] == [
        "campaigns/black-friday.yaml", "campaigns/loyalty-template.yaml", "campaigns/spring-sale.yaml",
        "campaigns/welcome.yaml",
    ]
    assert all(f["ok"] and f["diagnostics"] == [] for f in data["files"])


def test_validate_json_format(in_tmp: Path) -> None:
    copy_broken(in_tmp, "multiple-errors.yaml")
    result = invoke("validate", "--format", "json", "multiple-errors.yaml")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["ok"], data["errors"], data["warnings"]) == (False, 3, 0)
    [file] = data["files"]
    assert (file["file"], file["ok"]) == ("multiple-errors.yaml", False)
    diagnostics = file["diagnostics"]
    assert all(set(d) == {"file", "line", "col", "severity", "rule", "message", "hint"} for d in diagnostics)
    assert [(d["file"], d["line"], d["col"], d["severity"], d["rule"]) for d in diagnostics] == [
        ("multiple-errors.yaml", 6, 7, "error", "from-no-plus"),
        ("multiple-errors.yaml", 9, 13, "error", "msisdn-e164"),
        ("multiple-errors.yaml", 10, 11, "error", "validity-range"),
    ]
    assert diagnostics[0]["hint"] == 'write "12025550100"'
    assert diagnostics[2] == {
        "file": "multiple-errors.yaml", "line": 10, "col": 11, "severity": "error", "rule": "validity-range",
        "message": "validity is 288000 s; it must be between 1 s and 72 h", "hint": None,
    }


def test_validate_github_format_escapes_file_property_and_data(in_tmp: Path) -> None:
    shutil.copy(BROKEN / "from-plus.yaml", in_tmp / "promo,v2:final.yaml")
    (in_tmp / "when.yaml").write_text(
        'version: 1\nid: x\nfrom: "12025550100"\ncontent: {text: hi}\n'
        'recipients: [{msisdn: "+447911123456"}]\nsendAt: "50%\\nsoon"\n', encoding="utf-8")
    result = invoke("validate", "--format", "github", "promo,v2:final.yaml", "when.yaml")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "::error file=promo%2Cv2%3Afinal.yaml,line=4,col=7,title=from-no-plus::'from' must not start with '+' "
        "(long codes are written with country code, no '+') (hint: write \"1•••••••100\")",
        "::error file=when.yaml,line=6,col=9,title=schedule-format::sendAt '50%25%0Asoon' is not an ISO 8601 "
        "date-time (hint: e.g. 2026-11-25T09:00:00Z)",
        "failed: 2 errors, 0 warnings",
    ]


def test_validate_github_format_warning_and_whole_file_error(in_tmp: Path) -> None:
    write_campaign(in_tmp, {**VALID_CAMPAIGN, "sendAt": "2026-11-01T09:00:00Z"}, "old.yaml")
    (in_tmp / "utf16.yaml").write_bytes("version: 1\n".encode("utf-16"))
    result = invoke("validate", "--format", "github", "old.yaml", "utf16.yaml")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    # a colon is escaped in properties only, never in the message
    assert re.fullmatch(r"::warning file=old\.yaml,line=\d+,col=\d+,title=schedule-past::sendAt "
                        r"2026-11-01T09:00:00Z is in the past; apply will refuse it without --send-now", lines[0])
    assert lines[1] == ("::error file=utf16.yaml,line=1,col=1,title=file-encoding::the file is UTF-16, not UTF-8 "
                        "(hint: save the file as UTF-8)")
    assert lines[2] == "failed: 1 error, 1 warning"


def test_validate_markdown_format_table(in_tmp: Path) -> None:
    copy_broken(in_tmp, "multiple-errors.yaml")
    result = invoke("validate", "--format", "markdown", "multiple-errors.yaml")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "### ❌ campaign validate: 3 errors, 0 warnings",
        "",
        "| location | severity | rule | message |",
        "|---|---|---|---|",
    ]
    assert len(lines) == 7
    # No code spans: a value could close one; values are escaped as plain text instead.
    assert lines[4].startswith("| multiple-errors.yaml:6:7 | error | from-no-plus | 'from' must not start")
    assert lines[6] == ("| multiple-errors.yaml:10:11 | error | validity-range | validity is 288000 s; "
                        "it must be between 1 s and 72 h |")


def test_validate_markdown_escapes_pipe_in_file_name(in_tmp: Path) -> None:
    shutil.copy(BROKEN / "from-plus.yaml", in_tmp / "a|b.yaml")
    result = invoke("validate", "--format", "markdown", "a|b.yaml")
    row = result.stdout.splitlines()[4]
    assert len(re.findall(r"(?<!\\)\|", row)) == 5  # 4 cells


def test_validate_text_every_error_is_one_line(in_tmp: Path) -> None:
    (in_tmp / "when.yaml").write_text(
        'version: 1\nid: x\nfrom: "12025550100"\ncontent: {text: hi}\n'
        'recipients: [{msisdn: "+447911123456"}]\nsendAt: "50%\\nsoon"\n', encoding="utf-8")
    result = invoke("validate", "when.yaml")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == "failed: 1 campaign file checked, 1 error, 0 warnings"
    assert all(ERROR_LINE.match(line) for line in lines[:-1]), lines


def test_strict_keeps_a_past_send_at_a_warning_and_plan_strict_refuses_it(in_tmp: Path) -> None:
    """A sent campaign stays in git and its sendAt passes: `validate --strict` over the
    repository must stay green; a plan (what apply would do) still fails on it."""
    write_campaign(in_tmp, {**VALID_CAMPAIGN, "sendAt": "2026-11-01T09:00:00Z"}, "old.yaml")
    relaxed = invoke("validate", "old.yaml")
    assert relaxed.exit_code == 0
    warning, summary = relaxed.stdout.splitlines()
    assert re.fullmatch(r"old\.yaml:\d+:\d+: warning: sendAt 2026-11-01T09:00:00Z is in the past; apply will refuse "
                        r"it without --send-now \[schedule-past\]", warning)
    assert summary == "ok: 1 campaign file checked, 0 errors, 1 warning"

    strict = invoke("validate", "--strict", "old.yaml")
    assert strict.exit_code == 0
    assert strict.stdout.splitlines() == [warning, "ok: 1 campaign file checked, 0 errors, 1 warning"]

    # plan keeps the warning, and --strict refuses
    assert invoke("plan", "old.yaml").exit_code == 0
    refused = invoke("plan", "--strict", "old.yaml")
    assert refused.exit_code == 1 and "[schedule-past]" in refused.stdout


def test_validate_directory_of_yaml(in_tmp: Path) -> None:
    folder = in_tmp / "batch.yaml"  # a directory, even with a campaign-like name
    (folder / "nested").mkdir(parents=True)
    write_campaign(folder, VALID_CAMPAIGN, "a.yaml")
    write_campaign(folder / "nested", VALID_CAMPAIGN, "b.yml")
    (folder / "notes.txt").write_text("not a campaign", encoding="utf-8")
    result = invoke("validate", "batch.yaml")
    assert (result.exit_code, result.stdout) == (0, "ok: 2 campaign files checked, 0 errors, 0 warnings\n")


def test_validate_missing_file(in_tmp: Path) -> None:
    # a path that is not there is a mistake on the command line (2), not an invalid campaign (1)
    result = invoke("validate", "nope.yaml")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "error: no such file or folder: nope.yaml" in result.stderr


GARBAGE: dict[str, bytes] = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
    "nul-bytes": b"\x00\x01\x02\x03version: 1\n",
    "utf16": "version: 1\n".encode("utf-16"),
    "seeded-random": bytes((i * 7919 + 13) % 256 for i in range(4096)),
    "deep-nesting": b"a: " + b"[" * 5000,
    "alias-bomb": b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                  + b"".join(b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n"
                             % ((c,) + (c,) + (c - 1,) * 10) for c in range(ord("b"), ord("i"))),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
@pytest.mark.parametrize("command", ["validate", "plan", "compile"])
def test_garbage_file_one_line_error_no_traceback(in_tmp: Path, kind: str, command: str) -> None:
    (in_tmp / "junk.yaml").write_bytes(GARBAGE[kind])
    result = invoke(command, "junk.yaml")
    assert result.exit_code == 1
    output = result.stdout if command == "validate" else result.stderr
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert len(errors) == 1, output
    assert errors[0].startswith("junk.yaml:")
    if command == "validate":
        assert result.stdout.splitlines()[-1] == "failed: 1 campaign file checked, 1 error, 0 warnings"
    else:
        assert result.stdout == ""
        assert result.stderr.splitlines()[1:] == ["hint: run `campaign validate` for every problem in the file"]


def test_garbage_file_real_process(tmp_path: Path) -> None:
    (tmp_path / "junk.yaml").write_bytes(GARBAGE["png"])
    proc = run_campaign("validate", "junk.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "junk.yaml:1:1: error: the file is not valid UTF-8: byte 0x89: invalid start byte [file-encoding] "
        "(hint: save the file as UTF-8)",
        "failed: 1 campaign file checked, 1 error, 0 warnings",
    ]
    proc = run_campaign("plan", "junk.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[0].startswith("junk.yaml:1:1: error: the file is not valid UTF-8")


# --- usage errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "Usage: campaign"),
        (["validate"], "Missing argument 'PATHS...'"),
        (["validate", "--bogus", "campaigns"], "No such option '--bogus'"),
        (["validate", "--format", "xml", "campaigns"], "'xml' is not one of 'text', 'json', 'github', 'markdown'"),
        (["plan", "--format", "xml", "campaigns/welcome.yaml"], "'xml' is not one of"),
        (["compile", "--api", "v3", "campaigns/welcome.yaml"], "'v3' is not one of 'v2', 'v1'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["validate", "campaigns/data"], "error: no campaign files (*.yaml, *.yml) found"),
    ],
    ids=["no-arguments", "no-paths", "unknown-option", "unknown-format", "plan-format", "unknown-api",
         "unknown-command", "no-campaign-files"],
)
def test_usage_errors_exit_2_real_process(args: list[str], says: str) -> None:
    proc = run_campaign(*args, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr
    assert proc.stdout == ""


def test_empty_directory_is_usage_error(in_tmp: Path) -> None:
    (in_tmp / "empty").mkdir()
    (in_tmp / "empty" / "readme.md").write_text("x", encoding="utf-8")
    result = invoke("validate", "--format", "json", "empty")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "error: no campaign files (*.yaml, *.yml) found\n"


# --- schema, version, help ------------------------------------------------------------------


def test_schema_prints_the_shipped_schema(in_tmp: Path) -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    assert result.stdout == (ROOT / "schemas" / "campaign.schema.json").read_text(encoding="utf-8")
    assert json.loads(result.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_version_real_process(tmp_path: Path) -> None:
    proc = run_campaign("--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == f"campaign, version {__version__}\n"
    assert __version__ == installed_version("campaign-runner")


def test_help_lists_commands(in_tmp: Path) -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: campaign [OPTIONS] COMMAND [ARGS]...")
    commands = re.findall(r"^  ([a-z-]+)\s{2,}\S", result.stdout.split("Commands:", 1)[1], re.MULTILINE)
    assert {"validate", "plan", "compile", "schema"} <= set(commands)
    assert invoke("-h").stdout == result.stdout


# --- plan -------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["text", "json", "markdown"])
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_plan_every_example(in_root: Path, example: str, output_format: str) -> None:
    result = invoke("plan", "--format", output_format, f"campaigns/{example}")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "\x1b[" not in result.stdout  # no terminal codes when not a terminal
    if output_format == "json":
        data = json.loads(result.stdout)
        summary = data["summary"]
        for key in ("recipients", "duplicatesDropped", "excluded", "requests", "messages", "segments", "encodings",
                    "estimatedSeconds", "sendAt"):
            assert key in summary, key
        assert summary["file"] == f"campaigns/{example}"
        assert data["messages"], "every example has recipients"
        for message in data["messages"]:
            assert {"msisdn", "correlationId", "text", "encoding", "segments"} <= set(message)
            assert message["encoding"] in ("GSM-7", "UCS-2")
            assert isinstance(message["segments"], int) and message["segments"] >= 1
            assert message["msisdn"].startswith("+")
        assert sum(summary["encodings"].values()) == summary["messages"]
        assert sum(m["segments"] for m in data["messages"]) == summary["segments"]  # all shown (<= 10)


def test_plan_spring_sale_exact_values(in_root: Path) -> None:
    data = plan_json("campaigns/spring-sale.yaml")
    summary = data["summary"]
    assert {k: summary[k] for k in ("campaignId", "rowsRead", "recipients", "duplicatesDropped", "excluded",
                                    "requests", "messages", "segments", "encodings", "estimatedSeconds",
                                    "sendAt", "tps", "batchSize")} == {
        "campaignId": "spring-sale-2026", "rowsRead": 9, "recipients": 7, "duplicatesDropped": 0, "excluded": 2,
        "requests": 7, "messages": 7, "segments": 7, "encodings": {"GSM-7": 7}, "estimatedSeconds": 0.07,
        "sendAt": None, "tps": 100, "batchSize": 100,
    }
    by_msisdn = {m["msisdn"]: m for m in data["messages"]}
    assert len(by_msisdn) == 7
    ada = data["messages"][0]
    assert (ada["msisdn"], ada["correlationId"], ada["encoding"], ada["segments"]) == (
        "+447911000123", "ada-1", "GSM-7", 1)
    assert ada["text"] == "Hi Ada, 25% off everything until Sunday at Fernway: https://shop.example.com/spring"
    # Alan's discount cell is empty: the campaign's "20%" shows through; the source's store wins
    assert by_msisdn["+447911000001"]["text"] == (
        "Hi Alan, 20% off everything until Sunday at Fernway Online: https://shop.example.com/spring")
    assert by_msisdn["+447911000002"]["text"].startswith("Hi Barbara, 30% off")
    # the opt-outs are gone
    assert "+447911000004" not in by_msisdn and "+14155550103" not in by_msisdn
    assert all(re.fullmatch(r"cr-[0-9a-f]{16}", m["correlationId"]) for m in data["messages"][1:])


def test_plan_black_friday_schedule_and_v1_welcome(in_root: Path) -> None:
    summary = plan_json("campaigns/black-friday.yaml")["summary"]
    assert (summary["sendAt"], summary["expiresAt"]) == ("2026-11-27T09:00:00.000Z", "2026-11-27T10:00:00.000Z")
    welcome = plan_json("--api", "v1", "campaigns/welcome.yaml")
    assert (welcome["summary"]["requests"], welcome["summary"]["batchSize"]) == (3, 1)
    assert welcome["summary"]["encodings"] == {"GSM-7": 2, "UCS-2": 1}
    assert [w["rule"] for w in welcome["warnings"]] == ["ucs2-character"]


def test_plan_text_shows_summary_and_table(in_root: Path) -> None:
    result = invoke("plan", "campaigns/spring-sale.yaml")
    assert result.exit_code == 0
    out = result.stdout
    assert "Plan for spring-sale-2026" in out
    assert re.search(r"^ *recipients +7 \(9 read, 0 duplicates dropped, 2 excluded\)", out, re.MULTILINE)
    assert re.search(r"^ *requests +7 \(up to 100 destinations each\)", out, re.MULTILINE)  # local: 7 texts
    assert re.search(r"^ *encoding +GSM-7 7", out, re.MULTILINE)
    assert re.search(r"^ *schedule +immediately", out, re.MULTILINE)
    header = next(line for line in out.splitlines() if "correlationId" in line)
    assert [cell.strip() for cell in re.split(r"[┃│|]", header) if cell.strip()] == [
        "#", "msisdn", "correlationId", "encoding", "seg", "text"]
    assert re.search(r"│ 1 +│ \+447911000123 +│ ada-1 +│ GSM-7 +│ 1 +│ Hi Ada, 25% off", out)
    assert "more message" not in out


def test_plan_all_versus_first_ten(in_tmp: Path) -> None:
    recipients = [{"msisdn": number(i), "substitutions": {"name": f"R{i}"}} for i in range(15)]
    write_campaign(in_tmp, {"content": {"text": "Hi {{ name }}"}, "recipients": recipients}, "fifteen.yaml")

    default = plan_json("fifteen.yaml")
    assert (default["summary"]["messages"], default["messagesShown"], len(default["messages"])) == (15, 10, 10)
    assert [m["text"] for m in default["messages"]] == [f"Hi R{i}" for i in range(10)]
    every = plan_json("--all", "fifteen.yaml")
    assert (every["messagesShown"], len(every["messages"])) == (15, 15)
    assert [m["msisdn"] for m in every["messages"]] == [number(i) for i in range(15)]

    text = invoke("plan", "fifteen.yaml").stdout
    assert "... 5 more messages (--all shows every one)" in text
    assert "Hi R9" in text and "Hi R10" not in text
    text_all = invoke("plan", "--all", "fifteen.yaml").stdout
    assert "more message" not in text_all
    assert all(f"Hi R{i} " in text_all for i in range(15))


def _big_campaign(folder: Path, names: list[str]) -> Path:
    write_csv(folder / "big.csv", ["msisdn", "name"], [[number(i), name] for i, name in enumerate(names)])
    return write_campaign(folder, {"content": {"text": "Hello {{ name }}, " + "x" * 100},
                                   "recipients": [{"file": "big.csv"}]}, "big.yaml")


@pytest.mark.parametrize("show_all", [False, True], ids=["default", "all"])
def test_plan_markdown_is_bounded_for_3000_recipients(in_tmp: Path, show_all: bool) -> None:
    _big_campaign(in_tmp, [f"Name{i}" for i in range(3000)])
    result = invoke("plan", "--format", "markdown", *(["--all"] if show_all else []), "big.yaml")
    assert result.exit_code == 0
    out = result.stdout
    assert len(out) < 65_536
    assert "<details><summary>Messages (" in out and out.rstrip().endswith("</details>")
    assert "| recipients | 3,000 (3,000 read, 0 duplicates dropped, 0 excluded) |" in out
    if show_all:
        assert "more rows cut to fit a comment_" in out
    else:
        assert "Messages (10 of 3,000 shown, phone numbers and personal values masked)" in out
        assert out.count("| +44•••••••") == 10


def test_plan_markdown_bounded_with_many_distinct_ucs2_characters(in_tmp: Path) -> None:
    _big_campaign(in_tmp, [f"N{chr(0x4E00 + i)}" for i in range(3000)])  # CJK names, each a new character
    result = invoke("plan", "--format", "markdown", "big.yaml")
    assert result.exit_code == 0
    assert len(result.stdout) < 65_536


@pytest.mark.parametrize("correlation_id", ["order[/x]", "vip[bold]7"], ids=["closing-tag", "style-tag"])
def test_plan_text_shows_correlation_id_verbatim(in_tmp: Path, correlation_id: str) -> None:
    write_campaign(in_tmp, {"content": {"text": "hi"},
                            "recipients": [{"msisdn": number(1), "correlationId": correlation_id}]}, "c.yaml")
    result = CliRunner().invoke(cli, ["plan", "c.yaml"], env=RUNNER_ENV, prog_name="campaign")
    assert result.exit_code == 0, result.stderr
    assert correlation_id in result.stdout


def test_plan_missing_variable_names_csv_row_real_process(tmp_path: Path) -> None:
    write_csv(tmp_path / "people.csv", ["msisdn", "name", "code"],
              [[number(1), "Alan", "A1"], [number(2), "Barbara", "B2"], [number(3), "Claude", ""]])
    write_campaign(tmp_path, {"content": {"text": "Hi {{ name }}, your code is {{ code }}"},
                              "recipients": [{"file": "people.csv"}]}, "codes.yaml")
    proc = run_campaign("plan", "codes.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"people.csv:4: error: variable 'code' is not defined for {number(3)} [missing-variable]",
        "hint: add 'code' to the campaign substitutions, the source's substitutions, or this recipient",
    ]


def test_plan_invalid_campaign_lists_every_error(in_tmp: Path) -> None:
    copy_broken(in_tmp, "multiple-errors.yaml")
    result = invoke("plan", "multiple-errors.yaml")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1] == "hint: run `campaign validate` for every problem in the file"
    assert [ERROR_LINE.match(line)["rule"] for line in lines[:-1]] == [  # type: ignore[index]
        "from-no-plus", "msisdn-e164", "validity-range"]


def test_error_messages_redact_env_secrets(in_tmp: Path) -> None:
    secret = "sk-live-0123456789abcdef"
    write_campaign(in_tmp, {**VALID_CAMPAIGN, "sendAt": secret}, "leak.yaml")
    result = invoke("plan", "leak.yaml", env={"WEBEX_CONNECT_SERVICE_KEY": secret})
    assert result.exit_code == 1
    assert secret not in result.stderr
    assert "sendAt '***' is not an ISO 8601 date-time [schedule-format]" in result.stderr


# --- compile ----------------------------------------------------------------------------------


def test_compile_writes_json_lines(in_root: Path) -> None:
    first = invoke("compile", "campaigns/spring-sale.yaml")
    assert first.exit_code == 0 and first.stderr == ""
    bodies = json_lines(first.stdout)
    assert len(bodies) == 7  # local personalisation (the default): one request per distinct text
    body = bodies[0]
    assert (body["channel"], body["from"]) == ("sms", "12025550100")
    assert body["content"] == {"type": "text", "text": "Hi Ada, 25% off everything until Sunday at "
                                                       "Fernway: https://shop.example.com/spring"}
    assert [entry["msisdn"] for body in bodies for entry in body["to"]] == [[m] for m in (
        "+447911000123", "+447911000001", "+447911000002", "+14155550101", "+14155550102", "+61491570156",
        "+447911000003")]
    assert not any("substitutions" in body for body in bodies)
    second = invoke("compile", "campaigns/spring-sale.yaml")
    assert second.stdout_bytes == first.stdout_bytes


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_compile_every_example_is_deterministic(in_root: Path, example: str) -> None:
    first = invoke("compile", f"campaigns/{example}")
    second = invoke("compile", f"campaigns/{example}")
    assert first.exit_code == 0 and second.exit_code == 0
    assert first.stdout_bytes == second.stdout_bytes
    assert first.stdout.endswith("\n")
    for line in first.stdout.splitlines():
        body = json.loads(line)
        assert body["channel"] == "sms" and isinstance(body["from"], str) and body["from"]
        assert 1 <= len(body["to"]) <= 1000
        # exactly one of the two: the template example names its template, every other one its text
        assert ("template" in body) == (example == "loyalty-template.yaml")
        assert ("content" in body) != ("template" in body)
        if "content" in body:
            assert set(body["content"]) == {"type", "text"}
            assert body["content"]["type"] in ("text", "unicode")


@pytest.mark.parametrize(("tps", "count", "sizes"), [(3, 7, [3, 3, 1]), (5000, 2500, [1000, 1000, 500])])
def test_compile_batch_size_is_min_of_1000_and_tps(in_tmp: Path, tps: int, count: int, sizes: list[int]) -> None:
    write_csv(in_tmp / "audience.csv", ["msisdn", "name"], [[number(i), f"P{i}"] for i in range(count)])
    write_campaign(in_tmp, {"content": {"text": "Hi {{ name }}"}, "personalisation": "platform",
                            "recipients": [{"file": "audience.csv"}], "throughput": {"tps": tps}}, "sized.yaml")
    result = invoke("compile", "sized.yaml")
    assert result.exit_code == 0
    bodies = json_lines(result.stdout)
    assert [len(b["to"]) for b in bodies] == sizes
    assert [e["msisdn"][0] for b in bodies for e in b["to"]] == [number(i) for i in range(count)]


def test_compile_output_file(in_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    result = invoke("compile", "-o", target, "campaigns/welcome.yaml")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert target.read_bytes() == invoke("compile", "campaigns/welcome.yaml").stdout_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def _campaign_with_bad_last_row(folder: Path) -> Path:
    rows = [[number(i), f"P{i}"] for i in range(9)] + [["+44 12", "Broken"]]
    write_csv(folder / "audience.csv", ["msisdn", "name"], rows)
    return write_campaign(folder, {"content": {"text": "Hi {{ name }}"}, "personalisation": "platform",
                                   "recipients": [{"file": "audience.csv"}], "throughput": {"tps": 2}}, "late.yaml")


def test_compile_failing_midway_leaves_nothing_real_process(tmp_path: Path) -> None:
    _campaign_with_bad_last_row(tmp_path)
    # to stdout, four full batches were written before the bad row: proof the failure is midway
    streamed = run_campaign("compile", "late.yaml", cwd=tmp_path)
    assert streamed.returncode == 1
    assert len(json_lines(streamed.stdout)) == 4
    proc = run_campaign("compile", "late.yaml", "-o", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    first_line = proc.stderr.splitlines()[0]
    assert "audience.csv:11: " in first_line and "'+44 12' is not a valid E.164 number" in first_line
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "out.jsonl.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audience.csv", "late.yaml"]


def test_bad_row_error_has_the_located_form(in_tmp: Path) -> None:
    _campaign_with_bad_last_row(in_tmp)
    result = invoke("plan", "late.yaml")
    assert result.exit_code == 1
    assert re.match(r"^audience\.csv:11: error: '\+44 12' is not a valid E\.164 number.* \[[a-z0-9.-]+\]$",
                    result.stderr.splitlines()[0]), result.stderr


def test_compile_failing_keeps_previous_output_intact(in_tmp: Path) -> None:
    _campaign_with_bad_last_row(in_tmp)
    (in_tmp / "out.jsonl").write_text("previous run\n", encoding="utf-8")
    result = invoke("compile", "-o", "out.jsonl", "late.yaml")
    assert result.exit_code == 1
    assert (in_tmp / "out.jsonl").read_text(encoding="utf-8") == "previous run\n"
    assert not (in_tmp / "out.jsonl.partial").exists()


def test_compile_output_into_missing_folder_is_a_plain_error(in_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "no" / "out.jsonl"
    result = invoke("compile", "-o", target, "campaigns/welcome.yaml")
    assert result.exit_code == ExitCode.USAGE  # the command line names a place that cannot be written
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: cannot write {target}: No such file or directory",
        "hint: -o must name a file in an existing, writable folder",
    ]
    assert not (tmp_path / "no").exists()


def test_compile_v1_one_flat_body_per_destination(in_root: Path) -> None:
    result = invoke("compile", "--api", "v1", "campaigns/welcome.yaml")
    assert result.exit_code == 0
    bodies = json_lines(result.stdout)
    assert [b["to"] for b in bodies] == ["+447911123456", "+14155550123", "+33612345678"]
    for body in bodies:
        assert isinstance(body["to"], str)
        assert "channel" not in body
        assert body["from"] == "12025550100"
        assert isinstance(body["content"], str)
    assert [b["contentType"] for b in bodies] == ["text", "text", "unicode"]
    assert bodies[0]["correlationId"] == "welcome-ada"
    assert "substitutions" not in bodies[2]  # local personalisation: the final text
    assert bodies[2]["content"].startswith("Welcome to Fernway Rewards, Zoë! Your member code is FW-1003.")


def test_compile_v1_refuses_black_friday(in_root: Path) -> None:
    result = invoke("compile", "--api", "v1", "campaigns/black-friday.yaml")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        # every field v1 cannot express, at once, so one edit fixes the file
        "campaigns/black-friday.yaml:17:1: error: SMS API v1 cannot express 'sendAt' [v1-unsupported]",
        "campaigns/black-friday.yaml:18:1: error: SMS API v1 cannot express 'validity' [v1-unsupported]",
        "campaigns/black-friday.yaml:23:1: error: SMS API v1 cannot express 'requestedReceipts' [v1-unsupported]",
        "campaigns/black-friday.yaml:26:1: error: SMS API v1 cannot express 'contactPolicy' [v1-unsupported]",
        "campaigns/black-friday.yaml:29:1: error: SMS API v1 cannot express 'smartlinks' [v1-unsupported]",
        "hint: send with --api v2 (the default), or remove these fields for a v1 tenant",
    ]


# --- the clock ----------------------------------------------------------------------------------


def test_campaign_now_pins_the_clock(in_tmp: Path) -> None:
    write_campaign(in_tmp, {**VALID_CAMPAIGN, "sendAt": "2026-11-24T09:00:00Z"}, "soon.yaml")
    assert invoke("validate", "soon.yaml").stdout == "ok: 1 campaign file checked, 0 errors, 0 warnings\n"
    later = invoke("validate", "soon.yaml", env={"CAMPAIGN_NOW": "2026-11-25T00:00:00Z"})
    assert later.exit_code == 0 and "[schedule-past]" in later.stdout


def test_malformed_campaign_now_is_a_usage_error(in_root: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "campaigns"], env={**RUNNER_ENV, "CAMPAIGN_NOW": "tomorrow"},
                                prog_name="campaign")
    assert result.exit_code == ExitCode.USAGE
    assert "CAMPAIGN_NOW" in result.stderr
