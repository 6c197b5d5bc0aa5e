"""One plain function per command, each taking one typed settings value.

The click layer only parses options into these settings; everything a command does is
here, callable (and tested) without click. Each function returns the exit code.
"""

from __future__ import annotations

import os
import stat
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
from .plan import DEFAULT_SHOWN, build_plan
from .validate import ValidationResult, load_campaign, validate_paths

# The sending side (httpx, the ledger, the sandbox server) and the reporters (rich) are
# imported where they are used, so `validate`, `plan` and `compile` in a pipeline do not
# pay for loading what they do not run.
if TYPE_CHECKING:
    from .client import Credentials
    from .ledger import Ledger
    from .report import Reporter
    from .sandbox import Sandbox


def _reporter(output_format: str, out: TextIO) -> Reporter:
    """The reporter for a format; `rich` is imported here, because `compile` has no use
    for it and a pipeline pays its import on every run."""
    from .report import REPORTER_BY_NAME

    return REPORTER_BY_NAME[output_format](out)


@dataclass(frozen=True)
class ValidateSettings:
    paths: tuple[Path, ...]
    output_format: str = "text"
    strict: bool = False


# Redacts the environment's credentials from a text (see cli._env_redactor).
Redact = Callable[[str], str]


def run_validate(settings: ValidateSettings, *, now: datetime, out: TextIO, redact: Redact | None = None) -> ExitCode:
    result = validate_paths(settings.paths, now=now, strict=settings.strict)
    if not result.files:
        raise CampaignError("no campaign files (*.yaml, *.yml) found", exit_code=ExitCode.USAGE)
    if redact is not None:
        result = ValidationResult(tuple(
            replace(f, diagnostics=tuple(_redacted(d, redact) for d in f.diagnostics)) for f in result.files))
    _reporter(settings.output_format, out).validation(result)
    return ExitCode.OK if result.ok else ExitCode.INVALID


@dataclass(frozen=True)
class PlanSettings:
    file: Path
    api: Api = "v2"
    show_all: bool = False
    output_format: str = "text"
    strict: bool = False


def run_plan(settings: PlanSettings, *, now: datetime, out: TextIO, redact: Redact | None = None) -> ExitCode:
    campaign, warnings = load_campaign(settings.file, now=now, strict=settings.strict)
    plan = build_plan(campaign, warnings, api=settings.api, limit=None if settings.show_all else DEFAULT_SHOWN)
    if redact is not None:
        plan = replace(plan, warnings=tuple(_redacted(w, redact) for w in plan.warnings), messages=tuple(
            replace(m, text=redact(m.text), correlation_id=redact(m.correlation_id)) for m in plan.messages))
    _reporter(settings.output_format, out).plan(plan, show_all=settings.show_all)
    return ExitCode.OK


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


@dataclass(frozen=True)
class ApplySettings:
    file: Path
    state: Path | None = None
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
    max_in_flight: int = 8
    timeout: float = 30.0

    @property
    def state_path(self) -> Path:
        if self.state is not None:
            return self.state
        return DEFAULT_SANDBOX_STATE if self.sandbox else DEFAULT_STATE


@dataclass(frozen=True)
class Console:
    """What apply needs from the terminal, so it runs the same under click and in tests."""

    out: TextIO
    err: TextIO
    interactive: bool
    confirm: Callable[[str], bool]
    environ: Mapping[str, str]


def run_apply(settings: ApplySettings, *, now: datetime, console: Console) -> ExitCode:
    from .client import BASE_URL_ENV, REGION_ENV, ApiClient, Credentials, resolve_base_url
    from .ledger import Ledger, acquire_lock
    from .send import Applier, SendPolicy, prepare, schedule_for_now
    from .report import progress_bar

    campaign, warnings = load_campaign(settings.file, now=now)
    campaign = schedule_for_now(campaign, now, send_now=settings.send_now)
    plan = build_plan(campaign, warnings, api=settings.api, limit=0)
    if settings.output_format == "text":
        _reporter("text", console.err).plan(plan, show_all=False)
    target = "the local sandbox" if settings.sandbox else "Webex Connect"
    if not settings.yes:
        if not console.interactive:
            raise CampaignError("refusing to send without confirmation", exit_code=ExitCode.USAGE,
                                hint="pass --yes to apply from a pipeline")
        if not console.confirm(f"Send {plan.summary.messages} messages to {target}?"):
            console.err.write("nothing sent\n")
            return ExitCode.OK
    with ExitStack() as stack:
        stack.enter_context(acquire_lock(settings.state_path, campaign.id))
        ledger = stack.enter_context(Ledger.open(settings.state_path))
        sandbox = stack.enter_context(_sandbox_for(campaign)) if settings.sandbox else None
        if sandbox is not None:
            base_url, credentials = sandbox.url, Credentials(service_key="sandbox", jwt=None)
        else:
            credentials = Credentials.from_env(console.environ)
            base_url = resolve_base_url(
                base_url=settings.base_url or console.environ.get(BASE_URL_ENV) or None,
                region=settings.region or console.environ.get(REGION_ENV) or None,
            )
        client = stack.enter_context(ApiClient(base_url, credentials, timeout=settings.timeout,
                                               max_connections=settings.max_in_flight))
        held = ledger.mark_dead_in_flight_uncertain(campaign.id)
        if held:
            console.err.write(f"{held} batches were in flight when an earlier run died: now uncertain\n")
        compiler = prepare(campaign, ledger, api=settings.api, allow_changes=settings.allow_changes,
                           resend_uncertain=settings.resend_uncertain)
        run_id = ledger.begin_run(campaign.id)
        log = _verbose_log(console.err, credentials) if settings.verbose else None
        progress = stack.enter_context(progress_bar(console.err, plan.summary.messages,
                                                    enabled=console.interactive and not settings.quiet))
        policy = SendPolicy(max_in_flight=settings.max_in_flight, resend_uncertain=settings.resend_uncertain)
        applier = Applier(campaign, ledger=ledger, sender=client, api=settings.api, policy=policy, run_id=run_id,
                          on_progress=progress, log=log)
        result = applier.run(compiler.iter_batches())
        ledger.finish_run(run_id)
        if sandbox is not None:
            _collect_sandbox_receipts(sandbox, ledger, campaign.id)
    _reporter(settings.output_format, console.out).apply(result)
    return result.exit_code


def _sandbox_for(campaign: Campaign) -> Sandbox:
    from .sandbox import Sandbox, SandboxSettings

    templates = {}
    if campaign.template is not None:
        templates[campaign.template.id] = campaign.template.preview or f"(template {campaign.template.id})"
    return Sandbox(SandboxSettings(tps=campaign.tps, templates=templates))


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
    file: Path
    state: Path = DEFAULT_STATE
    output_format: str = "text"


def run_status(settings: StatusSettings, *, now: datetime, out: TextIO) -> ExitCode:
    campaign, _ = load_campaign(settings.file, now=now)
    if not settings.state.exists():
        raise CampaignError(f"no state at {settings.state}: campaign {campaign.id} was never applied with it",
                            hint="pass --state PATH if apply used another one")
    from .ledger import Ledger

    with Ledger.open(settings.state) as ledger:
        summary = ledger.summary(campaign.id)
    _reporter(settings.output_format, out).status(summary)
    return ExitCode.PARTIAL if summary.batches.get("failed") or summary.batches.get("uncertain") else ExitCode.OK
