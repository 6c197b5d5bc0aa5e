"""Saved plans: what a reviewer approved, written down so apply can send exactly that.

A saved plan (`campaign plan FILE -o PLAN`) is a small JSON document meant to be
committed next to its campaign, like a lock file. It holds no phone number and no
substitution value: only SHA-256 digests of every input file and of the exact request
bodies (the bytes `campaign compile` writes), counts and the schedule. `campaign apply
PLAN` recomputes both from the files the plan names and sends only when every digest
matches, so a row appended to a CSV after review is refused instead of sent.

Paths inside a plan are relative (the campaign to the plan's folder, inputs to the
campaign's folder) and keys keep one fixed order, so two plans of the same inputs differ
only in `created_at`, which comparisons ignore.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from . import __version__
from .compile import Compiler, vendor_timestamp
from .errors import CampaignError, ExitCode
from .files import hash_file
from .model import Api, Batch, Campaign, RecipientFile
from .plan import PlanSummary

FORMAT_VERSION = 1
PLAN_SUFFIX = ".plan.json"
# A campaign file is a few kilobytes; anything bigger is not a saved plan, and is not read
# whole just to find out.
_MAX_PLAN_BYTES = 1 << 20


@dataclass(frozen=True)
class InputDigest:
    """One file a campaign is made of. `path` is relative to the campaign's folder."""

    role: str  # "campaign", "recipients" or "exclude"
    path: str
    sha256: str


@dataclass(frozen=True)
class RequestDigest:
    """The request bodies apply would send: their number and the SHA-256 of the JSON
    Lines `campaign compile` writes (each body, then a newline)."""

    count: int
    sha256: str


@dataclass(frozen=True)
class LedgerCounts:
    """Destinations the ledger held for the campaign when the plan was made. Information
    for the reviewer: the ledger moves on after the plan, so comparisons ignore it."""

    accepted: int
    failed: int
    uncertain: int


@dataclass(frozen=True)
class SavedPlan:
    campaign_id: str
    campaign_file: str  # relative to the plan file's folder, '/'-separated
    api: Api
    inputs: tuple[InputDigest, ...]
    requests: RequestDigest
    counts: Mapping[str, int | None]
    schedule: Mapping[str, str | None]
    tool_version: str = __version__
    created_at: str = ""
    ledger: LedgerCounts | None = None
    # the environment (tenant, `--env`) the plan was made for: apply refuses another one
    environment: str = "default"
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "tool": {"name": "campaign-runner", "version": self.tool_version},
            "created_at": self.created_at,
            "campaign": {"id": self.campaign_id, "file": self.campaign_file, "api": self.api},
            "environment": self.environment,
            "inputs": [{"role": i.role, "path": i.path, "sha256": i.sha256} for i in self.inputs],
            "requests": {"count": self.requests.count, "sha256": self.requests.sha256},
            "counts": dict(self.counts),
            "schedule": dict(self.schedule),
            "ledger": None if self.ledger is None else {
                "acceptedDestinations": self.ledger.accepted,
                "failedDestinations": self.ledger.failed,
                "uncertainDestinations": self.ledger.uncertain,
            },
        }

    def text(self) -> str:
        """The file's bytes: same plan, same text (keys in a fixed order, one trailing newline)."""
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"


# --- building ---------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    hash_file(digest, path)
    return digest.hexdigest()


def _relative(path: Path, start: Path) -> str:
    """`path` from `start`, '/'-separated, so a plan made on one machine reads on another."""
    return PurePosixPath(*Path(os.path.relpath(path.absolute(), start.absolute())).parts).as_posix()


def input_digests(campaign: Campaign) -> tuple[InputDigest, ...]:
    files: list[tuple[str, Path]] = [("campaign", campaign.path)]
    files += [("recipients", s.path) for s in campaign.recipients if isinstance(s, RecipientFile)]
    files += [("exclude", s.path) for s in campaign.exclude if isinstance(s, RecipientFile)]
    return tuple(InputDigest(role, _relative(path, campaign.base_dir), file_sha256(path)) for role, path in files)


# Per request, for `guard_batches`: 8 bytes each, so a million v1 requests keep 8 MB.
_FINGERPRINT_BYTES = 8


def _fingerprint(wire: bytes) -> bytes:
    return hashlib.blake2b(wire, digest_size=_FINGERPRINT_BYTES).digest()


