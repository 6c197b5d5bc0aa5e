"""`campaign affected --since REF`: real git repositories in a temp folder, real commits."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from runner.commands import AffectedSettings, run_affected
from runner.errors import CampaignError, ExitCode

from .helpers import number, write_campaign, write_csv
from .test_apply import campaign_command

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: two campaigns reading CSVs in campaigns/data, one with an exclude list, one inline."""
    git(tmp_path, "init", "-q", "-b", "main")
    folder = tmp_path / "campaigns"
    (folder / "data").mkdir(parents=True)
    write_csv(folder / "data" / "a.csv", ["msisdn"], [[number(1)]])
    write_csv(folder / "data" / "b.csv", ["msisdn"], [[number(2)]])
    write_csv(folder / "data" / "optouts.csv", ["msisdn"], [[number(3)]])
    write_campaign(folder, {"id": "alpha", "content": {"text": "a"}, "recipients": [{"file": "data/a.csv"}],
                            "exclude": ["data/optouts.csv"]}, name="alpha.yaml")
    write_campaign(folder, {"id": "beta", "content": {"text": "b"}, "recipients": [{"file": "data/b.csv"}]},
                   name="beta.yaml")
    write_campaign(folder, {"id": "gamma", "content": {"text": "g"}, "recipients": [{"msisdn": number(4)}]},
                   name="gamma.yml")
    commit_all(tmp_path, "base")
    return tmp_path


def affected(repo: Path, since: str = "main", *paths: str, deleted: bool = False) -> list[str]:
    out = io.StringIO()
    run_affected(AffectedSettings(since, tuple(Path(p) for p in paths), "text", deleted), out=out, cwd=repo)
    return out.getvalue().splitlines()


def test_nothing_changed_lists_nothing(repo: Path) -> None:
    assert affected(repo, "main", "campaigns") == []


def test_a_csv_only_change_lists_the_campaign_that_reads_it(repo: Path) -> None:
    git(repo, "switch", "-q", "-c", "pr")
    with (repo / "campaigns" / "data" / "b.csv").open("a") as stream:
        stream.write(number(5) + "\n")
    commit_all(repo, "one more row")
    assert affected(repo, "main", "campaigns") == ["campaigns/beta.yaml"]


def test_an_exclude_file_change_lists_its_campaign(repo: Path) -> None:
    (repo / "campaigns" / "data" / "optouts.csv").write_text("msisdn\n")  # uncommitted: the work tree counts
    assert affected(repo, "main", "campaigns") == ["campaigns/alpha.yaml"]


def test_yaml_change_new_untracked_campaign_and_multi_commit_branch(repo: Path) -> None:
    git(repo, "switch", "-q", "-c", "pr")
    gamma = repo / "campaigns" / "gamma.yml"
    gamma.write_text(gamma.read_text().replace("text: g", "text: gg"))
    commit_all(repo, "first")
    write_campaign(repo / "campaigns", {"id": "delta", "content": {"text": "d"},
                                        "recipients": [{"msisdn": number(6)}]}, name="delta.yaml")
    commit_all(repo, "second")
    write_campaign(repo / "campaigns", {"id": "eps", "content": {"text": "e"},
                                        "recipients": [{"msisdn": number(7)}]}, name="eps.yaml")  # untracked
    assert affected(repo, "main", "campaigns") == ["campaigns/delta.yaml", "campaigns/eps.yaml",
                                                   "campaigns/gamma.yml"]
    # from the previous commit only (a push's `before`), the first commit's change is not seen
    assert affected(repo, "HEAD~1", "campaigns") == ["campaigns/delta.yaml", "campaigns/eps.yaml"]


def test_deleted_campaigns_are_not_listed_but_listed_apart(repo: Path) -> None:
    git(repo, "rm", "-q", "campaigns/beta.yaml")
    git(repo, "mv", "campaigns/gamma.yml", "campaigns/gamma-renamed.yml")
    commit_all(repo, "delete and rename")
    assert affected(repo, "main~0", "campaigns") == []
    assert affected(repo, "HEAD~1", "campaigns") == ["campaigns/gamma-renamed.yml"]
    assert affected(repo, "HEAD~1", "campaigns", deleted=True) == ["campaigns/beta.yaml", "campaigns/gamma.yml"]


def test_a_campaign_broken_by_the_change_is_still_listed(repo: Path) -> None:
    (repo / "campaigns" / "alpha.yaml").write_text("id: [unclosed\n")
    assert affected(repo, "main", "campaigns") == ["campaigns/alpha.yaml"]


def test_shared_csv_lists_every_reader_and_paths_limit_the_search(repo: Path) -> None:
    write_campaign(repo / "campaigns", {"id": "alpha2", "content": {"text": "a"},
                                        "recipients": [{"file": "data/a.csv"}]}, name="alpha2.yaml")
    (repo / "other").mkdir()
    write_campaign(repo / "other", {"id": "x", "content": {"text": "a"},
                                    "recipients": [{"file": "../campaigns/data/a.csv"}]}, name="x.yaml")
    commit_all(repo, "two more readers of a.csv")
    (repo / "campaigns" / "data" / "a.csv").write_text(f"msisdn\n{number(9)}\n")
    assert affected(repo, "HEAD", "campaigns") == ["campaigns/alpha.yaml", "campaigns/alpha2.yaml"]
    assert affected(repo, "HEAD", "campaigns", "other") == ["campaigns/alpha.yaml", "campaigns/alpha2.yaml",
                                                            "other/x.yaml"]
    assert affected(repo, "HEAD", "campaigns/alpha2.yaml") == ["campaigns/alpha2.yaml"]


def test_json_lists_both_and_the_real_command_runs_from_a_subfolder(repo: Path) -> None:
    git(repo, "rm", "-q", "campaigns/beta.yaml")
    (repo / "campaigns" / "data" / "a.csv").write_text(f"msisdn\n{number(9)}\n")
    run = subprocess.run([*campaign_command(), "affected", "--since", "main", "--format", "json", "."],
                         cwd=repo / "campaigns", capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"since": "main", "affected": ["alpha.yaml"], "deleted": ["beta.yaml"]}


def test_an_unknown_ref_is_a_usage_error_naming_the_fix(repo: Path) -> None:
    with pytest.raises(CampaignError) as raised:
        affected(repo, "origin/main", "campaigns")
    assert raised.value.exit_code == ExitCode.USAGE
    assert raised.value.hint is not None and "fetch-depth: 0" in raised.value.hint


def test_outside_a_git_repository_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-repo").mkdir()
    run = subprocess.run([*campaign_command(), "affected", "--since", "main"], cwd=tmp_path / "not-a-repo",
                         capture_output=True, text=True, timeout=60, env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert run.returncode == 2
    assert run.stderr.startswith("error: git rev-parse")
    assert "Traceback" not in run.stderr
