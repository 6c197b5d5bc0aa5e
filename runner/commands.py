"""One plain function per command, each taking one typed settings value.

The click layer only parses options into these settings; everything a command does is
here, callable (and tested) without click. Each function returns the exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .compile import Compiler
from .errors import CampaignError, ExitCode
from .model import Api, Campaign
from .plan import DEFAULT_SHOWN, build_plan
from .validate import load_campaign, validate_paths

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


def run_validate(settings: ValidateSettings, *, now: datetime, out: TextIO) -> ExitCode:
    result = validate_paths(settings.paths, now=now, strict=settings.strict)
    if not result.files:
        raise CampaignError("no campaign files (*.yaml, *.yml) found", exit_code=ExitCode.USAGE)
    _reporter(settings.output_format, out).validation(result)
    return ExitCode.OK if result.ok else ExitCode.INVALID


@dataclass(frozen=True)
class PlanSettings:
    file: Path
    api: Api = "v2"
    show_all: bool = False
    output_format: str = "text"
    strict: bool = False


def run_plan(settings: PlanSettings, *, now: datetime, out: TextIO) -> ExitCode:
    campaign, warnings = load_campaign(settings.file, now=now, strict=settings.strict)
    plan = build_plan(campaign, warnings, api=settings.api, limit=None if settings.show_all else DEFAULT_SHOWN)
    _reporter(settings.output_format, out).plan(plan, show_all=settings.show_all)
    return ExitCode.OK


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
    partial = settings.output.with_name(settings.output.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as sink:
            for wire in compiler.iter_wire():
                sink.write(wire + "\n")
        partial.replace(settings.output)
    except OSError as error:
        raise CampaignError(f"cannot write {settings.output}: {error.strerror or error}", exit_code=ExitCode.USAGE,
                            hint="-o must name a file in an existing, writable folder") from None
    finally:
        partial.unlink(missing_ok=True)
    return ExitCode.OK


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
    max_in_flight: int = 8
    timeout: float = 30.0
    environment: str = "default"  # the tenant this run targets; the ledger keys by it
    lock_timeout: float = 0.0  # seconds to wait for another apply of the campaign to finish

    @property
    def state_path(self) -> Path:
        if self.state is not None:
            return Path(self.state)
        return DEFAULT_SANDBOX_STATE if self.sandbox else DEFAULT_STATE

    @property
    def state_ref(self) -> str | Path:
        return self.state_path if self.state is None else state_ref(self.state)


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
    from .ledger import check_environment_name, open_ledger
    from .send import Applier, SendPolicy, prepare, schedule_for_now
    from .report import progress_bar

    check_environment_name(settings.environment)
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
        ledger = stack.enter_context(open_ledger(settings.state_ref, environment=settings.environment))
        stack.enter_context(ledger.apply_lock(campaign.id, timeout=settings.lock_timeout))
        sandbox = stack.enter_context(_sandbox_for(campaign)) if settings.sandbox else None
        if sandbox is not None:
            base_url, credentials = sandbox.url, Credentials(service_key="sandbox", jwt=None)
        else:
            credentials = Credentials.from_env(console.environ)
            base_url = resolve_base_url(
                base_url=settings.base_url or console.environ.get(BASE_URL_ENV) or None,
                region=settings.region or console.environ.get(REGION_ENV) or None,
            )
        ledger.check_environment_host(_api_host(base_url))
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


def _api_host(base_url: str) -> str:
    """The host an environment's requests go to (no port: a sandbox's changes every run)."""
    from urllib.parse import urlsplit

    return (urlsplit(base_url).hostname or base_url).lower()


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
    with open_ledger(state, environment=settings.environment) as ledger:
        summary = ledger.summary(campaign_id)
        known = ledger.campaign_ids() if settings.file is None and not summary.known else []
    if settings.file is None and not summary.known:
        listed = ", ".join(known[:10]) or "none"
        raise CampaignError(
            f"campaign '{campaign_id}' is not in the ledger {mask_state(state)} "
            f"(environment '{settings.environment}'); it knows: {listed}",
            hint="check --id, --env and --state")
    _reporter(settings.output_format, out).status(summary)
    return ExitCode.PARTIAL if summary.batches.get("failed") or summary.batches.get("uncertain") else ExitCode.OK
