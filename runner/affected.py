"""Which campaigns a change touches: the campaigns to plan on a pull request, to apply on merge.

A campaign is affected when its own file or any recipients/exclude file it names changed
between a git ref and the work tree (committed, staged, unstaged or untracked), so a
pull request that edits only a CSV still plans the campaign that reads it. Referenced
files are found with the project's YAML loader from the raw document, not the validated
campaign: a campaign broken by the change is still listed (its own change is enough).

Deleted campaigns are listed apart: there is nothing to plan or send for them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CampaignError, ExitCode
from .load import load_document
from .validate import CAMPAIGN_SUFFIXES, expand_paths


@dataclass(frozen=True)
class Affected:
    since: str
    campaigns: tuple[str, ...]  # as found under the given paths, in path order
    deleted: tuple[str, ...]  # campaign files changed since `since` that no longer exist

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since, "affected": list(self.campaigns), "deleted": list(self.deleted)}


def _git(args: list[str], cwd: Path) -> str:
    try:
        run = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise CampaignError(f"cannot run git: {error.strerror or error}", exit_code=ExitCode.USAGE,
                            hint="`campaign affected` needs git on PATH") from None
    if run.returncode != 0:
        message = (run.stderr.strip().splitlines() or ["failed"])[0]
        raise CampaignError(f"git {' '.join(args[:2])}: {message}", exit_code=ExitCode.USAGE,
                            hint="in CI, fetch the base branch (actions/checkout with fetch-depth: 0)")
    return run.stdout


def changed_files(since: str, cwd: Path) -> tuple[Path, set[Path]]:
    """The repository's top folder, and every file (absolute) that differs from `since`:
    tracked changes of the work tree (renames seen as a deletion and an addition) plus
    untracked files not ignored."""
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd).strip())
    _git(["rev-parse", "--verify", "--quiet", f"{since}^{{commit}}"], cwd)
    names = _git(["diff", "--name-only", "--no-renames", "-z", since, "--"], top).split("\0")
    names += _git(["ls-files", "--others", "--exclude-standard", "-z"], top).split("\0")
    return top, {(top / name).resolve() for name in names if name}


def referenced_files(campaign: Path) -> list[Path]:
    """The recipients and exclude files a campaign names, resolved as the campaign
    builder resolves them (relative to the campaign's folder). Unreadable or unparsable
    campaigns name none."""
    document, _ = load_document(campaign)
    if document is None or not isinstance(document.data, dict):
        return []
    found: list[Path] = []
    for key in ("recipients", "exclude"):
        items = document.data.get(key)
        for item in items if isinstance(items, list) else []:
            name = item if isinstance(item, str) and key == "exclude" else (
                item.get("file") if isinstance(item, dict) else None)
            if isinstance(name, str) and name:
                relative = Path(name)
                found.append(relative if relative.is_absolute() else campaign.parent / relative)
    return found


def find_affected(since: str, paths: Iterable[Path], *, cwd: Path | None = None) -> Affected:
    folder = cwd or Path.cwd()
    given = list(paths) or [Path(".")]
    top, changed = changed_files(since, folder)
    campaigns = []
    for campaign in expand_paths(folder / p if not p.is_absolute() else p for p in given):
        if not campaign.is_file():
            continue
        watched = [campaign, *referenced_files(campaign)]
        if any(path.resolve() in changed for path in watched):
            campaigns.append(_shown(campaign, folder))
    roots = [(folder / p).resolve() for p in given]
    deleted = sorted(
        _shown(path, folder)
        for path in changed
        if path.suffix in CAMPAIGN_SUFFIXES and not path.exists()
        and any(path == root or root in path.parents for root in roots)
        and not any(part.startswith(".") for root in roots if root in path.parents
                    for part in path.relative_to(root).parts)
    )
    return Affected(since, tuple(campaigns), tuple(deleted))


def _shown(path: Path, cwd: Path) -> str:
    """Paths as the user would type them: relative to where the command runs."""
    try:
        return path.resolve().relative_to(cwd.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