class RequestHasher:
    """Fed every request body in order (a callable, for `build_plan(on_wire=...)`). With
    `fingerprints`, a short digest of each request is appended to it, for `guard_batches`
    to check the send against."""

    def __init__(self, fingerprints: bytearray | None = None) -> None:
        self._digest = hashlib.sha256()
        self._count = 0
        self._fingerprints = fingerprints

    def __call__(self, wire: str) -> None:
        data = wire.encode("utf-8")
        self._digest.update(data)
        self._digest.update(b"\n")
        if self._fingerprints is not None:
            self._fingerprints += _fingerprint(data)
        self._count += 1

    def result(self) -> RequestDigest:
        return RequestDigest(self._count, self._digest.hexdigest())


def request_digest(campaign: Campaign, api: Api, *, fingerprints: bytearray | None = None) -> RequestDigest:
    """One full compile, hashed as it streams: nothing but the digests is kept."""
    hasher = RequestHasher(fingerprints)
    for wire in Compiler(campaign, api).iter_wire():
        hasher(wire)
    return hasher.result()


def guard_batches(batches: Iterator[Batch], fingerprints: bytes, plan_path: Path) -> Iterator[Batch]:
    """The batches apply sends, each checked against the request verified before: files
    are read again to send, and one changed in between (after the check, while a prompt
    waits) stops the send before the first request that differs. For a full compile only
    (indexes from 0): a re-plan after --allow-changes sends a subset with other indexes."""
    expected = len(fingerprints) // _FINGERPRINT_BYTES
    for batch in batches:
        start = batch.index * _FINGERPRINT_BYTES
        if batch.index >= expected or fingerprints[start:start + _FINGERPRINT_BYTES] != _fingerprint(
                batch.json().encode("utf-8")):
            raise CampaignError(
                f"{plan_path}: request {batch.index + 1} is not the one verified against the saved plan: an input "
                "changed after the check; stopped before sending it",
                exit_code=ExitCode.REFUSED,
                hint="requests sent before it are in the ledger; review a new plan, then apply it "
                "(with --allow-changes if some were sent)",
            )
        yield batch


def build_saved_plan(campaign: Campaign, summary: PlanSummary, *, plan_path: Path, created_at: datetime,
                     ledger: LedgerCounts | None = None, requests: RequestDigest | None = None,
                     environment: str = "default") -> SavedPlan:
    """`requests`, when the plan's own compile pass hashed them; else one more pass here."""
    return SavedPlan(
        campaign_id=campaign.id,
        campaign_file=_relative(campaign.path, plan_path.parent),
        api=summary.api,
        inputs=input_digests(campaign),
        requests=requests or request_digest(campaign, summary.api),
        counts={
            "rowsRead": summary.rows_read,
            "recipients": summary.recipients,
            "duplicatesDropped": summary.duplicates,
            "excluded": summary.excluded,
            "messages": summary.messages,
            "segments": summary.segments,
        },
        schedule={
            "sendAt": vendor_timestamp(summary.send_at) if summary.send_at else None,
            "expiresAt": vendor_timestamp(summary.expires_at) if summary.expires_at else None,
        },
        created_at=created_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ledger=ledger,
        environment=environment,
    )


def snapshot(campaign: Campaign, api: Api, *, plan_path: Path, fingerprints: bytearray | None = None) -> SavedPlan:
    """What a plan made now would compare on: the inputs and the request bodies."""
    return SavedPlan(campaign_id=campaign.id, campaign_file=_relative(campaign.path, plan_path.parent), api=api,
                     inputs=input_digests(campaign), counts={}, schedule={},
                     requests=request_digest(campaign, api, fingerprints=fingerprints))


