"""Reporters: every output format is a small class over a result value.

Stages return values (`ValidationResult`, `Plan`, `ApplyResult`, `LedgerSummary`); a
reporter turns one into text for a person, a machine, a pull request or a GitHub
workflow. A new format is one class here and one registry entry, never a change to a
stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .compile import vendor_timestamp
from .errors import CampaignError, ExitCode
from .vendor import error_meaning
from .model import Diagnostic, Location, Severity
from .safe_text import mask_identifier, mask_msisdn, mask_numbers, markdown, visible

if TYPE_CHECKING:
    from .plan import Plan
    from .ledger import LedgerSummary
    from .send import ApplyResult
    from .testsend import TestSendResult
    from .validate import ValidationResult


# Bumped when a key of `campaign status --format json` changes meaning or goes away.
STATUS_JSON_FORMAT_VERSION = 1


class Reporter:
    """Base: a format that does not support a result says so instead of printing nonsense."""

    name: ClassVar[str] = ""

    def __init__(self, out: TextIO, *, show_pii: bool = False, step_summary: Path | None = None) -> None:
        self.out = out
        # Output meant for a pull request masks phone numbers and personal values unless asked.
        self.show_pii = show_pii
        # GitHub's $GITHUB_STEP_SUMMARY file, when set: where the github format lists what
        # the 10-per-step annotation limit hides.
        self.step_summary = step_summary

    def write(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def _unsupported(self, what: str) -> CampaignError:
        return CampaignError(f"--format {self.name} does not support {what}", exit_code=ExitCode.USAGE)

    def validation(self, result: ValidationResult) -> None:
        raise self._unsupported("validate")

    def plan(self, plan: Plan, *, show_all: bool) -> None:
        raise self._unsupported("plan")

    def plans(self, items: Sequence[Plan | PlanFailure], *, show_all: bool) -> None:
        """Several campaigns in one output; only formats meant for one PR comment support it."""
        raise self._unsupported("several campaign files")

    def apply(self, result: ApplyResult) -> None:
        raise self._unsupported("apply")

    def status(self, result: LedgerSummary, test_sends: LedgerSummary | None = None) -> None:
        raise self._unsupported("status")

    def test_send(self, result: TestSendResult) -> None:
        raise self._unsupported("test-send")


def _counts(errors: int, warnings: int) -> str:
    return f"{_n(errors, 'error')}, {_n(warnings, 'warning')}"


def diagnostic_json(diagnostic: Diagnostic) -> dict[str, Any]:
    return {
        "file": diagnostic.location.file,
        "line": diagnostic.location.line,
        "col": diagnostic.location.col,
        "severity": diagnostic.severity.value,
        "rule": diagnostic.rule,
        "message": diagnostic.message,
        "hint": diagnostic.hint,
    }


class TextReporter(Reporter):
    name = "text"

    def validation(self, result: ValidationResult) -> None:
        for diagnostic in result.diagnostics:
            self.write(visible(str(diagnostic)))
        verdict = "ok" if result.ok else "failed"
        self.write(f"{verdict}: {_n(len(result.files), 'campaign file')} checked, "
                   f"{_counts(result.error_count, result.warning_count)}")

    def plan(self, plan: Plan, *, show_all: bool) -> None:
        console = _console(self.out)
        console.print(_summary_table(plan))
        if plan.messages:
            console.print(_messages_table(plan))
        hidden = plan.summary.messages - len(plan.messages)
        if hidden > 0 and plan.messages:
            console.print(f"... {_n(hidden, 'more message')} (--all shows every one)")
        for warning in plan.warnings:
            self.write(visible(str(warning)))

    def apply(self, result: ApplyResult) -> None:
        r = result
        verdict = "interrupted" if r.interrupted else "sent"
        if r.auth_failure is not None:
            self.write(f"stopped: authentication failed: {r.auth_failure}")
            self.write("  the vendor refused the credentials, so nothing more was sent; fix WEBEX_CONNECT_SERVICE_KEY "
                       "or WEBEX_CONNECT_JWT (or their *_FILE variants; a key belongs to one tenant and region) "
                       "and run apply again: what was not sent is still pending")
            verdict = "stopped"
        if r.accepted or not r.already_accepted:
            rate = (f"{r.destinations_per_second:,.1f}/s over {r.send_seconds:.1f} s of sending, "
                    if r.accepted else "")
            self.write(f"{verdict}: {_n(r.accepted_destinations, 'destination')} accepted in "
                       f"{_n(r.accepted, 'request')} ({rate}{_n(r.attempts, 'attempt')})")
        if r.already_accepted:
            self.write(f"skipped: {_n(r.already_accepted, 'request')} already accepted by an earlier run")
        if r.failed:
            self.write(f"failed: {_n(r.failed, 'request')} ({_n(r.failed_destinations, 'destination')})")
        if r.uncertain:
            self.write(f"uncertain: {_n(r.uncertain, 'request')} ({_n(r.uncertain_destinations, 'destination')}) "
                       "may or may not have been sent; held (--resend-uncertain sends them again with the same "
                       "Idempotency-Key)")
        for failure in r.failures[:20]:
            status = f"HTTP {failure.http_status}" if failure.http_status else "no answer"
            code = f" {failure.code} ({error_meaning(failure.code)})" if failure.code else ""
            detail = failure.message.removeprefix(f"{status} ").lstrip(": ") if failure.http_status else failure.message
            self.write(visible(f"  batch {failure.batch_key}: {status}{code}: {detail}"))

    def status(self, result: LedgerSummary, test_sends: LedgerSummary | None = None) -> None:
        self._status(result)
        if test_sends is not None and test_sends.runs:
            t = test_sends
            self.write(f"test sends (campaign test-send; not counted above): {_n(t.runs, 'run')}, "
                       "destinations " + _tally(t.destinations))

    def test_send(self, result: TestSendResult) -> None:
        r = result
        self.write(f"test send of {r.campaign_id} ({r.personalisation} personalisation, API {r.api}), "
                   f"the message of {r.rendered_for}:")
        self.write(f"text: {r.text}")
        if r.wire_text is not None:
            self.write(f"sent as: {r.wire_text} (the platform fills in the values: check the phone shows the text above)")
        for d in r.deliveries:
            self.write(f"  {d.msisdn}: {d.status}" + (f", messageId {d.message_id}" if d.message_id else ""))

    def _status(self, result: LedgerSummary) -> None:
        s = result
        where = "" if s.environment == "default" else f" (environment {s.environment})"
        self.write(f"campaign {s.campaign_id}{where}: {_n(s.runs, 'run')}, {_n(s.attempts, 'request')} attempted")
        self.write("batches:      " + _tally(s.batches))
        self.write("destinations: " + _tally(s.destinations))
        if any(s.receipts.values()):
            self.write("receipts:     " + _tally(s.receipts))
            funnel = delivery_funnel(s)
            failed = ", ".join(f"{code or 'no code'} {n:,}" for code, n in funnel["failedByCode"].items())
            self.write(f"delivery:     accepted {funnel['accepted']:,} → submitted {funnel['submitted']:,} → "
                       f"delivered {funnel['delivered']:,} / failed {funnel['failed']:,}"
                       + (f" ({failed})" if failed else "") + f" / clicked {funnel['clicked']:,}")
        for f in s.failures:
            code = f"{f.code} ({error_meaning(f.code)})" if f.code else "no code"
            self.write(visible(f"  failed {f.batches} batch{'es' * (f.batches != 1)} / {f.destinations} "
                               f"destinations: {code}: {f.message}"))


class JsonReporter(Reporter):
    name = "json"

    def _dump(self, value: Any) -> None:
        self.write(json.dumps(value, indent=2, ensure_ascii=False, default=str))

    def validation(self, result: ValidationResult) -> None:
        self._dump({
            "ok": result.ok,
            "errors": result.error_count,
            "warnings": result.warning_count,
            "files": [
                {"file": f.display_name, "ok": not f.errors, "diagnostics": [diagnostic_json(d) for d in f.diagnostics]}
                for f in result.files
            ],
        })

    def plan(self, plan: Plan, *, show_all: bool) -> None:
        self._dump(plan.to_json(show_all=show_all))

    def apply(self, result: ApplyResult) -> None:
        self._dump(result.to_json())

    def status(self, result: LedgerSummary, test_sends: LedgerSummary | None = None) -> None:
        tests = None
        if test_sends is not None and test_sends.runs:
            tests = {"runs": test_sends.runs, "destinations": dict(test_sends.destinations)}
        self._dump({
            "format_version": STATUS_JSON_FORMAT_VERSION,
            "campaignId": result.campaign_id,
            "inputHash": result.input_hash,
            "batches": dict(result.batches),
            "destinations": dict(result.destinations),
            "receipts": dict(result.receipts),
            "failures": [{"code": f.code, "meaning": error_meaning(f.code) if f.code else None, "message": f.message,
                          "batches": f.batches, "destinations": f.destinations} for f in result.failures],
            "attempts": result.attempts,
            "runs": result.runs,
            "lastRunStartedAt": result.last_run_started_at,
            "lastRunFinishedAt": result.last_run_finished_at,
            "testSends": tests,  # campaign test-send runs, kept apart from the campaign's own sends
            "environment": result.environment,
            "funnel": delivery_funnel(result),
        })


def delivery_funnel(summary: LedgerSummary) -> dict[str, Any]:
    """Destinations at each delivery stage: accepted by the API, then the receipts'
    Submitted, Delivered, Failed (by code) and Clicked, each destination counted once a stage."""
    stages = {"submitted": 0, "delivered": 0, "failed": 0, "clicked": 0}
    failed_by_code: dict[str, int] = {}
    for count in summary.receipt_codes:
        stage = count.delivery_status.strip().lower()
        if stage in stages:
            stages[stage] += count.destinations
        if stage == "failed":
            failed_by_code[count.code] = failed_by_code.get(count.code, 0) + count.destinations
    return {"accepted": summary.destinations.get("accepted", 0), **stages, "failedByCode": failed_by_code}


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'s' * (count != 1)}"


def _tally(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counts.items() if count) or "none"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


@dataclass(frozen=True)
class PlanFailure:
    """A campaign of a multi-file plan that could not be planned: shown in its place."""

    file: str
    message: str
    hint: str | None = None


GITHUB_SHOWN_PER_STEP = 10  # GitHub shows at most 10 error and 10 warning annotations of a step


class GithubReporter(Reporter):
    """GitHub Actions workflow commands: each problem becomes an annotation on the PR diff.

    GitHub shows only the first 10 annotations of each kind per step; with more than 10
    in all, every one is also listed in the step summary ($GITHUB_STEP_SUMMARY), and the
    log says how many the diff does not show.
    """

    name = "github"

    def _clean(self, text: str) -> str:
        return visible(text if self.show_pii else mask_numbers(text))

    def _annotate(self, diagnostics: Sequence[Diagnostic], what: str) -> None:
        for d in diagnostics:
            level = "error" if d.severity is Severity.ERROR else "warning"
            props = [f"file={_escape_property(self._clean(d.location.file))}"]
            if d.location.line:
                props.append(f"line={d.location.line}")
            if d.location.col:
                props.append(f"col={d.location.col}")
            props.append(f"title={_escape_property(d.rule)}")
            message = self._clean(d.message + (f" (hint: {d.hint})" if d.hint else ""))
            self.write(f"::{level} {','.join(props)}::{_escape_data(message)}")
        errors = sum(d.severity is Severity.ERROR for d in diagnostics)
        hidden = max(errors - GITHUB_SHOWN_PER_STEP, 0) + max(len(diagnostics) - errors - GITHUB_SHOWN_PER_STEP, 0)
        if len(diagnostics) > GITHUB_SHOWN_PER_STEP:
            where = self._write_summary(diagnostics, what)
            if hidden:
                self.write(f"{_n(hidden, 'annotation')} of {len(diagnostics):,} not shown on the diff "
                           f"(GitHub shows {GITHUB_SHOWN_PER_STEP} errors and {GITHUB_SHOWN_PER_STEP} warnings "
                           f"per step); {where}")

    def _write_summary(self, diagnostics: Sequence[Diagnostic], what: str) -> str:
        if self.step_summary is None:
            return "set GITHUB_STEP_SUMMARY to list them all in the step summary"
        lines = [f"### campaign {what}: {_n(len(diagnostics), 'problem')}", "",
                 "| location | severity | rule | message |", "|---|---|---|---|"]
        lines += [_markdown_diagnostic_row(d, self.show_pii) for d in diagnostics]
        text = _bounded("\n".join(lines), MARKDOWN_BUDGET) + "\n\n"
        try:
            with self.step_summary.open("a", encoding="utf-8") as summary:
                summary.write(text)
        except OSError as error:
            raise CampaignError(f"cannot append to GITHUB_STEP_SUMMARY file {self.step_summary}: "
                                f"{error.strerror or error}", exit_code=ExitCode.USAGE) from None
        return "all are listed in the step summary"

    def validation(self, result: ValidationResult) -> None:
        self._annotate(result.diagnostics, "validate")
        self.write(f"{'ok' if result.ok else 'failed'}: {_counts(result.error_count, result.warning_count)}")

    def plan(self, plan: Plan, *, show_all: bool) -> None:
        self._annotate(plan.warnings, "plan")
        s = plan.summary
        self.write(self._clean(f"plan {s.campaign_id}: {_n(s.recipients, 'recipient')}, {_n(s.requests, 'request')}, "
                               f"{_n(s.messages, 'message')}, "
                               f"{'unknown' if s.segments is None else f'{s.segments:,}'} segments, "
                               f"{_n(len(plan.warnings), 'warning')}"))

    def apply(self, result: ApplyResult) -> None:
        r = result
        failures = []
        for failure in r.failures:
            status = f"HTTP {failure.http_status}" if failure.http_status else "no answer"
            code = f" {failure.code} ({error_meaning(failure.code)})" if failure.code else ""
            message = self._clean(f"batch {failure.batch_key}: {status}{code}: {failure.message}")
            self.write(f"::error title={_escape_property('apply failed')}::{_escape_data(message)}")
            failures.append(Diagnostic(Location(r.campaign_id), Severity.ERROR, message, "apply-failed"))
        if len(failures) > GITHUB_SHOWN_PER_STEP:
            where = self._write_summary(failures, "apply")
            self.write(f"{_n(len(failures) - GITHUB_SHOWN_PER_STEP, 'annotation')} of {len(failures):,} not shown "
                       f"(GitHub shows {GITHUB_SHOWN_PER_STEP} errors per step); {where}")
        if r.uncertain:
            self.write(f"::warning title=apply uncertain::{_n(r.uncertain, 'request')} "
                       f"({_n(r.uncertain_destinations, 'destination')}) may or may not have been sent")
        self.write(f"{'interrupted' if r.interrupted else 'sent'}: {_n(r.accepted_destinations, 'destination')} "
                   f"accepted in {_n(r.accepted, 'request')}; {r.already_accepted:,} already accepted, "
                   f"{r.failed:,} failed, {r.uncertain:,} uncertain")


def _markdown_diagnostic_row(d: Diagnostic, show_pii: bool) -> str:
    def cell(text: str) -> str:
        return _md_cell(text if show_pii else mask_numbers(text))

    message = d.message + (f" (hint: {d.hint})" if d.hint else "")
    return f"| {cell(str(d.location))} | {d.severity.value} | {cell(d.rule)} | {cell(message)} |"


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit - 80)
    return text[: max(cut, 0)] + f"\n\n_… {len(text) - max(cut, 0):,} characters cut to fit a comment_"


class MarkdownReporter(Reporter):
    """For pull-request comments: every value escaped (`safe_text.markdown`), phone numbers
    and personal values masked unless `show_pii`, bounded to GitHub's comment limit with
    the biggest message tables collapsed and cut first."""

    name = "markdown"

    def validation(self, result: ValidationResult) -> None:
        icon = "✅" if result.ok else "❌"
        lines = [f"### {icon} campaign validate: {_counts(result.error_count, result.warning_count)}", ""]
        if result.diagnostics:
            lines += ["| location | severity | rule | message |", "|---|---|---|---|"]
            lines += [_markdown_diagnostic_row(d, self.show_pii) for d in result.diagnostics]
        self.write(_bounded("\n".join(lines), MARKDOWN_BUDGET))

    def status(self, result: LedgerSummary, test_sends: LedgerSummary | None = None) -> None:
        s = result
        # values escaped, not in backticks: an escaped value can still close a code span
        lines = [f"### Campaign status: {_md_cell(s.campaign_id)} (environment {_md_cell(s.environment)})", "",
                 f"{_n(s.runs, 'run')}, {_n(s.attempts, 'request')} attempted", "",
                 "| | " + " | ".join(s.batches) + " |", "|---|" + "---:|" * len(s.batches),
                 "| batches | " + " | ".join(f"{n:,}" for n in s.batches.values()) + " |",
                 "| destinations | " + " | ".join(f"{n:,}" for n in s.destinations.values()) + " |"]
        funnel = delivery_funnel(s)
        lines += ["", "| delivery | destinations |", "|---|---:|"]
        lines += [f"| {stage} | {funnel[stage]:,} |" for stage in ("accepted", "submitted", "delivered", "failed",
                                                                    "clicked")]
        lines += [f"| failed, code {_md_cell(code or 'none')} | {n:,} |" for code, n in funnel["failedByCode"].items()]
        if s.failures:
            lines += ["", "| failed batches | destinations | code | message |", "|---:|---:|---|---|"]
            lines += [f"| {f.batches:,} | {f.destinations:,} | {_md_cell(f.code or '')} | "
                      f"{_md_cell(f.message if self.show_pii else mask_numbers(f.message))} |"
                      for f in s.failures[:20]]
        if test_sends is not None and test_sends.runs:
            lines += ["", f"Test sends (campaign test-send; not counted above): {_n(test_sends.runs, 'run')}, "
                      "destinations " + _tally(test_sends.destinations)]
        self.write("\n".join(lines))

    def plan(self, plan: Plan, *, show_all: bool) -> None:
        self.plans([plan], show_all=show_all)

    def plans(self, items: Sequence[Plan | PlanFailure], *, show_all: bool) -> None:
        # Many campaigns with many warnings: fewer warnings each before any campaign's head is cut.
        for warnings_shown in (MARKDOWN_WARNINGS, 5, 0):
            sections = [self._failure(item) if isinstance(item, PlanFailure) else self._plan_section(item, warnings_shown)
                        for item in items]
            if _fixed_size(sections) <= MARKDOWN_BUDGET:
                break
        self.write(_fit_sections(sections, MARKDOWN_BUDGET))

    def _cell(self, text: str) -> str:
        return _md_cell(text if self.show_pii else mask_numbers(text))

    def _failure(self, failure: PlanFailure) -> _Section:
        lines = [f"### ❌ Campaign plan failed: {self._cell(failure.file)}", "", self._cell(failure.message)]
        if failure.hint:
            lines += ["", f"hint: {self._cell(failure.hint)}"]
        return _Section("\n".join(lines), "", [], "")

    def _plan_section(self, plan: Plan, warnings_shown: int | None = None) -> _Section:
        s = plan.summary
        warnings_shown = MARKDOWN_WARNINGS if warnings_shown is None else warnings_shown
        lines = [f"### Campaign plan: {self._cell(s.campaign_id)}", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {self._cell(value)} |" for name, value in _summary_rows(plan)]
        if plan.warnings:
            lines += ["", f"**{len(plan.warnings)} warning{'s' * (len(plan.warnings) != 1)}**", ""]
            lines += [f"- {self._cell(str(w.location))}: {self._cell(w.message)} ({self._cell(w.rule)})"
                      + (f" — {self._cell(w.hint)}" if w.hint else "") for w in plan.warnings[:warnings_shown]]
            if len(plan.warnings) > warnings_shown:
                lines.append(f"- … {len(plan.warnings) - warnings_shown} more (run `campaign plan` for all)")
        masked = not self.show_pii
        text_header = "text (personal values •••)" if masked else "text"
        states = plan.message_states  # plan --state: each recipient's state against the ledger
        opening = "\n".join(["", f"<details><summary>Messages ({len(plan.messages)} of {s.messages:,} shown"
                             f"{', phone numbers and personal values masked' if masked else ''})</summary>", "",
                             f"| # | msisdn | correlationId |{' state |' if states else ''} encoding | segments | "
                             f"characters | {text_header} |",
                             "|---|---|---|" + ("---|" if states else "") + "---|---|---|---|"])
        rows = []
        for number, m in enumerate(plan.messages, 1):
            segments = "?" if s.segments is None else str(m.count.segments)
            if masked:
                shown = plan.masked_texts[number - 1] if number <= len(plan.masked_texts) else "•••"
                msisdn, correlation_id = mask_msisdn(m.msisdn), mask_identifier(m.correlation_id)
            else:
                shown, msisdn, correlation_id = m.text, m.msisdn, m.correlation_id
            state = f" {states[number - 1]} |" if states else ""
            rows.append(f"| {number} | {self._cell(msisdn)} | {self._cell(correlation_id)} |{state} "
                        f"{m.count.encoding.value} | {segments} | {len(m.text):,} | {_md_cell(shown)} |")
        return _Section("\n".join(lines), opening, rows, "\n</details>")


@dataclass(frozen=True)
class _Section:
    """One campaign's part of a comment: a head always shown, and a table of rows that
    may be cut to fit (`opening` + rows + `closing`)."""

    head: str
    opening: str
    rows: list[str]
    closing: str

    def render(self, keep: int) -> str:
        if not self.opening:
            return self.head
        rows = self.rows[:keep]
        cut = len(self.rows) - keep
        note = [f"\n_{_n(cut, 'more row')} cut to fit a comment_"] if cut > 0 else []
        return "\n".join([self.head, self.opening, *rows, *note, self.closing])


_SEPARATOR = "\n\n"


def _fixed_size(sections: list[_Section]) -> int:
    """Characters the sections need with no table rows (and room for each cut note)."""
    return sum(len(section.render(0)) + len(_SEPARATOR) + 120 for section in sections)


def _fit_sections(sections: list[_Section], budget: int) -> str:
    """Join sections within `budget` characters. Each head is kept whole; the room left is
    shared among the message tables like water poured into glasses: small tables keep
    every row, the biggest are cut first and say so. Heads that alone pass the budget
    are cut at the end, with a note."""
    room = budget - _fixed_size(sections)
    wanted = [sum(len(row) + 1 for row in section.rows) for section in sections]
    keep = [0] * len(sections)
    order = sorted(range(len(sections)), key=lambda index: wanted[index])
    for position, index in enumerate(order):
        share = max(room, 0) // (len(order) - position)
        used = 0
        for row in sections[index].rows:
            if used + len(row) + 1 > share:
                break
            used += len(row) + 1
            keep[index] += 1
        room -= used
    text = _SEPARATOR.join(section.render(kept) for section, kept in zip(sections, keep))
    return _bounded(text, budget)


def _md_cell(text: str, limit: int = 500) -> str:
    """A value for a table cell or a line: escaped for markdown and HTML, on one line, bounded."""
    flat = text if len(text) <= limit else text[: limit - 1] + "…"
    return markdown(flat, newlines="<br>")


MARKDOWN_BUDGET = 65_000  # GitHub comments stop at 65,536 characters; the margin is for a caller's heading
MARKDOWN_WARNINGS = 20


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich would exit 1 itself; the CLI's one error handler decides instead (a quiet exit 0)."""
        self.quiet = True
        raise BrokenPipeError


