"""Small builders shared by tests: real campaign files in a temp folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from runner.model import Campaign
from runner.validate import load_campaign

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
BASE_NUMBER = 447911000000  # +44 7911 ... : valid UK mobiles


def number(i: int) -> str:
    return f"+{BASE_NUMBER + i}"


def write_campaign(folder: Path, data: dict[str, Any], name: str = "campaign.yaml") -> Path:
    document = {"version": 1, "id": "test-campaign", "from": "12025550100"}
    document.update(data)
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def campaign_from(folder: Path, data: dict[str, Any], name: str = "campaign.yaml") -> Campaign:
    campaign, _ = load_campaign(write_campaign(folder, data, name), now=NOW)
    return campaign


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def platform_text(body: dict[str, Any], msisdn: str) -> str:
    """What the platform shows one destination: `$(name)` from its own values, else the global ones."""
    entry = next(e for e in body["to"] if msisdn in e["msisdn"])
    values = dict(body.get("substitutions", {}))
    values.update(entry.get("substitutions", {}))
    text = body["content"]["text"]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: str(values.get(m.group(1), m.group(0))), text)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def campaign_command() -> list[str]:
    """The `campaign` console script of this interpreter (not a version-manager shim, whose
    start-up would dominate), else the same entry point through `python -c`."""
    beside = Path(sys.executable).with_name("campaign")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("campaign")
    return [found] if found else [sys.executable, "-c", "from runner.cli import main; main()"]
