"""The project's one error class and its exit codes.

Stages raise `CampaignError`; the CLI catches it once, prints one line and a hint, and
exits with the code the error carries. Anything else is a bug and is reported as one.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INVALID = 1  # the campaign (or a recipient file) is wrong
    USAGE = 2  # the command line is wrong
    PARTIAL = 3  # some batches failed or are uncertain
    REFUSED = 4  # apply refused: lock held, inputs changed, stale schedule
    IO_ERROR = 74  # output could not be written: disk full, quota, device error (EX_IOERR)
    INTERNAL = 70  # a bug in campaign-runner (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C / SIGTERM (128 + SIGINT, as shells report it)


class CampaignError(Exception):
    """An expected failure with a one-line message, a location when known, and a hint."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: ExitCode = ExitCode.INVALID,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.hint = hint
