"""The shipped examples and the README's commands work on any date.

`campaigns/black-friday.yaml` is a scheduled example: its sendAt is a fixed date, which
passes. Every run here pins the clock with CAMPAIGN_NOW to the day the examples are
written for, so the suite does not go stale; the example says how to edit its date.
Real `campaign` processes, in a copy of the repository's examples (a rehearsal writes
its ledger under the working directory).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.name for p in (ROOT / "campaigns").glob("*.yaml"))
EXAMPLES_DATE = "2026-11-23T12:00:00Z"  # the day the examples are written for (black-friday sends on the 27th)


def campaign(*args: str, cwd: Path, now: str | None = EXAMPLES_DATE) -> subprocess.CompletedProcess[str]:
    beside = Path(sys.executable).with_name("campaign")
    command = [str(beside)] if beside.is_file() else [sys.executable, "-c", "from runner.cli import main; main()"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBEX_CONNECT", "CAMPAIGN_NOW"))}
    if now is not None:
        env["CAMPAIGN_NOW"] = now
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "campaigns", tmp_path / "campaigns")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    return tmp_path


def test_validate_strict_passes_on_the_examples(repo_copy: Path) -> None:
    done = campaign("validate", "--strict", "campaigns/", cwd=repo_copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"ok: {len(EXAMPLES)} campaign files checked, 0 errors, 0 warnings\n"


def test_validate_strict_passes_on_the_examples_long_after_their_dates(repo_copy: Path) -> None:
    """Years later the scheduled example's sendAt has passed: a warning, never a red CI."""
    done = campaign("validate", "--strict", "campaigns/", cwd=repo_copy, now="2031-06-01T12:00:00Z")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"ok: {len(EXAMPLES)} campaign files checked, 0 errors, 1 warning"
    assert "[schedule-past]" in done.stdout


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_rehearses_in_the_sandbox_and_reports_its_status(repo_copy: Path, example: str) -> None:
    """README: `campaign apply --sandbox --yes campaigns/<file>`, then `campaign status ... --state
    .campaign/sandbox.db`; a second apply sends nothing."""
    first = campaign("apply", "--sandbox", "--yes", f"campaigns/{example}", cwd=repo_copy)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith("sent: ")
    again = campaign("apply", "--sandbox", "--yes", f"campaigns/{example}", cwd=repo_copy)
    assert again.returncode == 0 and "already accepted by an earlier run" in again.stdout, again.stdout
    shown = campaign("status", f"campaigns/{example}", "--state", ".campaign/sandbox.db", cwd=repo_copy)
    assert shown.returncode == 0, shown.stdout + shown.stderr


def test_the_scheduled_example_says_how_to_edit_its_date() -> None:
    text = (ROOT / "campaigns" / "black-friday.yaml").read_text(encoding="utf-8")
    assert 'sendAt: "2026-11-27T09:00:00Z"' in text
    assert "CAMPAIGN_NOW" in text and "at most 7 days ahead" in text


def test_without_a_pinned_clock_a_passed_schedule_is_refused_not_sent(repo_copy: Path) -> None:
    """What the example's comment warns about: on a later day, apply refuses (exit 4)."""
    done = campaign("apply", "--sandbox", "--yes", "campaigns/black-friday.yaml", cwd=repo_copy,
                    now="2026-12-25T12:00:00Z")
    assert done.returncode == 4
    assert "sendAt 2026-11-27T09:00:00+00:00 has passed" in done.stderr
