"""One plain function per command, each taking one typed settings value.

The click layer only parses options into these settings; everything a command does is
here, callable (and tested) without click. Each function returns the exit code.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .compile import Compiler
from .errors import CampaignError, ExitCode
from .files import WRITE_FAILURE_ERRNOS, kind_of
from .model import Api, Campaign, Diagnostic
from .plan import DEFAULT_SHOWN, Plan, build_plan
from .validate import ValidationResult, load_campaign, validate_paths

# The sending side (httpx, the ledger, the sandbox server) and the reporters (rich) are
# imported where they are used, so `validate`, `plan` and `compile` in a pipeline do not
# pay for loading what they do not run.
if TYPE_CHECKING:
    from .client import Credentials
    from .ledger import Ledger
    from .planfile import LedgerCounts
    from .report import Reporter
    from .sandbox import Sandbox


def _reporter(output_format: str, out: TextIO, *, show_pii: bool = False, step_summary: Path | None = None) -> Reporter:
    """The reporter for a format; `rich` is imported here, because `compile` has no use
    for it and a pipeline pays its import on every run."""
    from .report import REPORTER_BY_NAME

    return REPORTER_BY_NAME[output_format](out, show_pii=show_pii, step_summary=step_summary)


@dataclass(frozen=True)
class ValidateSettings:
    paths: tuple[Path, ...]
    output_format: str = "text"
    strict: bool = False
    step_summary: Path | None = None  # $GITHUB_STEP_SUMMARY, for --format github


# Redacts the environment's credentials from a text (see cli._env_redactor).
Redact = Callable[[str], str]


def run_validate(settings: ValidateSettings, *, now: datetime, out: TextIO, redact: Redact | None = None) -> ExitCode:
    missing = [str(path) for path in settings.paths if not path.exists()]
    if missing:
        # a path that is not there is a mistake on the command line, not an invalid campaign
        raise CampaignError(f"no such file or folder: {', '.join(missing)}", exit_code=ExitCode.USAGE,
                            hint="give campaign files (*.yaml, *.yml) or folders holding them")
    result = validate_paths(settings.paths, now=now, strict=settings.strict)
    if not result.files:
        raise CampaignError("no campaign files (*.yaml, *.yml) found", exit_code=ExitCode.USAGE)
    if redact is not None:
        result = ValidationResult(tuple(
            replace(f, diagnostics=tuple(_redacted(d, redact) for d in f.diagnostics)) for f in result.files))
    _reporter(settings.output_format, out, step_summary=settings.step_summary).validation(result)
    return ExitCode.OK if result.ok else ExitCode.INVALID


@dataclass(frozen=True)
class PlanSettings:
    file: Path
    api: Api = "v2"
    show_all: bool = False
    output_format: str = "text"
    strict: bool = False
    show_pii: bool = False  # markdown/github: phone numbers and personal values in clear
    more_files: tuple[Path, ...] = ()  # markdown: further campaigns in the same comment
    step_summary: Path | None = None  # $GITHUB_STEP_SUMMARY, for --format github
    save_to: Path | None = None  # -o/--out: write a saved plan here
    check: Path | None = None  # --check: compare this saved plan with the inputs instead of planning
    detailed_exitcode: bool = False  # 0 nothing to send, 2 something to send (1 stays invalid)
    state: Path | str | None = None  # a ledger to plan against (read only): SQLite path or postgresql:// URL
    environment: str = "default"  # --env: the tenant planned for (ledger rows, the saved plan)


MULTI_FILE_FORMATS = ("markdown",)


# `plan --detailed-exitcode`, as Terraform's: a successful plan with something to send.
SOMETHING_TO_SEND = 2


def run_plan(settings: PlanSettings, *, now: datetime, out: TextIO, err: TextIO | None = None,
             redact: Redact | None = None) -> ExitCode | int:
    from .ledger import check_environment_name

    check_environment_name(settings.environment)
    reporter = _reporter(settings.output_format, out, show_pii=settings.show_pii, step_summary=settings.step_summary)
    if settings.more_files:
        if settings.save_to is not None or settings.check is not None or settings.state is not None:
            raise CampaignError("-o/--out, --check and --state take one campaign file", exit_code=ExitCode.USAGE,
                                hint="plan each campaign on its own to save or check its plan")
        return _run_plans(settings, now=now, reporter=reporter, redact=redact)
    if settings.check is not None:
        if settings.save_to is not None:
            raise CampaignError("--check and -o/--out exclude each other", exit_code=ExitCode.USAGE,
                                hint="--check compares a committed plan; -o writes a new one")
        return _check_saved_plan(settings, now, out)
    campaign, warnings = load_campaign(settings.file, now=now, strict=settings.strict)
    hasher = None
    if settings.save_to is not None and not settings.show_all:
        from .planfile import RequestHasher

        hasher = RequestHasher()  # the saved plan's digest from the plan's own compile pass
    ledger_counts = None
    against: StateView | None = None
    if settings.state is not None:
        against = _plan_against_state(campaign, settings)
        ledger_counts = against.counts
    plan = build_plan(campaign, warnings, api=settings.api, limit=None if settings.show_all else DEFAULT_SHOWN,
                      on_wire=hasher, held=against.held if against is not None else None)
    to_send = plan.summary.messages
    if against is not None:
        plan, to_send = _with_ledger(plan, against)
    if redact is not None:
        plan = _redacted_plan(plan, redact)
    reporter.plan(plan, show_all=settings.show_all)
    if against is not None and settings.output_format != "json":
        out.write(_ledger_totals_line(ledger_counts, to_send))
        out.write(_recipient_states_lines(plan, against.refusal))
    if settings.save_to is not None:
        from .planfile import build_saved_plan, write_plan

        saved = build_saved_plan(campaign, plan.summary, plan_path=settings.save_to, created_at=now,
                                 ledger=ledger_counts, requests=hasher.result() if hasher else None,
                                 environment=settings.environment)
        write_plan(saved, settings.save_to)
        (err or sys.stderr).write(f"saved plan: {settings.save_to} ({saved.requests.count} requests, "
                                  f"sha256 {saved.requests.sha256[:12]}…); apply it with "
                                  f"`campaign apply {settings.save_to}`\n")
    if settings.strict and plan.warnings:
        return ExitCode.INVALID  # --strict: the plan's own warnings (encoding, no recipients...) fail it too
    if settings.detailed_exitcode:
        return SOMETHING_TO_SEND if to_send else ExitCode.OK
    return ExitCode.OK


def _check_saved_plan(settings: PlanSettings, now: datetime, out: TextIO) -> ExitCode | int:
    """`plan FILE --check PLAN`: 0 when PLAN still describes FILE's requests, 1 when stale.
    The saved input digests are compared before the campaign is loaded, so a changed CSV
    is named even when the change broke it."""
    from .planfile import campaign_path, differences, environment_mismatch, read_plan, snapshot, stale_inputs

    assert settings.check is not None
    if not settings.check.is_file():
        raise CampaignError(f"{settings.check}: no saved plan", hint=f"write one with `campaign plan "
                            f"{settings.file} -o {settings.check}` and commit it")
    saved = read_plan(settings.check)
    named = campaign_path(saved, settings.check)
    changes = []
    if not named.exists() or named.resolve() != settings.file.resolve():
        changes.append(f"the plan is for {saved.campaign_file}, not for {settings.file}")
    mismatch = environment_mismatch(saved, settings.environment)
    if mismatch is not None:  # apply there would refuse it: say so at review, not at merge
        changes.append(mismatch.replace("this apply targets", "this check (--env, CAMPAIGN_ENV) targets"))
    changes += stale_inputs(saved, settings.check)
    if not changes:
        campaign, _ = load_campaign(settings.file, now=now, strict=settings.strict)
        changes += differences(saved, snapshot(campaign, saved.api, plan_path=settings.check))
    if changes:
        for change in changes:
            out.write(f"{settings.check}: stale: {change}\n")
        env = "" if settings.environment == "default" else f" --env {settings.environment}"
        out.write(f"hint: run `campaign plan {settings.file}{env} -o {settings.check}` and commit the new plan\n")
        return ExitCode.INVALID
    out.write(f"{settings.check}: current ({saved.requests.count} requests, {saved.counts.get('messages')} "
              "messages)\n")
    if settings.detailed_exitcode:
        return SOMETHING_TO_SEND if saved.requests.count else ExitCode.OK
    return ExitCode.OK


@dataclass(frozen=True)
class StateView:
    """What `plan --state` read from the ledger (nothing else is kept of it)."""

    counts: LedgerCounts | None  # None: no ledger at that path yet
    held: Mapping[str, str]  # msisdn -> content digest if accepted, else status: Ledger.destination_states
    refusal: str | None  # why `apply` (without --allow-changes) would refuse, or None


def _plan_against_state(campaign: Campaign, settings: PlanSettings) -> StateView:
    """What the ledger holds for the campaign in the plan's environment, through the
    ledger's public read methods only. A SQLite path that does not exist is not created
    (no ledger yet: everything is to send); an existing ledger of an older schema is
    migrated on opening, as by every command, and nothing else is written."""
    from .ledger import check_environment_name, open_ledger
    from .planfile import LedgerCounts
    from .send import REPLANNED_SUFFIX, input_hash

    assert settings.state is not None
    check_environment_name(settings.environment)
    state = state_ref(settings.state)
    if isinstance(state, Path) and not state.exists():
        return StateView(None, {}, None)
    with open_ledger(state, environment=settings.environment) as ledger:
        destinations = ledger.destination_counts(campaign.id)
        stored = ledger.campaign_hash(campaign.id)
        held = ledger.destination_states(campaign.id)
    counts = LedgerCounts(destinations.get("accepted", 0), destinations.get("failed", 0),
                          destinations.get("uncertain", 0) + destinations.get("in-flight", 0))
    touched = counts.accepted + counts.uncertain
    refusal = None
    if stored is not None and touched and stored.removesuffix(REPLANNED_SUFFIX) != input_hash(campaign, settings.api):
        refusal = (f"the campaign's inputs changed after {touched} destinations were sent (or may have been): "
                   "apply refuses (exit 4) unless --allow-changes, which sends only to the recipients to send "
                   "and failed ones")
    return StateView(counts, held, refusal)


def _with_ledger(plan: Plan, against: StateView) -> tuple[Plan, int]:
    """The plan with its `ledger` object (JSON) and the number of messages apply would send:
    recipients never sent and failed ones (uncertain ones are held, accepted ones skipped,
    a changed one too)."""
    from .plan import FAILED, TO_SEND

    recipients = dict(plan.ledger["recipients"]) if plan.ledger else {}
    to_send = recipients.get(TO_SEND, 0) + recipients.get(FAILED, 0)
    counts = against.counts
    return replace(plan, ledger={
        "found": counts is not None,
        "acceptedDestinations": counts.accepted if counts else 0,
        "failedDestinations": counts.failed if counts else 0,
        "uncertainDestinations": counts.uncertain if counts else 0,
        "toSend": to_send,
        "recipients": recipients,
        "applyRefuses": against.refusal,
    }), to_send


def _recipient_states_lines(plan: Plan, refusal: str | None) -> str:
    from .plan import ACCEPTED, CHANGED, FAILED, TO_SEND, UNCERTAIN

    r = plan.ledger["recipients"] if plan.ledger else {}
    lines = (f"recipients: {r.get(TO_SEND, 0)} to send, {r.get(ACCEPTED, 0)} already accepted, "
             f"{r.get(FAILED, 0)} failed (sent again), {r.get(UNCERTAIN, 0)} uncertain (held), "
             f"{r.get(CHANGED, 0)} changed since accepted\n")
    if r.get(CHANGED, 0):
        lines += (f"  {r[CHANGED]} recipients were accepted with another text or other values than they would get "
                  "now: apply never resends them (it skips accepted numbers)\n")
    if refusal is not None:
        lines += f"apply would refuse: {refusal}\n"
    return lines


def _ledger_totals_line(counts: LedgerCounts | None, to_send: int) -> str:
    """The ledger is not named: a state URL may hold a password, and this line goes into
    pull request comments."""
    if counts is None:
        return f"ledger: none yet (nothing sent); to send: {to_send} messages\n"
    return (f"ledger: {counts.accepted} destinations already accepted, {counts.failed} failed, "
            f"{counts.uncertain} uncertain; to send: {to_send} messages\n")


def _run_plans(settings: PlanSettings, *, now: datetime, reporter: Reporter,
               redact: Redact | None = None) -> ExitCode | int:
    """Several campaigns, one output (one PR comment): a campaign that cannot be planned
    is shown in its place with its error, the others still are; exit 1 if any failed."""
    from .report import PlanFailure

    if settings.output_format not in MULTI_FILE_FORMATS:
        raise CampaignError(f"--format {settings.output_format} plans one campaign file at a time",
                            exit_code=ExitCode.USAGE, hint="--format markdown takes several files for one comment")
    items: list[Plan | PlanFailure] = []
    for path in (settings.file, *settings.more_files):
        try:
            campaign, warnings = load_campaign(path, now=now, strict=settings.strict)
            plan = build_plan(campaign, warnings, api=settings.api, limit=None if settings.show_all else DEFAULT_SHOWN)
            items.append(_redacted_plan(plan, redact) if redact is not None else plan)
        except CampaignError as error:
            message, hint = error.message, error.hint
            if redact is not None:  # a row error may quote a cell holding the key
                message, hint = redact(message), redact(hint) if hint else hint
            items.append(PlanFailure(str(path), message, hint))
    reporter.plans(items, show_all=settings.show_all)
    plans = [item for item in items if isinstance(item, Plan)]
    # the single-file rules, over every campaign of the comment
    if len(plans) < len(items) or (settings.strict and any(plan.warnings for plan in plans)):
        return ExitCode.INVALID
    if settings.detailed_exitcode and any(plan.summary.messages for plan in plans):
        return SOMETHING_TO_SEND
    return ExitCode.OK


def _redacted_plan(plan: Plan, redact: Redact) -> Plan:
    return replace(plan, warnings=tuple(_redacted(w, redact) for w in plan.warnings),
                   messages=tuple(replace(m, text=redact(m.text), correlation_id=redact(m.correlation_id))
                                  for m in plan.messages),
                   masked_texts=tuple(redact(text) for text in plan.masked_texts))


def _redacted(diagnostic: Diagnostic, redact: Redact) -> Diagnostic:
    """Redacted before any reporter wraps or cuts it: validate and plan output goes into CI
    logs and review comments, and a key that reached a file in the repository (a CSV
    header, a value) must not go on; a cut or a line wrapped by a table first would
    leave part of it."""
    hint = redact(diagnostic.hint) if diagnostic.hint else diagnostic.hint
    return replace(diagnostic, message=redact(diagnostic.message), hint=hint)


@dataclass(frozen=True)
class CompileSettings:
    file: Path
    output: Path | None = None  # None = stdout
    api: Api = "v2"


def run_compile(settings: CompileSettings, *, now: datetime, out: TextIO) -> ExitCode:
    """Write request bodies as JSON Lines; to a file only once every body compiled."""
    campaign, _ = load_campaign(settings.file, now=now)
    compiler = Compiler(campaign, settings.api)
    if settings.output is None:
        for wire in compiler.iter_wire():
            out.write(wire + "\n")
        return ExitCode.OK
    target = output_target(settings.output, campaign_inputs(settings.file, campaign))
    partial = target.with_name(target.name + ".partial")
    try:
        partial.unlink(missing_ok=True)  # a stale one from a killed run; never written through
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with open(descriptor, "w", encoding="utf-8", newline="\n") as sink:
            for wire in compiler.iter_wire():
                sink.write(wire + "\n")
        partial.replace(target)
    except OSError as error:
        code = ExitCode.IO_ERROR if error.errno in WRITE_FAILURE_ERRNOS else ExitCode.USAGE
        hint = ("free some space (or fix the device) and run it again" if code is ExitCode.IO_ERROR
                else "-o must name a file in an existing, writable folder")
        raise CampaignError(f"cannot write {settings.output}: {error.strerror or error}", exit_code=code,
                            hint=hint) from None
    finally:
        partial.unlink(missing_ok=True)
    return ExitCode.OK


def campaign_inputs(campaign_file: Path, campaign: Campaign) -> list[Path]:
    """The files a campaign is made of: `compile -o` must never overwrite one of them."""
    from .model import RecipientFile

    files = [source.path for source in (*campaign.recipients, *campaign.exclude) if isinstance(source, RecipientFile)]
    return [campaign_file, *files]


def output_target(output: Path, inputs: list[Path]) -> Path:
    """The file `compile -o OUTPUT` may replace, or a usage error.

    A symlink is written through (its target is replaced, the link stays); a device,
    FIFO or folder is refused rather than replaced by a regular file (as root,
    `-o /dev/full` used to turn the device into a file); so is any of the campaign's
    own inputs, compared after resolving links, so `-o campaign.yaml` cannot destroy it.
    """
    def refuse(reason: str, hint: str) -> CampaignError:
        return CampaignError(f"cannot write {output}: {reason}", exit_code=ExitCode.USAGE, hint=hint)

    try:
        target = output.resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise refuse(getattr(error, "strerror", None) or "the path cannot be resolved",
                     "-o must name a regular file or a new one") from None
    try:
        mode: int | None = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise refuse(error.strerror or str(error), "-o must name a file in an existing, writable folder") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise refuse("it is a directory", "-o names the file to write, e.g. -o requests.jsonl")
    if mode is not None and not stat.S_ISREG(mode):
        raise refuse(f"it is {kind_of(mode)}, not a regular file",
                     "-o replaces a regular file; for stdout leave -o out or write -o -")
    for source in inputs:
        try:
            same = source.resolve() == target or (mode is not None and os.path.samefile(source, target))
        except (OSError, RuntimeError):
            same = False
        if same:
            raise refuse("it is one of the campaign's own input files", "write the requests to a new file")
    return target


# --- apply, status, sandbox, receipts ---------------------------------------------------

DEFAULT_STATE = Path(".campaign/state.db")
# A rehearsal must never mark a real campaign as sent: sandbox runs keep their own ledger.
DEFAULT_SANDBOX_STATE = Path(".campaign/sandbox.db")
SANDBOX_RECEIPT_WAIT_SECONDS = 2.0


def state_ref(state: str | Path) -> str | Path:
    """A `--state` value as the ledger takes it: a `postgresql://` URL stays a string (a
    Path would fold its `//`), anything else is a SQLite file path."""
    from .ledger import is_postgres_url

    return str(state) if is_postgres_url(str(state)) else Path(state)


def parse_duration(text: str) -> float:
    """`30s`, `5m`, `1h`, `1h30m` or plain seconds (`90`, `2.5`) as seconds."""
    import re

    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    if not value or parts is None:
        raise CampaignError(f"invalid duration {text!r}", exit_code=ExitCode.USAGE,
                            hint="write it like 30s, 5m, 1h30m or a number of seconds")
    hours, minutes, seconds = parts.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


@dataclass(frozen=True)
class ApplySettings:
    file: Path
    state: Path | str | None = None  # a SQLite path or a postgresql:// URL
    api: Api = "v2"
    yes: bool = False
    quiet: bool = False
    verbose: bool = False
    resend_uncertain: bool = False
    allow_changes: bool = False
    send_now: bool = False
    sandbox: bool = False
    base_url: str | None = None
    region: str | None = None
    output_format: str = "text"
    max_in_flight: int | None = None  # None: as the campaign needs (send.in_flight_for)
    timeout: float = 30.0
    step_summary: Path | None = None  # $GITHUB_STEP_SUMMARY, for --format github
    environment: str = "default"  # the tenant this run targets; the ledger keys by it
    lock_timeout: float = 0.0  # seconds to wait for another apply of the campaign to finish

    @property
    def state_ref(self) -> str | Path:
        return _state_or_default(self.state, self.sandbox)


def _state_or_default(state: Path | str | None, sandbox: bool) -> str | Path:
    """--state as the ledger takes it (a URL stays a string); without one, the embedded
    default, a ledger of its own for rehearsals so a sandbox run never marks a real send."""
    if state is not None:
        return state_ref(state)
    return DEFAULT_SANDBOX_STATE if sandbox else DEFAULT_STATE



@dataclass(frozen=True)
class Console:
    """What apply needs from the terminal, so it runs the same under click and in tests."""

    out: TextIO
    err: TextIO
    interactive: bool
    confirm: Callable[[str], bool]
    environ: Mapping[str, str]


def run_apply(settings: ApplySettings, *, now: datetime, console: Console) -> ExitCode:
    from .client import ApiClient, env_redactor
    from .ledger import check_environment_name, open_ledger
    from .planfile import is_saved_plan
    from .send import Applier, SendPolicy, in_flight_for, prepare, schedule_for_now
    from .report import progress_bar

    check_environment_name(settings.environment)
    verified: bytes | None = None  # per-request fingerprints when applying a saved plan
    plan_path = settings.file
    if is_saved_plan(settings.file):
        settings, verified = _settings_from_saved_plan(settings, now=now, err=console.err)
    campaign, warnings = load_campaign(settings.file, now=now)
    campaign = schedule_for_now(campaign, now, send_now=settings.send_now)
    plan = build_plan(campaign, warnings, api=settings.api, limit=0)
    if settings.output_format == "text":
        redact = env_redactor(console.environ)  # warnings may quote recipient values
        _reporter("text", console.err).plan(_redacted_plan(plan, redact) if redact else plan, show_all=False)
    target = "the local sandbox" if settings.sandbox else "Webex Connect"
    if not settings.yes:
        if not console.interactive:
            raise CampaignError("refusing to send without confirmation", exit_code=ExitCode.USAGE,
                                hint="pass --yes to apply from a pipeline")
        if not console.confirm(f"Send {plan.summary.messages} messages to {target}?"):
            console.err.write("nothing sent: declined at the prompt\n")
            return ExitCode.REFUSED
    with ExitStack() as stack:
        ledger = stack.enter_context(open_ledger(settings.state_ref, environment=settings.environment))
        stack.enter_context(ledger.apply_lock(campaign.id, timeout=settings.lock_timeout))
        base_url, credentials, sandbox = _api_target(settings, campaign, now, console.environ, stack)
        ledger.check_environment_host(_api_host(base_url))
        in_flight = settings.max_in_flight or in_flight_for(campaign.tps, plan.summary.requests,
                                                            plan.summary.messages)
        client = stack.enter_context(ApiClient(base_url, credentials, timeout=settings.timeout,
                                               max_connections=in_flight))
        held = ledger.mark_dead_in_flight_uncertain(campaign.id)
        if held:
            console.err.write(f"{held} batches were in flight when an earlier run died: now uncertain\n")
        compiler = prepare(campaign, ledger, api=settings.api, allow_changes=settings.allow_changes,
                           resend_uncertain=settings.resend_uncertain)
        run_id = ledger.begin_run(campaign.id)
        log = _verbose_log(console.err, credentials) if settings.verbose else None
        progress = stack.enter_context(progress_bar(console.err, plan.summary.messages,
                                                    enabled=console.interactive and not settings.quiet))
        policy = SendPolicy(max_in_flight=in_flight, resend_uncertain=settings.resend_uncertain)
        applier = Applier(campaign, ledger=ledger, sender=client, api=settings.api, policy=policy, run_id=run_id,
                          on_progress=progress, log=log)
        batches = compiler.iter_batches()
        if verified is not None and compiler.skip is None:
            from .planfile import guard_batches

            batches = guard_batches(batches, verified, plan_path)
        result = applier.run(batches)
        ledger.finish_run(run_id)
        if sandbox is not None:
            _collect_sandbox_receipts(sandbox, ledger, campaign.id)
    _reporter(settings.output_format, console.out, step_summary=settings.step_summary).apply(result)
    return result.exit_code


def _settings_from_saved_plan(settings: ApplySettings, *, now: datetime, err: TextIO) -> tuple[ApplySettings, bytes]:
    """`apply PLAN`: the campaign the plan names, sent only if it would send exactly the
    reviewed requests. Every input and the request bodies are recomputed here; anything
    that differs refuses (exit 4) before a ledger is opened or a request made. Returns
    the verified requests' fingerprints, which the send is checked against."""
    from .planfile import campaign_path, differences, environment_mismatch, read_plan, snapshot, stale_inputs

    plan_path = settings.file
    saved = read_plan(plan_path)
    mismatch = environment_mismatch(saved, settings.environment)
    if mismatch is not None:
        raise CampaignError(
            f"{plan_path}: {mismatch}; nothing sent",
            exit_code=ExitCode.REFUSED,
            hint=f"apply it with --env {saved.environment}, or review a plan made with --env {settings.environment}",
        )
    changes = stale_inputs(saved, plan_path)
    fingerprints = bytearray()
    if not changes:
        campaign, _ = load_campaign(campaign_path(saved, plan_path), now=now)
        changes = differences(saved, snapshot(campaign, saved.api, plan_path=plan_path, fingerprints=fingerprints))
    if changes:
        raise CampaignError(
            f"{plan_path}: the saved plan is stale, nothing sent: " + "; ".join(changes),
            exit_code=ExitCode.REFUSED,
            hint=f"review a new plan (`campaign plan {campaign_path(saved, plan_path)} -o {plan_path}`), then apply it",
        )
    err.write(f"{plan_path}: saved plan matches {saved.campaign_file} ({saved.requests.count} requests)\n")
    return replace(settings, file=campaign_path(saved, plan_path), api=saved.api), bytes(fingerprints)