def _console(out: TextIO) -> Console:
    return _Console(file=out, width=None if out.isatty() else 120, soft_wrap=False)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def _summary_rows(plan: Plan) -> list[tuple[str, str]]:
    s = plan.summary
    encodings = ", ".join(f"{name} {count:,}" for name, count in s.encodings.items()) or "unknown"
    window = "immediately" if s.send_at is None else vendor_timestamp(s.send_at)
    if s.expires_at is not None:
        window += f" until {vendor_timestamp(s.expires_at)}"
    return [
        ("file", s.file),
        ("API", f"{s.api} ({s.strategy} personalisation)"),
        ("recipients", f"{s.recipients:,} ({s.rows_read:,} read, {s.duplicates:,} duplicates dropped, "
                       f"{s.excluded:,} excluded)"),
        ("requests", f"{s.requests:,} (up to {s.batch_size:,} destinations each)"),
        ("messages", f"{s.messages:,}"),
        ("segments", "unknown (template without preview)" if s.segments is None else f"{s.segments:,}"),
        ("encoding", encodings),
        ("send time", f"about {_duration(s.estimated_seconds)} at {s.tps:,} TPS"),
        ("schedule", window),
    ]


def _summary_table(plan: Plan) -> Table:
    table = Table(title=Text(visible(f"Plan for {plan.summary.campaign_id}")), show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in _summary_rows(plan):
        table.add_row(name, Text(visible(value)))
    return table


def _messages_table(plan: Plan) -> Table:
    table = Table(show_lines=False)
    states = plan.message_states  # plan --state: each recipient's state against the ledger
    for name in ("#", "msisdn", "correlationId", *(("state",) if states else ()), "encoding", "seg", "text"):
        table.add_column(name, overflow="fold")
    for number, m in enumerate(plan.messages, 1):
        segments = "?" if plan.summary.segments is None else str(m.count.segments)
        state = (states[number - 1],) if states else ()
        table.add_row(str(number), Text(visible(m.msisdn)), Text(visible(m.correlation_id)), *state,
                      m.count.encoding.value, segments, Text(visible(m.text)))
    return table


REPORTER_BY_NAME: dict[str, type[Reporter]] = {
    cls.name: cls for cls in (TextReporter, JsonReporter, GithubReporter, MarkdownReporter)
}


@contextmanager
def progress_bar(out: TextIO, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A bar with rate and ETA on a terminal; nothing at all in a pipeline log."""
    if not enabled:
        yield lambda done: None
        return
    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=out), transient=False) as progress:
        task = progress.add_task("send", total=total, rate="")

        def advance(done: int) -> None:
            speed = progress.tasks[0].speed
            progress.update(task, advance=done, rate=f"{speed:,.0f} msg/s" if speed else "")

        yield advance
