"""One plain function per command, each taking one typed settings value.

The click layer only parses options into these settings; everything a command does is
here, callable (and tested) without click. Each function returns the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from .compile import Compiler, body_line
from .errors import ExitCode
from .model import Api
from .plan import DEFAULT_SHOWN, build_plan
from .report import REPORTER_BY_NAME
from .validate import load_campaign, validate_paths


@dataclass(frozen=True)
class ValidateSettings:
    paths: tuple[Path, ...]
    output_format: str = "text"
    strict: bool = False


def run_validate(settings: ValidateSettings, *, now: datetime, out: TextIO) -> ExitCode:
    from .errors import CampaignError

    result = validate_paths(settings.paths, now=now, strict=settings.strict)
    if not result.files:
        raise CampaignError("no campaign files (*.yaml, *.yml) found", exit_code=ExitCode.USAGE)
    REPORTER_BY_NAME[settings.output_format](out).validation(result)
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
    REPORTER_BY_NAME[settings.output_format](out).plan(plan, show_all=settings.show_all)
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
        for batch in compiler.iter_batches():
            out.write(body_line(batch) + "\n")
        return ExitCode.OK
    partial = settings.output.with_name(settings.output.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as sink:
            for batch in compiler.iter_batches():
                sink.write(body_line(batch) + "\n")
        partial.replace(settings.output)
    finally:
        partial.unlink(missing_ok=True)
    return ExitCode.OK
