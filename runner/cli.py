"""The `campaign` command: options in, one settings value out, one plain function called.

All error handling is here, once: a `CampaignError` prints one line (plus a hint) and
exits with its code; anything else is reported plainly as a bug, never as a traceback
unless `--traceback` asks for one. Secrets from the environment are redacted from
anything printed here.
"""

from __future__ import annotations

import os
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

SECRET_ENV = ("WEBEX_CONNECT_SERVICE_KEY", "WEBEX_CONNECT_JWT")


def _secrets_from_env() -> list[str]:
    values = [os.environ.get(name, "") for name in SECRET_ENV]
    for name in SECRET_ENV:
        file = os.environ.get(f"{name}_FILE")
        if file:
            try:
                values.append(Path(file).read_text(encoding="utf-8").strip())
            except OSError:
                pass
    return [v for v in values if len(v) >= 4]


def redact_env_secrets(text: str) -> str:
    for secret in _secrets_from_env():
        text = text.replace(secret, "***")
    return text


def _fail(message: str, code: int, hint: str | None = None) -> NoReturn:
    click.echo(redact_env_secrets(message), err=True)
    if hint:
        click.echo(redact_env_secrets(f"hint: {hint}"), err=True)
    sys.exit(code)


@contextmanager
def error_handler(show_traceback: bool = False) -> Iterator[None]:
    """The one place errors become exit codes (after pre-commit's error_handler)."""
    try:
        yield
    except CampaignError as error:
        message = error.message if ": error: " in error.message else f"error: {error.message}"
        _fail(message, int(error.exit_code), error.hint)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except click.exceptions.Exit:
        raise
    except click.ClickException:
        raise
    except Exception as error:  # a bug: say so plainly
        if show_traceback:
            click.echo(redact_env_secrets(traceback.format_exc()), err=True)
        _fail(
            f"campaign: unexpected error (a bug in campaign-runner): {type(error).__name__}: {error}",
            int(ExitCode.INTERNAL),
            None if show_traceback else "rerun with --traceback and report it",
        )


def now_utc() -> datetime:
    override = os.environ.get("CAMPAIGN_NOW")  # lets tests and rehearsals pin the clock
    if override:
        moment = datetime.fromisoformat(override)
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return datetime.now(timezone.utc)


FORMAT_HELP = "Output format."


def format_option(names: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--format", "output_format", type=click.Choice(names), default=names[0],
                        show_default=True, help=FORMAT_HELP)


def _stdout() -> TextIO:
    return click.get_text_stream("stdout")


class Group(click.Group):
    """Usage errors exit 2 (click's default) and never show a traceback."""


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="campaign")
@click.option("--traceback", "show_traceback", is_flag=True, hidden=True, help="Show tracebacks for unexpected errors.")
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
    from .commands import ValidateSettings, run_validate

    with _handler():
        sys.exit(run_validate(ValidateSettings(paths, output_format, strict), now=now_utc(), out=_stdout()))


API_OPTION = click.option("--api", type=click.Choice(["v2", "v1"]), default="v2", show_default=True,
                          help="Target API: Send Message API v2, or SMS API v1 (one request per destination).")


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@API_OPTION
@click.option("--all", "show_all", is_flag=True, help="Show every message, not the first 10.")
@format_option(("text", "json", "markdown"))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def plan(file: Path, api: str, show_all: bool, output_format: str, strict: bool) -> None:
    """Dry run: every rendered message, its encoding and segments, and the totals."""
    from .commands import PlanSettings, run_plan

    with _handler():
        settings = PlanSettings(file, "v1" if api == "v1" else "v2", show_all, output_format, strict)
        sys.exit(run_plan(settings, now=now_utc(), out=_stdout()))


@cli.command(name="compile")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write JSON Lines here instead of stdout (replaced only when complete).")
@API_OPTION
def compile_command(file: Path, output: Path | None, api: str) -> None:
    """Write the exact request bodies, one JSON object per line."""
    from .commands import CompileSettings, run_compile

    with _handler():
        settings = CompileSettings(file, output, "v1" if api == "v1" else "v2")
        sys.exit(run_compile(settings, now=now_utc(), out=_stdout()))


@cli.command()
def schema() -> None:
    """Print the campaign JSON Schema (for editors and other tools)."""
    from .validate import schema_text

    with _handler():
        click.echo(schema_text(), nl=False)


def main() -> None:
    cli(prog_name="campaign")
