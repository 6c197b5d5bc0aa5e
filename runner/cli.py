"""The `campaign` command: options in, one settings value out, one plain function called.

All error handling is here, once: a `CampaignError` prints one line (plus a hint) and
exits with its code; anything else is reported plainly as a bug, never as a traceback
unless `--traceback` asks for one. Secrets from the environment are redacted from
anything printed here.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click

from . import __version__
from .errors import CampaignError, ExitCode
from .files import WRITE_FAILURE_ERRNOS

def redact_env_secrets(text: str) -> str:
    """Whatever the CLI prints passes through here: no credential from the environment survives."""
    redactor = _env_redactor()
    return text if redactor is None else redactor(text)


def _env_redactor() -> Callable[[str], str] | None:
    """A function redacting the environment's credentials, or None when none are set;
    the credentials are read once, so validate and plan can redact every value they show."""
    from .client import env_redactor

    return env_redactor(os.environ)


def _fail(message: str, code: int, hint: str | None = None) -> NoReturn:
    click.echo(redact_env_secrets(message), err=True)
    if hint:
        click.echo(redact_env_secrets(f"hint: {hint}"), err=True)
    sys.exit(code)


def _freeze_imports() -> None:
    """Modules, schema and metadata loaded so far live as long as the process. Moved out
    of the collector's sight, they are not rescanned by every full collection of a long
    run: a thirtieth of compile time at a million recipients."""
    gc.freeze()


@contextmanager
def error_handler(show_traceback: bool = False) -> Iterator[None]:
    """The one place errors become exit codes (after pre-commit's error_handler)."""
    try:
        try:
            yield
        except SystemExit:
            sys.stdout.flush()  # buffered output fails here, not at interpreter exit, where no one reports it
            raise
        sys.stdout.flush()
    except CampaignError as error:
        from .safe_text import visible  # a message may quote a value from a file: no raw control bytes

        message = error.message if ": error: " in error.message else f"error: {error.message}"
        _fail(visible(message), int(error.exit_code), visible(error.hint) if error.hint else None)
    except KeyboardInterrupt:
        _fail("interrupted", int(ExitCode.INTERRUPTED))
    except click.exceptions.Exit:
        raise
    except click.ClickException:
        raise
    except BrokenPipeError:
        _stop_quietly()
    except OSError as error:
        if error.errno not in WRITE_FAILURE_ERRNOS:
            _unexpected(error, show_traceback)
        where = f"cannot write {error.filename}" if error.filename else "cannot write output"
        _fail(f"error: {where}: {error.strerror or type(error).__name__}", int(ExitCode.IO_ERROR),
              "free some space (or fix the device) and run it again")
    except Exception as error:  # a bug: say so plainly
        _unexpected(error, show_traceback)


def _stop_quietly() -> NoReturn:
    """The reader of stdout went away (`campaign compile ... | head -1`): stop, as Unix tools do,
    without a word and with exit 0 (the reader asked for no more). stdout is pointed at
    /dev/null first, so the interpreter's own final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real descriptor behind stdout (tests): nothing left to flush
        pass
    sys.exit(int(ExitCode.OK))


def _unexpected(error: BaseException, show_traceback: bool) -> NoReturn:
    if show_traceback:
        click.echo(redact_env_secrets(traceback.format_exc()), err=True)
    _fail(
        f"campaign: unexpected error (a bug in campaign-runner): {type(error).__name__}: {error}",
        int(ExitCode.INTERNAL),
        None if show_traceback else "rerun with --traceback and report it",
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def now_utc() -> datetime:
    override = os.environ.get("CAMPAIGN_NOW")  # lets tests and rehearsals pin the clock
    if override:
        try:
            moment = datetime.fromisoformat(override)
        except ValueError:
            raise CampaignError(f"CAMPAIGN_NOW={override!r} is not an ISO 8601 date-time", exit_code=ExitCode.USAGE,
                                hint="e.g. CAMPAIGN_NOW=2026-11-23T12:00:00Z, or unset it") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return datetime.now(timezone.utc)


FORMAT_HELP = "Output format."


def format_option(names: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--format", "output_format", type=click.Choice(names), default=names[0],
                        show_default=True, help=FORMAT_HELP)


def _stdout() -> TextIO:
    return sys.stdout


def _step_summary() -> Path | None:
    """GitHub Actions names the step summary file in $GITHUB_STEP_SUMMARY (empty = none)."""
    value = os.environ.get("GITHUB_STEP_SUMMARY")
    return Path(value) if value else None


class Group(click.Group):
    """Usage errors exit 2 (click's default) and never show a traceback."""


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="campaign")
@click.option("--traceback", "show_traceback", is_flag=True,
              help="Print the Python traceback of a crash (exit 70), for a bug report.")
@click.pass_context
def cli(ctx: click.Context, show_traceback: bool) -> None:
    """Validate, preview and send SMS campaigns kept as YAML, through Webex Connect."""
    ctx.obj = {"traceback": show_traceback}


def _handler() -> Any:
    ctx = click.get_current_context()
    root = ctx.find_root()
    return error_handler(bool(root.obj and root.obj.get("traceback")))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option(("text", "json", "github", "markdown"))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(paths: tuple[Path, ...], output_format: str, strict: bool) -> None:
    """Check campaign files (or folders of them). Exit 0 valid, 1 errors, 2 usage."""
    with _handler():
        from .commands import ValidateSettings, run_validate

        sys.exit(run_validate(ValidateSettings(paths, output_format, strict, step_summary=_step_summary()),
                              now=now_utc(), out=_stdout(), redact=_env_redactor()))


API_OPTION = click.option("--api", type=click.Choice(["v2", "v1"]), default="v2", show_default=True,
                          help="Target API: Send Message API v2, or SMS API v1 (one request per destination).")


ENV_OPTION = click.option("--env", "environment", envvar="CAMPAIGN_ENV", default="default", show_default=True,
                          help="The environment (tenant) this run targets; env CAMPAIGN_ENV. "
                          "Each environment gets every campaign once.")


class _DetailedUsageError(click.UsageError):
    exit_code = int(ExitCode.INVALID)


class DetailedExitCommand(click.Command):
    """With --detailed-exitcode, 2 means "something to send": a usage error must not look
    like that, so it exits 1 (as Terraform's -detailed-exitcode does)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        detailed = "--detailed-exitcode" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            if detailed:
                raise _DetailedUsageError(error.message, error.ctx) from None
            raise


@contextmanager
def _usage_as_invalid(enabled: bool) -> Iterator[None]:
    try:
        yield
    except CampaignError as error:
        if enabled and error.exit_code == ExitCode.USAGE:
            error.exit_code = ExitCode.INVALID
        raise


@cli.command(cls=DetailedExitCommand)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@API_OPTION
@click.option("--all", "show_all", is_flag=True, help="Show every message, not the first 10.")
@format_option(("text", "json", "markdown", "github"))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--show-pii", is_flag=True,
              help="markdown/github: show phone numbers and personal values (masked by default).")
@click.option("-o", "--out", "save_to", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a saved plan here (JSON; commit it, then `campaign apply PLAN`).")
@click.option("--check", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Only compare this saved plan with FILE's inputs: exit 0 current, 1 stale.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when nothing is to send, 2 when something is, 1 invalid (like Terraform).")
@click.option("--state", default=None,
              help="Ledger to plan against (read only): a SQLite file or a postgresql:// URL; env CAMPAIGN_STATE "
              "(or CAMPAIGN_STATE_FILE). Shows per recipient: to send, accepted, failed, uncertain, changed.")
@ENV_OPTION
def plan(files: tuple[Path, ...], api: str, show_all: bool, output_format: str, strict: bool, show_pii: bool,
         save_to: Path | None, check: Path | None, detailed_exitcode: bool, state: str | None,
         environment: str) -> None:
    """Dry run: every rendered message, its encoding and segments, and the totals.

    Several FILES make one markdown comment (--format markdown)."""
    with _handler(), _usage_as_invalid(detailed_exitcode):
        from .commands import PlanSettings, run_plan

        _freeze_imports()

        settings = PlanSettings(files[0], "v1" if api == "v1" else "v2", show_all, output_format, strict,
                                show_pii=show_pii, more_files=files[1:], step_summary=_step_summary(),
                                save_to=save_to, check=check, detailed_exitcode=detailed_exitcode,
                                # several files make one comment without a ledger: CAMPAIGN_STATE is not read then
                                state=_state_from(state, None) if state or len(files) == 1 else state,
                                environment=environment)
        sys.exit(run_plan(settings, now=now_utc(), out=_stdout(), err=sys.stderr, redact=_env_redactor()))


@cli.command(name="compile")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), default=None,
              help="Write JSON Lines here instead of stdout (replaced only when complete; a symlink is written "
                   "through; a device, FIFO, folder or one of the campaign's own files is refused). - is stdout.")
@API_OPTION
def compile_command(file: Path, output: Path | None, api: str) -> None:
    """Write the exact request bodies, one JSON object per line."""
    with _handler():
        from .commands import CompileSettings, run_compile

        _freeze_imports()

        settings = CompileSettings(file, None if output == Path("-") else output, "v1" if api == "v1" else "v2")
        sys.exit(run_compile(settings, now=now_utc(), out=_stdout()))


STATE_HELP = ("Ledger: a SQLite file (default .campaign/state.db; .campaign/sandbox.db with --sandbox) or a "
              "postgresql:// URL; env CAMPAIGN_STATE (or CAMPAIGN_STATE_FILE naming a file that holds it).")


def _state_from(state: str | None, default: str | None) -> str | None:
    """--state, else CAMPAIGN_STATE, else the content of the file that CAMPAIGN_STATE_FILE
    names (a URL with a password is a secret), else the default."""
    if state:
        return state
    if os.environ.get("CAMPAIGN_STATE"):
        return os.environ["CAMPAIGN_STATE"]
    named = os.environ.get("CAMPAIGN_STATE_FILE")
    if not named:
        return default
    path = Path(named)
    try:
        if not path.is_file():
            raise CampaignError(f"CAMPAIGN_STATE_FILE {named} is not a regular file", exit_code=ExitCode.USAGE)
        text = path.read_text(encoding="utf-8")[:4096].strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignError(f"cannot read CAMPAIGN_STATE_FILE {named}: {exc}", exit_code=ExitCode.USAGE) from None
    if not text:
        raise CampaignError(f"CAMPAIGN_STATE_FILE {named} is empty", exit_code=ExitCode.USAGE)
    return text


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--state", default=None, help=STATE_HELP + " --sandbox ignores the variables: a rehearsal never "
              "writes to the real ledger unless --state names it.")
@ENV_OPTION
@click.option("--lock-timeout", default="0s", show_default=True, metavar="DURATION",
              help="Wait this long (30s, 5m) for another apply of the campaign to finish instead of refusing.")
@API_OPTION
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (pipelines).")
@click.option("--sandbox", is_flag=True, help="Send to an in-process sandbox API on 127.0.0.1: no credentials, no network.")
@click.option("--region", default=None, help="Tenant region (us, eu, uk, ca, us1, in, au); env WEBEX_CONNECT_REGION.")
@click.option("--base-url", default=None, help="API base URL; env WEBEX_CONNECT_BASE_URL. Wins over --region.")
@click.option("--resend-uncertain", is_flag=True,
              help="Resend batches that may or may not have been accepted, with the same Idempotency-Key.")
@click.option("--allow-changes", is_flag=True,
              help="After a partial send, accept changed inputs and send only to recipients not yet accepted.")
@click.option("--send-now", is_flag=True, help="Send now when sendAt (or expireAt) has passed, without those times.")
@click.option("--max-in-flight", type=click.IntRange(1, 256), default=None,
              help="Requests awaiting an answer at once (default: enough for the campaign's TPS at 100 ms a "
              "request, 8 to 128).")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=30.0, show_default=True,
              help="Seconds to wait for an answer.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--verbose", "-v", is_flag=True, help="Log every request attempt (secrets redacted).")
@format_option(("text", "json", "github"))
def apply(file: Path, state: str | None, environment: str, lock_timeout: str, api: str, yes: bool, sandbox: bool,
          region: str | None, base_url: str | None, resend_uncertain: bool, allow_changes: bool, send_now: bool,
          max_in_flight: int | None, timeout: float, quiet: bool, verbose: bool, output_format: str) -> None:
    """Send a campaign (or a saved plan) exactly once. Exit 0 all accepted, 2 credentials refused,
    3 some failed/uncertain, 4 refused or declined, 130 interrupted.

    FILE may be a saved plan (`campaign plan CAMPAIGN -o PLAN`): then its campaign is sent
    only if every input and request body still match the plan, else exit 4."""
    with _handler():
        from .commands import ApplySettings, Console, parse_duration, run_apply

        _freeze_imports()

        settings = ApplySettings(file=file, state=state if sandbox else _state_from(state, None), api="v1" if api == "v1" else "v2",
                                 yes=yes, quiet=quiet,
                                 verbose=verbose, resend_uncertain=resend_uncertain, allow_changes=allow_changes,
                                 send_now=send_now, sandbox=sandbox, base_url=base_url, region=region,
                                 output_format=output_format, max_in_flight=max_in_flight, timeout=timeout,
                                 step_summary=_step_summary(),
                                 environment=environment, lock_timeout=parse_duration(lock_timeout))
        console = Console(out=_stdout(), err=sys.stderr,
                          interactive=sys.stdin.isatty() and sys.stderr.isatty(),
                          confirm=lambda question: click.confirm(question, default=False, err=True),
                          environ=dict(os.environ))
        # A cancelled pipeline sends SIGTERM: stop like Ctrl-C, recording answers on the wire.
        signal.signal(signal.SIGTERM, _interrupt)
        sys.exit(run_apply(settings, now=now_utc(), console=console))


@cli.command(name="test-send")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--to", "to", multiple=True, required=True, metavar="NUMBER",
              help="A test phone in E.164 (+<country><number>); repeat for up to 10.")
@click.option("--as", "as_msisdn", default=None, metavar="MSISDN",
              help="Send the message this recipient of the campaign would get (default: the first).")
@click.option("--state", default=None, help=STATE_HELP)
@ENV_OPTION
@API_OPTION
@click.option("--sandbox", is_flag=True, help="Send to an in-process sandbox API on 127.0.0.1: no credentials, no network.")
@click.option("--region", default=None, help="Tenant region (us, eu, uk, ca, us1, in, au); env WEBEX_CONNECT_REGION.")
@click.option("--base-url", default=None, help="API base URL; env WEBEX_CONNECT_BASE_URL. Wins over --region.")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=30.0, show_default=True,
              help="Seconds to wait for an answer.")
def test_send(file: Path, to: tuple[str, ...], as_msisdn: str | None, state: str | None, environment: str, api: str,
              sandbox: bool, region: str | None, base_url: str | None, timeout: float) -> None:
    """Send the campaign's exact message for one recipient to test phones, now (ledger: apart from its sends)."""
    with _handler():
        from .commands import Console, TestSendSettings, run_test_send

        settings = TestSendSettings(file=file, to=to, as_msisdn=as_msisdn,
                                    state=state if sandbox else _state_from(state, None), environment=environment,
                                    api="v1" if api == "v1" else "v2", sandbox=sandbox, base_url=base_url,
                                    region=region, timeout=timeout)
        console = Console(out=_stdout(), err=sys.stderr, interactive=False, confirm=lambda question: False,
                          environ=dict(os.environ))
        sys.exit(run_test_send(settings, now=now_utc(), console=console))


@cli.command()
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option("--id", "campaign_id", default=None, help="The campaign's id: status from the ledger alone, no FILE.")
@click.option("--state", envvar="CAMPAIGN_STATE", default=None,
              help="Ledger: a SQLite file (default .campaign/state.db) or a postgresql:// URL; env CAMPAIGN_STATE.")
@ENV_OPTION
@format_option(("text", "json", "markdown"))
def status(file: Path | None, campaign_id: str | None, state: str | None, environment: str,
           output_format: str) -> None:
    """What the ledger knows: batches, destinations, failures by code, the delivery funnel."""
    with _handler():
        from .commands import DEFAULT_STATE, StatusSettings, run_status

        settings = StatusSettings(file, _state_from(state, str(DEFAULT_STATE)) or str(DEFAULT_STATE), output_format,
                                  campaign_id=campaign_id, environment=environment)
        sys.exit(run_status(settings, now=now_utc(), out=_stdout()))


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0 = a free port.")
@click.option("--tps", type=click.IntRange(1, None), default=None, help="Tenant TPS to enforce (7020 above it).")
@click.option("--latency", type=click.FloatRange(0, 60), default=0.0, help="Seconds before each answer.")
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction answered 500/7006.")
@click.option("--drop-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fraction accepted, then the connection closed unanswered.")
@click.option("--seed", type=int, default=None, help="Makes fail/drop choices reproducible.")
@click.option("--ignore-idempotency", is_flag=True,
              help="Store every request, a repeated Idempotency-Key included (shows what duplicates would reach).")
@click.option("--drop-request", "drop_requests", type=click.IntRange(1, None), multiple=True,
              help="Accept the Nth message request (1-based), then close the connection unanswered. Repeatable.")
@click.option("--drop-key", "drop_keys", multiple=True,
              help="Accept the first request with this Idempotency-Key, then close unanswered. Repeatable.")
def sandbox(port: int, tps: int | None, latency: float, fail_rate: float, drop_rate: float, seed: int | None,
            ignore_idempotency: bool, drop_requests: tuple[int, ...], drop_keys: tuple[str, ...]) -> None:
    """Run a local stand-in for the Webex Connect API on 127.0.0.1 (Ctrl-C stops it)."""
    with _handler():
        from .sandbox import SandboxSettings, serve

        settings = SandboxSettings(port=port, tps=tps, latency=latency, fail_rate=fail_rate, drop_rate=drop_rate,
                                   seed=seed, ignore_idempotency=ignore_idempotency,
                                   drop_requests=frozenset(drop_requests), drop_keys=frozenset(drop_keys),
                                   # a pinned clock (CAMPAIGN_NOW) is the vendor's "now" too, as for apply --sandbox
                                   now=now_utc() if os.environ.get("CAMPAIGN_NOW") else None)
        serve(settings, ready=lambda url: click.echo(f"sandbox listening on {url} (POST /v2/messages, "
                                                    "/v1/sms/messages; GET /_sandbox/messages)", err=True))


@cli.group()
def receipts() -> None:
    """Delivery receipts (the vendor's notifyUrl webhooks)."""


@receipts.command()
@click.option("--state", envvar="CAMPAIGN_STATE", default=None,
              help="Ledger to record receipts in: a SQLite file (default .campaign/state.db) or a postgresql:// URL; "
              "env CAMPAIGN_STATE.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--path", "url_path", default="/receipts", show_default=True,
              help="The one URL path that accepts receipts (POST); put it in the campaign's notifyUrl.")
@click.option("--no-auth", is_flag=True,
              help="Accept receipts without the CAMPAIGN_RECEIPTS_TOKEN secret (loopback addresses only).")
def listen(state: str | None, host: str, port: int, url_path: str, no_auth: bool) -> None:
    """Receive deliveryInfoNotification webhooks and record them in the ledger.

    Requests must carry the token from CAMPAIGN_RECEIPTS_TOKEN (or the file named by
    CAMPAIGN_RECEIPTS_TOKEN_FILE) as `Authorization: Bearer TOKEN` or as the basic-auth
    password. A 200 means the receipt is committed to the ledger.
    """
    with _handler():
        from .commands import DEFAULT_STATE, ReceiptsListenSettings, run_receipts_listen, state_ref

        settings = ReceiptsListenSettings(state=state_ref(_state_from(state, str(DEFAULT_STATE)) or str(DEFAULT_STATE)), host=host, port=port, path=url_path, no_auth=no_auth)
        sys.exit(run_receipts_listen(settings, environ=dict(os.environ),
                                     ready=lambda url: click.echo(f"receipts listening on {url}", err=True)))


@cli.command()
@click.option("--since", required=True, metavar="REF",
              help="Git ref to compare the work tree with (e.g. origin/main, or the commit before a push).")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@format_option(("text", "json"))
@click.option("--deleted", is_flag=True, help="List the campaign files deleted since REF instead.")
def affected(since: str, paths: tuple[Path, ...], output_format: str, deleted: bool) -> None:
    """Campaign files whose own file or recipients/exclude files changed since REF, one a line."""
    with _handler():
        from .commands import AffectedSettings, run_affected

        sys.exit(run_affected(AffectedSettings(since, paths, output_format, deleted), out=_stdout()))


@cli.command()
def schema() -> None:
    """Print the campaign JSON Schema (for editors and other tools)."""
    with _handler():
        from .validate import schema_text

        click.echo(schema_text(), nl=False)


def main() -> None:
    cli(prog_name="campaign")