def _api_host(base_url: str) -> str:
    """The host an environment's requests go to (no port: a sandbox's changes every run)."""
    from urllib.parse import urlsplit

    return (urlsplit(base_url).hostname or base_url).lower()


def _api_target(settings: ApplySettings | TestSendSettings, campaign: Campaign, now: datetime,
                environ: Mapping[str, str], stack: ExitStack) -> tuple[str, Credentials, Sandbox | None]:
    """Where apply and test-send send: an in-process sandbox for a rehearsal (its own
    throwaway key), else the tenant that --base-url/--region or the environment names,
    with the credentials from the environment."""
    from .client import BASE_URL_ENV, REGION_ENV, Credentials, resolve_base_url

    if settings.sandbox:
        sandbox = stack.enter_context(_sandbox_for(campaign, now))
        return sandbox.url, Credentials(service_key="sandbox", jwt=None), sandbox
    credentials = Credentials.from_env(environ)  # first: a missing key is the likelier mistake
    base_url = resolve_base_url(
        base_url=settings.base_url or environ.get(BASE_URL_ENV) or None,
        region=settings.region or environ.get(REGION_ENV) or None,
    )
    return base_url, credentials, None


def _sandbox_for(campaign: Campaign, now: datetime | None = None) -> Sandbox:
    from .sandbox import Sandbox, SandboxSettings

    templates = {}
    if campaign.template is not None:
        templates[campaign.template.id] = campaign.template.preview or f"(template {campaign.template.id})"
    return Sandbox(SandboxSettings(tps=campaign.tps, templates=templates, now=now))