def write_plan(plan: SavedPlan, path: Path) -> None:
    """Replace `path` only with a complete plan: a failure leaves the old one in place."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(plan.text(), encoding="utf-8", newline="\n")
        partial.replace(path)
    except OSError as error:
        raise CampaignError(f"cannot write {path}: {error.strerror or error}", exit_code=ExitCode.USAGE,
                            hint="-o must name a file in an existing, writable folder") from None
    finally:
        partial.unlink(missing_ok=True)


# --- reading ----------------------------------------------------------------------------


def is_saved_plan(path: Path) -> bool:
    """A saved plan is told apart by content: a JSON object with `format_version`. (A
    campaign file is YAML; one that happened to be JSON would have no such key.)"""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_PLAN_BYTES:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "format_version" in data


def read_plan(path: Path) -> SavedPlan:
    try:
        data = json.loads(path.read_bytes())
    except OSError as error:
        raise CampaignError(f"{path}: cannot read saved plan: {error.strerror or error}",
                            hint=f"write it with `campaign plan CAMPAIGN -o {path}`") from None
    except ValueError as error:
        raise CampaignError(f"{path}: not a saved plan (invalid JSON: {error})") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise CampaignError(f"{path}: not a saved plan (no format_version)")
    if data["format_version"] != FORMAT_VERSION:
        raise CampaignError(f"{path}: saved plan format_version {data['format_version']!r} is not supported "
                            f"(this is campaign-runner {__version__}, format {FORMAT_VERSION})",
                            hint="make the plan again with this version of campaign-runner")
    try:
        campaign = data["campaign"]
        ledger = data.get("ledger")
        api = campaign["api"]
        if api not in ("v1", "v2"):
            raise ValueError(f"unknown api {api!r}")
        return SavedPlan(
            campaign_id=str(campaign["id"]),
            campaign_file=str(campaign["file"]),
            api="v1" if api == "v1" else "v2",
            inputs=tuple(InputDigest(str(i["role"]), str(i["path"]), str(i["sha256"])) for i in data["inputs"]),
            requests=RequestDigest(int(data["requests"]["count"]), str(data["requests"]["sha256"])),
            counts=dict(data.get("counts") or {}),
            schedule=dict(data.get("schedule") or {}),
            tool_version=str(data.get("tool", {}).get("version", "")),
            created_at=str(data.get("created_at", "")),
            # a plan written before plans named their environment was made for the default one
            environment=str(data.get("environment", "default")),
            ledger=None if ledger is None else LedgerCounts(int(ledger["acceptedDestinations"]),
                                                            int(ledger["failedDestinations"]),
                                                            int(ledger["uncertainDestinations"])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CampaignError(f"{path}: malformed saved plan ({type(error).__name__}: {error})",
                            hint="make the plan again with `campaign plan CAMPAIGN -o PLAN`") from None


def campaign_path(plan: SavedPlan, plan_path: Path) -> Path:
    return plan_path.parent / plan.campaign_file


# --- comparing ----------------------------------------------------------------------------


def environment_mismatch(plan: SavedPlan, environment: str) -> str | None:
    """Why `plan` must not be applied to `environment`, or None. A plan reviewed for
    staging says nothing of what production has already received: applying it there
    would send what nobody reviewed for that tenant."""
    if plan.environment == environment:
        return None
    return f"the plan was made for environment '{plan.environment}', this apply targets '{environment}'"


def stale_inputs(plan: SavedPlan, plan_path: Path) -> list[str]:
    """The saved inputs that changed or disappeared, read before the campaign is loaded,
    so a deleted CSV is named as a changed input rather than as a broken campaign."""
    campaign_file = campaign_path(plan, plan_path)
    if not campaign_file.is_file():
        return [f"{plan.campaign_file}: the campaign file the plan names is missing"]
    folder = campaign_file.parent
    changes = []
    for item in plan.inputs:
        path = folder / item.path
        if not path.is_file():
            changes.append(f"{item.path} ({item.role}): missing")
        elif file_sha256(path) != item.sha256:
            changes.append(f"{item.path} ({item.role}): changed")
    return changes


def differences(saved: SavedPlan, current: SavedPlan) -> list[str]:
    """Why `saved` no longer describes what would be sent; empty when it does. The time
    the plan was made, the tool version and the ledger counts are not compared."""
    found: list[str] = []
    if saved.campaign_id != current.campaign_id:
        found.append(f"campaign id: {saved.campaign_id} in the plan, {current.campaign_id} now")
    if saved.api != current.api:
        found.append(f"api: {saved.api} in the plan, {current.api} now")
    before = {(i.role, i.path): i.sha256 for i in saved.inputs}
    now = {(i.role, i.path): i.sha256 for i in current.inputs}
    for role, path in _ordered(before, now):
        if (role, path) not in now:
            found.append(f"{path} ({role}): no longer an input")
        elif (role, path) not in before:
            found.append(f"{path} ({role}): a new input")
        elif before[(role, path)] != now[(role, path)]:
            found.append(f"{path} ({role}): changed")
    if saved.requests != current.requests:
        found.append(f"request bodies: {saved.requests.count} requests, sha256 {saved.requests.sha256[:12]}… in "
                     f"the plan; {current.requests.count} requests, sha256 {current.requests.sha256[:12]}… now")
    return found


def _ordered(*mappings: Mapping[tuple[str, str], str]) -> Iterator[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    for mapping in mappings:
        for key in mapping:
            if key not in seen:
                seen.add(key)
                yield key
