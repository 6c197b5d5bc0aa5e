"""Output a reviewer can trust and paste: hostile values are inert, personal data masked.

Real campaign files and CSVs with hostile values go through the real CLI. Assertions
scan the WHOLE output for the raw bytes and markup that must never survive, and for
any full phone number, and state the expected escaped forms literally.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.report import GithubReporter
from runner.safe_text import mask_msisdn, markdown, visible
from runner.send import ApplyResult, BatchFailure
from tests.helpers import number, write_campaign
from tests.test_cli import in_tmp, invoke  # noqa: F401 (fixture)

FULL_NUMBER = re.compile(r"\+\d{8,}")
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
OUR_TAGS = re.compile(r"</?details>|</?summary>|<br>")

HOSTILE_CSV = (
    "msisdn,name,correlationId\n"
    f'{number(24)},"<!-- hidden",c-001\n'
    f'{number(25)},"</details> **b** [x](http://e) | @team",c-002\n'
    f'{number(26)},"\x1b]0;title\x07Eve\rX",c-003\n'
    f'{number(27)},"\u202eevil",c-004\n'
)


def _hostile(folder: Path, name: str = "hostile.yaml", campaign_id: str = "hostile") -> Path:
    (folder / "aud.csv").write_text(HOSTILE_CSV, encoding="utf-8", newline="")
    write_campaign(folder, {
        "id": campaign_id,
        "content": {"text": "Hi {{ name }}, code {{ code }} for {{ msisdn }}"},
        "substitutions": {"code": "SPRING"},
        "recipients": [{"msisdn": number(23), "substitutions": {"name": "@someone <b>x</b>"}},
                       {"file": "aud.csv"}],
    }, name)
    return Path(name)


def _assert_inert_markdown(out: str) -> None:
    """Nothing in `out` is live markup or a raw control byte, whatever the values were."""
    assert RAW_CONTROL.search(out) is None
    assert "<" not in OUR_TAGS.sub("", out)  # no tag or comment but the reporter's own
    assert out.count("<details>") == out.count("</details>")
    assert "](" not in out.replace("\\](", "")  # no link syntax
    assert "**b**" not in out
    assert re.search(r"@(?!\u2060)\w", out) is None  # every '@' is followed by a word joiner


def test_markdown_plan_masks_numbers_and_personal_values(in_tmp: Path) -> None:
    result = invoke("plan", "--format", "markdown", _hostile(in_tmp))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    _assert_inert_markdown(out)
    assert FULL_NUMBER.search(out) is None
    for value in ("hidden", "details&gt;", "evil", "title", "someone", "c-00"):
        assert value not in out
    assert "| 1 | +44•••••••023 | cr-••• | GSM-7 | 1 | 51 | Hi •••, code SPRING for ••• |" in out
    assert "| 5 | +44•••••••027 | c-0••• | UCS-2 | 1 | 39 | Hi •••, code SPRING for ••• |" in out
    assert "Messages (5 of 5 shown, phone numbers and personal values masked)" in out


def test_markdown_plan_show_pii_escapes_every_value(in_tmp: Path) -> None:
    result = invoke("plan", "--format", "markdown", "--show-pii", _hostile(in_tmp))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    _assert_inert_markdown(out)
    assert f"| 1 | {number(23)} |" in out
    assert "Hi @\u2060someone &lt;b&gt;x&lt;/b&gt;, code SPRING" in out
    assert "| Hi &lt;!-- hidden, code SPRING for +447911000024 |" in out
    assert "Hi &lt;/details&gt; \\*\\*b\\*\\* \\[x\\](http://e) \\| @\u2060team, code SPRING" in out
    assert "Hi \\\\x1b\\]0;title\\\\x07Eve\\\\rX, code SPRING" in out
    assert "Hi \\\\u202eevil, code" in out


def test_markdown_escape_literal_forms() -> None:
    assert markdown("<!-- a -->") == "&lt;!-- a --&gt;"
    assert markdown("`code` _em_ ~~s~~ #1 a|b") == "\\`code\\` \\_em\\_ \\~\\~s\\~\\~ \\#1 a\\|b"
    assert markdown("&lt; &amp;") == "&amp;lt; &amp;amp;"
    assert markdown("a\nb") == "a<br>b"
    assert markdown("@org/team") == "@\u2060org/team"


def test_masks_keep_country_code_and_last_three_digits() -> None:
    assert mask_msisdn("+447911000123") == "+44•••••••123"
    assert mask_msisdn("+12025550123") == "+1•••••••123"
    assert mask_msisdn("+3531234567") == "+353••••567"


def test_text_plan_shows_control_characters_visibly_and_flags_them(in_tmp: Path) -> None:
    result = invoke("plan", "--all", _hostile(in_tmp))
    assert result.exit_code == 0, result.stderr
    out = result.stdout + result.stderr
    assert RAW_CONTROL.search(out) is None
    assert "\\x1b]0;title\\x07Eve\\rX" in out
    assert "\\u202eevil" in out
    assert ("aud.csv:4: warning: value of 'name' holds control characters U+001B, U+0007, U+000D "
            "[control-character]") in out
    # Line 6: the CR inside the quoted cell above starts a line of its own, as in an editor.
    assert "aud.csv:6: warning: value of 'name' holds control character U+202E [control-character]" in out
    assert "aud.csv:2: warning" not in out and "aud.csv:3: warning" not in out  # '<', '@', '*' are not controls


def test_validate_flags_control_characters_in_the_campaign_file(in_tmp: Path) -> None:
    write_campaign(in_tmp, {"description": "red \x1b[31m title \x1b]0;x\x07",
                            "content": {"text": "Hi\rthere {{ name }}"}, "substitutions": {"name": "Al"},
                            "recipients": [{"msisdn": number(1)}]})
    result = invoke("validate", "campaign.yaml")
    assert result.exit_code == 0  # a warning
    assert RAW_CONTROL.search(result.stdout) is None
    assert re.search(r"campaign\.yaml:4:\d+: warning: value holds control characters U\+001B, U\+0007 "
                     r"\[control-character\]", result.stdout), result.stdout
    assert re.search(r"campaign\.yaml:6:\d+: warning: value holds control character U\+000D \[control-character\]",
                     result.stdout), result.stdout


def test_error_quoting_a_hostile_cell_reaches_the_terminal_visibly(in_tmp: Path) -> None:
    (in_tmp / "aud.csv").write_text("msisdn,name\n\x1b]0;pwned\x07+44,Al\n", encoding="utf-8")
    write_campaign(in_tmp, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "aud.csv"}]})
    result = invoke("plan", "campaign.yaml")
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\\x1b]0;pwned\\x07" in result.stderr


def test_several_campaigns_make_one_comment_with_failures_in_place(in_tmp: Path) -> None:
    _hostile(in_tmp, "a.yaml", "first")
    _hostile(in_tmp, "b.yaml", "second")
    (in_tmp / "broken.yaml").write_text("version: 1\nid: [\n", encoding="utf-8")
    result = invoke("plan", "--format", "markdown", "a.yaml", "broken.yaml", "b.yaml")
    assert result.exit_code == 1
    out = result.stdout
    _assert_inert_markdown(out)
    assert FULL_NUMBER.search(out) is None
    headings = [line for line in out.splitlines() if line.startswith("### ")]
    assert headings == ["### Campaign plan: first", "### ❌ Campaign plan failed: broken.yaml",
                        "### Campaign plan: second"]
    assert "[yaml-syntax]" not in out and "\\[yaml-syntax\\]" in out


def test_a_failed_campaign_in_a_comment_quotes_no_number_and_no_key(in_tmp: Path) -> None:
    """A row error quotes the raw cell: written without '+' (as a CRM exports it), or holding
    the service key, it must not reach the pull request comment in clear."""
    key = "Zq7Kp2Lm9Xw4Rt8Vb3Nc"
    _hostile(in_tmp, "a.yaml", "first")
    (in_tmp / "bad.csv").write_text(f"msisdn,name\n447911000001,Ada\n07911000003,Bo\n{key},Cy\n", encoding="utf-8")
    write_campaign(in_tmp, {"id": "second", "content": {"text": "Hi {{ name }}"},
                            "recipients": [{"file": "bad.csv"}]}, name="b.yaml")
    result = invoke("plan", "--format", "markdown", "a.yaml", "b.yaml", env={"WEBEX_CONNECT_SERVICE_KEY": key})
    assert result.exit_code == 1
    out = result.stdout
    assert "### ❌ Campaign plan failed: b.yaml" in out
    for raw in ("447911000001", "07911000003", key):
        assert raw not in out
    assert "44•••••••001" in out and "••••••••003" in out and "\\*\\*\\*" in out


def test_several_campaigns_keep_strict_and_detailed_exitcode(in_tmp: Path) -> None:
    (in_tmp / "aud.csv").write_text(f"msisdn,name\n{number(1)},Zoë\n", encoding="utf-8")
    write_campaign(in_tmp, {"id": "ucs2", "content": {"text": "Hi {{ name }}", "type": "auto"},
                            "recipients": [{"file": "aud.csv"}]}, name="a.yaml")
    write_campaign(in_tmp, {"id": "plain", "content": {"text": "Hi"}, "recipients": [{"msisdn": number(2)}]},
                   name="b.yaml")
    assert invoke("plan", "--format", "markdown", "a.yaml", "b.yaml").exit_code == 0
    assert invoke("plan", "--format", "markdown", "--strict", "a.yaml", "b.yaml").exit_code == 1  # ucs2 warning
    assert invoke("plan", "--format", "markdown", "--detailed-exitcode", "a.yaml", "b.yaml").exit_code == 2


def test_several_files_need_the_markdown_format(in_tmp: Path) -> None:
    _hostile(in_tmp, "a.yaml")
    result = invoke("plan", "a.yaml", "a.yaml")
    assert result.exit_code == 2
    assert "--format text plans one campaign file at a time" in result.stderr


def _campaign_with_rows(folder: Path, name: str, rows: int) -> None:
    lines = ["msisdn,name"] + [f"{number(i)},Name{i}" for i in range(rows)]
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_campaign(folder, {"id": name, "content": {"text": "Hello {{ name }}, " + "x" * 100},
                            "recipients": [{"file": f"{name}.csv"}]}, f"{name}.yaml")


def test_several_campaigns_fit_one_comment_biggest_table_cut_first(in_tmp: Path) -> None:
    _campaign_with_rows(in_tmp, "small", 5)
    _campaign_with_rows(in_tmp, "big", 3000)
    _campaign_with_rows(in_tmp, "bigger", 4000)
    result = invoke("plan", "--format", "markdown", "--all", "small.yaml", "big.yaml", "bigger.yaml")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert len(out) <= 65_536
    sections = out.split("### Campaign plan: ")[1:]
    assert [section.split("\n", 1)[0] for section in sections] == ["small", "big", "bigger"]
    small, big, bigger = sections
    assert "cut to fit" not in small and small.count("| +44•••••••") == 5
    cut_big = int(re.search(r"_([\d,]+) more rows cut to fit a comment_", big).group(1).replace(",", ""))
    cut_bigger = int(re.search(r"_([\d,]+) more rows cut to fit a comment_", bigger).group(1).replace(",", ""))
    assert big.count("| +44•••••••") + cut_big == 3000
    assert bigger.count("| +44•••••••") + cut_bigger == 4000
    assert cut_bigger > cut_big  # both get the same room; the bigger table loses more
    assert all(section.rstrip().endswith("</details>") for section in sections)


def _broken_files(folder: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        write_campaign(folder, {"from": f"+1202555{i:04d}", "content": {"text": "hi"},
                                "recipients": [{"msisdn": number(i)}]}, f"c{i:02d}.yaml")
        names.append(f"c{i:02d}.yaml")
    return names


def test_github_validate_beyond_ten_annotations_writes_the_step_summary(in_tmp: Path) -> None:
    summary = in_tmp / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    result = invoke("validate", "--format", "github", *_broken_files(in_tmp, 12),
                    env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 1
    assert result.stdout.count("::error ") == 12
    assert ("2 annotations of 12 not shown on the diff (GitHub shows 10 errors and 10 warnings per step); "
            "all are listed in the step summary") in result.stdout
    written = summary.read_text(encoding="utf-8")
    assert written.startswith("earlier step\n### campaign validate: 12 problems\n")  # appended, not replaced
    assert written.count("| error | from-no-plus |") == 12
    assert "| c11.yaml:3:7 | error |" in written


def test_github_validate_without_summary_file_says_how_to_get_one(in_tmp: Path) -> None:
    result = invoke("validate", "--format", "github", *_broken_files(in_tmp, 11), env={"GITHUB_STEP_SUMMARY": None})
    assert ("1 annotation of 11 not shown on the diff (GitHub shows 10 errors and 10 warnings per step); "
            "set GITHUB_STEP_SUMMARY to list them all in the step summary") in result.stdout


def test_github_validate_ten_annotations_write_no_summary(in_tmp: Path) -> None:
    summary = in_tmp / "summary.md"
    result = invoke("validate", "--format", "github", *_broken_files(in_tmp, 10),
                    env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.stdout.count("::error ") == 10
    assert "not shown" not in result.stdout
    assert not summary.exists()


def test_github_plan_warnings_are_annotations(in_tmp: Path) -> None:
    result = invoke("plan", "--format", "github", _hostile(in_tmp))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert RAW_CONTROL.search(out) is None and FULL_NUMBER.search(out) is None
    assert ("::warning file=aud.csv,line=4,title=control-character::value of 'name' holds control characters "
            "U+001B, U+0007, U+000D (hint: an SMS should not carry control characters; remove them from the file)"
            ) in out.splitlines()
    # local personalisation: five distinct final texts, one request each
    assert out.splitlines()[-1] == "plan hostile: 5 recipients, 5 requests, 5 messages, 5 segments, 5 warnings"


def test_github_apply_failures_are_annotations_with_numbers_masked() -> None:
    out = io.StringIO()
    result = ApplyResult(campaign_id="c", accepted=1, accepted_destinations=3, failed=1, failed_destinations=1,
                         failures=[BatchFailure("k1", 1, 400, "7001", f"invalid msisdn {number(5)}\x1b[2J")])
    GithubReporter(out).apply(result)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("::error title=apply failed::batch k1: HTTP 400 7001 (")
    assert lines[0].endswith("): invalid msisdn +44•••••••005\\x1b[2J")
    assert lines[-1] == "sent: 3 destinations accepted in 1 request; 0 already accepted, 1 failed, 0 uncertain"


@pytest.mark.parametrize("char, shown", [("\x1b", "\\x1b"), ("\r", "\\r"), ("\u202e", "\\u202e"),
                                         ("\x85", "\\x85"), ("\x00", "\\0"), ("\n", "\n"), ("é", "é")])
def test_visible_spells_out_controls_only(char: str, shown: str) -> None:
    assert visible(f"a{char}b") == f"a{shown}b"


def test_crlf_csv_and_plain_unicode_are_not_control_characters(in_tmp: Path) -> None:
    (in_tmp / "aud.csv").write_bytes(f"msisdn,name\r\n{number(1)},Zoë £5 ’quoted’\r\n".encode())
    write_campaign(in_tmp, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "aud.csv"}]})
    result = invoke("plan", "campaign.yaml")
    assert result.exit_code == 0, result.stderr
    assert "control-character" not in result.stdout


@pytest.mark.parametrize("cell, names", [("a\\u001bb", "U+001B"), ("a\\rb", "U+000D"), ("a\\u202Eb", "U+202E"),
                                         ("a\x7fb", "U+007F")])
def test_jsonl_escaped_control_characters_are_flagged(in_tmp: Path, cell: str, names: str) -> None:
    (in_tmp / "aud.jsonl").write_text(f'{{"msisdn": "{number(1)}", "name": "ok"}}\n'
                                      f'{{"msisdn": "{number(2)}", "name": "{cell}"}}\n', encoding="utf-8")
    write_campaign(in_tmp, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "aud.jsonl"}]})
    result = invoke("plan", "campaign.yaml")
    assert result.exit_code == 0, result.stderr
    assert f"aud.jsonl:2: warning: value of 'name' holds control character {names} [control-character]" in result.stdout
    assert "aud.jsonl:1: warning" not in result.stdout


def test_masked_text_keeps_campaign_file_values_and_masks_the_recipients(in_tmp: Path) -> None:
    (in_tmp / "aud.csv").write_text(f"msisdn,name,discount\n{number(1)},Ada,\n{number(2)},Bo,30%\n",
                                    encoding="utf-8")
    write_campaign(in_tmp, {"content": {"text": "Hi {{ name }}, {{ discount }} off at {{ store }} ({{ msisdn }})"},
                            "substitutions": {"discount": "20%", "store": "Main"},
                            "recipients": [{"file": "aud.csv", "substitutions": {"store": "Online"}}]})
    out = invoke("plan", "--format", "markdown", "campaign.yaml").stdout
    assert "| 1 | +44•••••••001 | cr-••• | GSM-7 | 1 | 41 | Hi •••, 20% off at Online (•••) |" in out
    assert "| 2 | +44•••••••002 | cr-••• | GSM-7 | 1 | 40 | Hi •••, ••• off at Online (•••) |" in out


def test_text_with_logic_shows_its_template_when_masked(in_tmp: Path) -> None:
    (in_tmp / "aud.csv").write_text(f"msisdn,name\n{number(1)},Ada\n", encoding="utf-8")
    write_campaign(in_tmp, {"content": {"text": "Hi {{ name | upper }}"}, "recipients": [{"file": "aud.csv"}]})
    out = invoke("plan", "--format", "markdown", "campaign.yaml").stdout
    assert "| 1 | +44•••••••001 | cr-••• | GSM-7 | 1 | 6 | Hi {{ name \\| upper }} |" in out
    assert "ADA" not in out


def test_validate_markdown_escapes_values_quoted_in_diagnostics(in_tmp: Path) -> None:
    write_campaign(in_tmp, {"content": {"text": "hi"},
                            "recipients": [{"msisdn": "<img src=x> <!-- @team **x** +447911000123"}]},
                   "x<!--y.yaml")
    result = invoke("validate", "--format", "markdown", "x<!--y.yaml")
    assert result.exit_code == 1
    out = result.stdout
    _assert_inert_markdown(out)
    assert FULL_NUMBER.search(out) is None
    assert "| x&lt;!--y.yaml:" in out
    assert "&lt;img src=x&gt;" in out
    assert "+44•••••••123" in out


def test_apply_github_format_in_a_sandbox_rehearsal(in_tmp: Path) -> None:
    write_campaign(in_tmp, {"content": {"text": "Hi {{ name }}"},
                            "recipients": [{"msisdn": number(1), "substitutions": {"name": "Al"}}]})
    result = invoke("apply", "--sandbox", "--yes", "--format", "github", "campaign.yaml")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "sent: 1 destination accepted in 1 request; 0 already accepted, 0 failed, 0 uncertain"]


_MARKUP = st.sampled_from(["<", ">", "&", "<!--", "-->", "</details>", "`", "*", "_", "[", "]", "(", ")", "|", "~",
                           "#", "@", "\\", "\n", "\r", "\x1b", "\u202e", "a", " ", "http://e", "&lt;"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_MARKUP, st.text(max_size=5)), max_size=20).map("".join))
def test_markdown_escape_leaves_nothing_live(value: str) -> None:
    out = markdown(value)
    assert "<" not in out.replace("<br>", "")
    assert ">" not in out.replace("<br>", "")
    assert RAW_CONTROL.search(out) is None and "\n" not in out
    assert re.search(r"&(?!amp;|lt;|gt;)", out) is None  # every '&' starts an entity we wrote
    # Every markdown special character is escaped by an unescaped backslash.
    for match in re.finditer(r"[`*_\[\]~|#]", out):
        backslashes = len(out[: match.start()]) - len(out[: match.start()].rstrip("\\"))
        assert backslashes % 2 == 1, (value, out)
    assert re.search(r"@(?!\u2060)", out) is None


def test_github_apply_beyond_ten_failures_lists_them_in_the_step_summary(tmp_path: Path) -> None:
    out, summary = io.StringIO(), tmp_path / "summary.md"
    failures = [BatchFailure(f"k{i:02d}", 1, 400, "7001", f"bad {number(i)}") for i in range(12)]
    GithubReporter(out, step_summary=summary).apply(ApplyResult(campaign_id="c", failed=12, failed_destinations=12,
                                                                failures=failures))
    assert out.getvalue().count("::error ") == 12
    assert ("2 annotations of 12 not shown (GitHub shows 10 errors per step); all are listed in the step summary"
            in out.getvalue())
    written = summary.read_text(encoding="utf-8")
    assert written.startswith("### campaign apply: 12 problems\n")
    assert "| c | error | apply-failed | batch k11: HTTP 400 7001 (" in written
    assert FULL_NUMBER.search(written) is None


def test_many_campaigns_with_many_warnings_keep_every_heading(in_tmp: Path) -> None:
    """Heads alone would pass the limit: fewer warnings are listed, no campaign is lost."""
    names = []
    for c in range(40):
        recipients = [{"msisdn": number(i), "substitutions": {"name": f"N{chr(0x4E00 + 20 * c + i)}"}}
                      for i in range(12)]  # 12 distinct UCS-2 characters: 11 warnings each
        write_campaign(in_tmp, {"id": f"campaign-{c:02d}-" + "x" * 40, "content": {"text": "Hi {{ name }}"},
                                "recipients": recipients}, f"c{c:02d}.yaml")
        names.append(f"c{c:02d}.yaml")
    result = invoke("plan", "--format", "markdown", *names)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert len(out) <= 65_536
    assert [line for line in out.splitlines() if line.startswith("### ")] == [
        f"### Campaign plan: campaign-{c:02d}-{'x' * 40}" for c in range(40)]
    assert "characters cut to fit a comment" not in out
    assert out.count("more (run `campaign plan` for all)") == 40