def _collect_sandbox_receipts(sandbox: Sandbox, ledger: Ledger, campaign_id: str) -> None:
    """A rehearsal shows delivery too: the sandbox's receipts go straight into the ledger.

    The sandbox posts receipts from a background thread; wait until its outbox stops
    growing (bounded), then record what it holds.
    """
    from .receipts import record_receipts

    deadline = time.monotonic() + SANDBOX_RECEIPT_WAIT_SECONDS
    seen = -1
    while time.monotonic() < deadline and len(sandbox.outbox()) != seen:
        seen = len(sandbox.outbox())
        time.sleep(0.1)
    record_receipts(ledger, (item["receipt"] for item in sandbox.outbox()), campaign_id)


def _verbose_log(err: TextIO, credentials: Credentials) -> Callable[[str], None]:
    from .client import redact

    def log(line: str) -> None:
        err.write(redact(line, credentials) + "\n")

    return log


@dataclass(frozen=True)
class StatusSettings:
    file: Path | None  # the campaign file, or None with `campaign_id` (from the ledger alone)
    state: Path | str = DEFAULT_STATE
    output_format: str = "text"
    campaign_id: str | None = None
    environment: str = "default"


def run_status(settings: StatusSettings, *, now: datetime, out: TextIO) -> ExitCode:
    from .ledger import check_environment_name, mask_state, open_ledger

    check_environment_name(settings.environment)
    if settings.file is not None and settings.campaign_id is None:
        campaign_id = load_campaign(settings.file, now=now)[0].id
    elif settings.campaign_id is not None and settings.file is None:
        campaign_id = settings.campaign_id
    else:
        raise CampaignError("status needs a campaign FILE or --id ID (one of them)", exit_code=ExitCode.USAGE)
    state = state_ref(settings.state)
    if isinstance(state, Path) and not state.exists():
        raise CampaignError(f"no state at {state}: campaign {campaign_id} was never applied with it",
                            hint="pass --state PATH if apply used another one")
    from .testsend import ledger_key

    with open_ledger(state, environment=settings.environment) as ledger:
        summary = ledger.summary(campaign_id)
        test_sends = ledger.summary(ledger_key(campaign_id))  # apart: never the campaign's own sends
        known = ledger.campaign_ids() if settings.file is None and not summary.known else []
    if settings.file is None and not summary.known:
        listed = ", ".join(known[:10]) or "none"
        raise CampaignError(
            f"campaign '{campaign_id}' is not in the ledger {mask_state(state)} "
            f"(environment '{settings.environment}'); it knows: {listed}",
            hint="check --id, --env and --state")
    _reporter(settings.output_format, out).status(summary, test_sends)
    return ExitCode.PARTIAL if summary.batches.get("failed") or summary.batches.get("uncertain") else ExitCode.OK


