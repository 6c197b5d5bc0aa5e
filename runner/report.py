"""Reporters: every output format is a small class over a result value.

Stages return values (`ValidationResult`, `Plan`, `ApplyResult`, `LedgerSummary`); a
reporter turns one into text for a person, a machine, a pull request or a GitHub
workflow. A new format is one class here and one registry entry, never a change to a
stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .compile import vendor_timestamp
from .errors import CampaignError, ExitCode
from .vendor import error_meaning
from .model import Diagnostic, Severity

if TYPE_CHECKING:
    from .plan import Plan
    from .ledger import LedgerSummary
    from .send import ApplyResult
    from .validate import ValidationResult


class Reporter:
    """Base: a format that does not support a result says so instead of printing nonsense."""

    name: ClassVar[str] = ""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def _unsupported(self, what: str) -> CampaignError:
        return CampaignError(f"--format {self.name} does not support {what}", exit_code=ExitCode.USAGE)

    def validation(self, result: ValidationResult) -> None:
        raise self._unsupported("validate")

    def plan(self, plan: Plan, *, show_all: bool) -> None:
        raise self._unsupported("plan")

    def apply(self, result: ApplyResult) -> None:
        raise self._unsupported("apply")

    def status(self, result: LedgerSummary) -> None:
        raise self._unsupported("status")


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
            self.write(str(diagnostic))
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
            self.write(str(warning))

    def apply(self, result: ApplyResult) -> None:
        r = result
        verdict = "interrupted" if r.interrupted else "sent"
        if r.accepted or not r.already_accepted:
            self.write(f"{verdict}: {_n(r.accepted_destinations, 'destination')} accepted in "
                       f"{_n(r.accepted, 'request')} ({r.destinations_per_second:,.1f}/s over "
                       f"{r.elapsed_seconds:.1f} s, {_n(r.attempts, 'attempt')})")
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
            self.write(f"  batch {failure.batch_key}: {status}{code}: {detail}")

    def status(self, result: LedgerSummary) -> None:
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
            self.write(f"  failed {f.batches} batch{'es' * (f.batches != 1)} / {f.destinations} destinations: "
                       f"{code}: {f.message}")


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

    def status(self, result: LedgerSummary) -> None:
        self._dump({
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


class GithubReporter(Reporter):
    """GitHub Actions workflow commands: each problem becomes an annotation on the PR diff."""

    name = "github"

    def validation(self, result: ValidationResult) -> None:
        for d in result.diagnostics:
            level = "error" if d.severity is Severity.ERROR else "warning"
            props = [f"file={_escape_property(d.location.file)}"]
            if d.location.line:
                props.append(f"line={d.location.line}")
            if d.location.col:
                props.append(f"col={d.location.col}")
            props.append(f"title={_escape_property(d.rule)}")
            message = d.message + (f" (hint: {d.hint})" if d.hint else "")
            self.write(f"::{level} {','.join(props)}::{_escape_data(message)}")
        self.write(f"{'ok' if result.ok else 'failed'}: {_counts(result.error_count, result.warning_count)}")


class MarkdownReporter(Reporter):
    """For pull-request comments: bounded length, details collapsed."""

    name = "markdown"

    def validation(self, result: ValidationResult) -> None:
        icon = "✅" if result.ok else "❌"
        self.write(f"### {icon} campaign validate: {_counts(result.error_count, result.warning_count)}")
        self.write()
        if result.diagnostics:
            self.write("| location | severity | rule | message |")
            self.write("|---|---|---|---|")
            for d in result.diagnostics:
                self.write(f"| `{_md_cell(str(d.location))}` | {d.severity.value} | `{d.rule}` | "
                           f"{_md_cell(d.message)} |")

    def status(self, result: LedgerSummary) -> None:
        s = result
        lines = [f"### Campaign status: `{_md_cell(s.campaign_id)}` (environment `{_md_cell(s.environment)}`)", "",
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
            lines += [f"| {f.batches:,} | {f.destinations:,} | {_md_cell(f.code or '')} | {_md_cell(f.message)} |"
                      for f in s.failures[:20]]
        self.write("\n".join(lines))

    def plan(self, plan: Plan, *, show_all: bool) -> None:
        s = plan.summary
        lines = [f"### Campaign plan: `{s.campaign_id}`", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {_md_cell(value)} |" for name, value in _summary_rows(plan)]
        if plan.warnings:
            lines += ["", f"**{len(plan.warnings)} warning{'s' * (len(plan.warnings) != 1)}**", ""]
            lines += [f"- `{_md_cell(str(w.location))}` {_md_cell(w.message)}"
                      + (f" — {_md_cell(w.hint)}" if w.hint else "") for w in plan.warnings[:MARKDOWN_WARNINGS]]
            if len(plan.warnings) > MARKDOWN_WARNINGS:
                lines.append(f"- … {len(plan.warnings) - MARKDOWN_WARNINGS} more (run `campaign plan` for all)")
        lines += ["", f"<details><summary>Messages ({len(plan.messages)} of {s.messages} shown)</summary>", "",
                  "| # | msisdn | correlationId | encoding | segments | text |", "|---|---|---|---|---|---|"]
        budget = MARKDOWN_BUDGET - sum(len(line) + 1 for line in lines)
        for number, m in enumerate(plan.messages, 1):
            row = (f"| {number} | `{m.msisdn}` | `{m.correlation_id}` | {m.count.encoding.value} | "
                   f"{m.count.segments} | {_md_cell(m.text)} |")
            if budget - len(row) < 200:
                lines.append(f"\n_{len(plan.messages) - number + 1} more rows cut to fit a comment_")
                break
            budget -= len(row) + 1
            lines.append(row)
        lines += ["", "</details>"]
        self.write("\n".join(lines))


def _md_cell(text: str, limit: int = 500) -> str:
    flat = text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


MARKDOWN_BUDGET = 60_000  # GitHub comments stop at 65,536 characters
MARKDOWN_WARNINGS = 20


def _console(out: TextIO) -> Console:
    return Console(file=out, width=None if out.isatty() else 120, soft_wrap=False)


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
    table = Table(title=Text(f"Plan for {plan.summary.campaign_id}"), show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in _summary_rows(plan):
        table.add_row(name, Text(value))
    return table


def _messages_table(plan: Plan) -> Table:
    table = Table(show_lines=False)
    for name in ("#", "msisdn", "correlationId", "encoding", "seg", "text"):
        table.add_column(name, overflow="fold")
    for number, m in enumerate(plan.messages, 1):
        segments = "?" if plan.summary.segments is None else str(m.count.segments)
        table.add_row(str(number), Text(m.msisdn), Text(m.correlation_id), m.count.encoding.value, segments,
                      Text(m.text))
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