# --- affected ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AffectedSettings:
    since: str
    paths: tuple[Path, ...] = ()
    output_format: str = "text"
    deleted: bool = False  # list the deleted campaigns instead of the affected ones (text)


def run_affected(settings: AffectedSettings, *, out: TextIO, cwd: Path | None = None) -> ExitCode:
    """One path a line (what a shell loop reads), or one JSON object with both lists."""
    import json

    from .affected import find_affected

    result = find_affected(settings.since, settings.paths, cwd=cwd)
    if settings.output_format == "json":
        out.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        for path in result.deleted if settings.deleted else result.campaigns:
            out.write(path + "\n")
    return ExitCode.OK


@dataclass(frozen=True)
class ReceiptsListenSettings:
    state: str | Path = DEFAULT_STATE  # a SQLite path or a postgresql:// URL (see state_ref)
    host: str = "127.0.0.1"
    port: int = 8080
    path: str = "/receipts"  # = receipts.DEFAULT_PATH (not imported: uvicorn loads only here)
    no_auth: bool = False


def run_receipts_listen(settings: ReceiptsListenSettings, *, environ: Mapping[str, str],
                        ready: Callable[[str], None]) -> ExitCode:
    """Serve receipts into the ledger until interrupted. Every refusal (no token, --no-auth
    off loopback, port taken, unusable ledger) happens before the first request is accepted."""
    from .ledger import Ledger
    from .receipts import ReceiptListener, check_listen_auth, receipts_token

    if not settings.path.startswith("/"):
        raise CampaignError(f"--path must start with '/', not {settings.path!r}", exit_code=ExitCode.USAGE)
    token = None if settings.no_auth else receipts_token(environ)
    check_listen_auth(settings.host, token, settings.no_auth)
    with Ledger.open(settings.state) as ledger:
        listener = ReceiptListener(ledger, token=token, host=settings.host, port=settings.port, path=settings.path)
        ready(listener.url + ("" if token is not None else " (no auth: loopback only)"))
        listener.serve()
    return ExitCode.OK


# --- test-send ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TestSendSettings:
    file: Path
    to: tuple[str, ...]  # test numbers as typed; validated like recipients
    as_msisdn: str | None = None  # the recipient whose message is sent; None = the first
    state: Path | str | None = None  # a SQLite path or a postgresql:// URL, as for apply
    api: Api = "v2"
    sandbox: bool = False
    base_url: str | None = None
    region: str | None = None
    timeout: float = 30.0
    environment: str = "default"  # the tenant, as for apply: its ledger and its API host

    @property
    def state_ref(self) -> str | Path:
        return _state_or_default(self.state, self.sandbox)


def run_test_send(settings: TestSendSettings, *, now: datetime, console: Console) -> ExitCode:
    """Send the campaign's exact message for one recipient to the test numbers, now,
    through apply's own path; recorded under the ledger key `<id>#test-send`."""
    from .client import ApiClient
    from .ledger import open_ledger
    from .send import Applier, SendPolicy
    from .testsend import (Delivery, TestSendResult, batches_for_test, chosen_message, for_now, ledger_key,
                           normalise_test_numbers)

    numbers = normalise_test_numbers(settings.to)
    campaign, _ = load_campaign(settings.file, now=now)
    campaign = for_now(campaign, now)
    compiler = Compiler(campaign, settings.api)
    chosen = chosen_message(Compiler(campaign, settings.api), settings.as_msisdn)
    key = ledger_key(campaign.id)
    with ExitStack() as stack:
        ledger = stack.enter_context(open_ledger(settings.state_ref, environment=settings.environment))
        stack.enter_context(ledger.apply_lock(key))
        base_url, credentials, _ = _api_target(settings, campaign, now, console.environ, stack)
        ledger.check_environment_host(_api_host(base_url))
        client = stack.enter_context(ApiClient(base_url, credentials, timeout=settings.timeout))
        ledger.mark_dead_in_flight_uncertain(key)
        run_id = ledger.begin_run(key)
        batches = list(batches_for_test(compiler, chosen, numbers, run_id))
        applier = Applier(replace(campaign, id=key), ledger=ledger, sender=client, api=settings.api,
                          policy=SendPolicy(), run_id=run_id)
        outcome = applier.run(iter(batches))
        ledger.finish_run(run_id)
        deliveries = []
        for batch in batches:
            record = ledger.batch_record(batch.key)
            for destination in batch.destinations:
                deliveries.append(Delivery(destination.msisdn, record.status if record else "pending",
                                           record.message_id if record else None))
    first = batches[0].body
    sent_text = (f"template {first['template']['id']}" if "template" in first
                 else first["content"] if settings.api == "v1" else first["content"]["text"])
    result = TestSendResult(
        campaign_id=campaign.id, personalisation="platform" if compiler.platform else "local", api=settings.api,
        rendered_for=chosen.message.msisdn, text=chosen.message.text,
        wire_text=None if sent_text == chosen.message.text else str(sent_text),
        deliveries=tuple(deliveries), exit_code=outcome.exit_code)
    _reporter("text", console.out).test_send(result)
    return result.exit_code
