"""The pipeline: ci/github/campaigns.yml, ci/campaigns.sh and .pre-commit-hooks.yaml.

The script runs for real (bash, git, the real `campaign` command) in temporary git
repositories whose commits add, change (YAML only, CSV only) and delete campaigns;
apply sends to the in-process sandbox (`--sandbox`) and the ledger file says what was sent.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.ledger import Ledger

from .helpers import number, write_campaign, write_csv
from .test_apply import campaign_command

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ci" / "campaigns.sh"
WORKFLOW = ROOT / "ci" / "github" / "campaigns.yml"
MARKER = "<!-- campaign-runner:plan -->"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}


def tool_dir() -> str:
    return str(Path(campaign_command()[0]).parent)


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WEBEX_CONNECT", "GITHUB_", "CAMPAIGN"))}
    env.update(GIT_ENV)
    env["HOME"] = str(tmp_path / "home")
    env["PATH"] = tool_dir() + os.pathsep + env.get("PATH", "")
    return env


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV, "HOME": str(repo)}).stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def save_plan(repo: Path, name: str) -> None:
    """What an author does before pushing: write the saved plan next to the campaign."""
    campaign = f"campaigns/{name}.yaml"
    run = subprocess.run([*campaign_command(), "plan", campaign, "-o", f"campaigns/{name}.plan.json"], cwd=repo,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def script(repo: Path, mode: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), mode, *args], cwd=repo, capture_output=True, text=True, env=env,
                          timeout=300, stdin=subprocess.DEVNULL)


def sent(state: Path, campaign_id: str) -> int:
    with Ledger.open(state) as ledger:
        return ledger.summary(campaign_id).destinations["accepted"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: campaign `alpha` reads a CSV, `beta` has inline recipients; both with saved plans."""
    path = tmp_path / "repo"
    (path / "campaigns" / "data").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / ".gitignore").write_text(".campaign/\n")
    write_csv(path / "campaigns" / "data" / "alpha.csv", ["msisdn", "name"],
              [[number(1), "Ann"], [number(2), "Bob"]])
    write_campaign(path / "campaigns", {"id": "alpha", "content": {"text": "Hi {{ name }}"},
                                        "recipients": [{"file": "data/alpha.csv"}]}, name="alpha.yaml")
    write_campaign(path / "campaigns", {"id": "beta", "content": {"text": "Hello"},
                                        "recipients": [{"msisdn": number(3)}]}, name="beta.yaml")
    save_plan(path, "alpha")
    save_plan(path, "beta")
    commit_all(path, "base")
    return path


# --- plan on a pull request -------------------------------------------------------------------


def test_plan_of_a_new_campaign_with_its_saved_plan_passes_and_writes_one_comment_body(
    repo: Path, tmp_path: Path
) -> None:
    git(repo, "switch", "-q", "-c", "pr")
    write_campaign(repo / "campaigns", {"id": "gamma", "content": {"text": "New"},
                                        "recipients": [{"msisdn": number(4)}]}, name="gamma.yaml")
    save_plan(repo, "gamma")
    commit_all(repo, "add gamma")
    summary = tmp_path / "summary.md"
    env = {**base_env(tmp_path), "CAMPAIGN_BASE": "main", "GITHUB_STEP_SUMMARY": str(summary)}
    run = script(repo, "plan", env)
    assert run.returncode == 0, run.stdout + run.stderr
    body = (repo / ".campaign" / "ci" / "comment.md").read_text()
    assert body.startswith(MARKER + "\n## Campaign plans\n")
    assert ("- ✅ `campaigns/gamma.yaml`: `campaigns/gamma.plan.json` is current; merging sends exactly this plan"
            in body)
    assert "### Campaign plan: gamma" in body
    assert "alpha" not in body and "beta" not in body
    assert summary.read_text() == body


def test_a_comment_over_the_limit_keeps_every_status_and_moves_the_plans_to_the_summary(
    repo: Path, tmp_path: Path
) -> None:
    git(repo, "switch", "-q", "-c", "pr")
    for name in ("alpha", "beta"):
        path = repo / "campaigns" / f"{name}.yaml"
        path.write_text(path.read_text().replace("text: ", "text: Now "))
        save_plan(repo, name)
    commit_all(repo, "edit both")
    summary = tmp_path / "summary.md"
    env = {**base_env(tmp_path), "CAMPAIGN_BASE": "main", "GITHUB_STEP_SUMMARY": str(summary),
           "CAMPAIGN_COMMENT_LIMIT": "1000"}
    run = script(repo, "plan", env)
    assert run.returncode == 0, run.stdout + run.stderr
    body = (repo / ".campaign" / "ci" / "comment.md").read_text()
    assert len(body.encode()) <= 1000
    assert body.count("- ✅ `campaigns/") == 2
    assert "_The plans are too long for one comment: see the job summary and log._" in body
    assert "### Campaign plan: alpha" not in body
    assert "### Campaign plan: alpha" in summary.read_text() and "### Campaign plan: beta" in summary.read_text()


def test_plan_of_a_csv_only_change_without_a_new_plan_fails_naming_the_csv(repo: Path, tmp_path: Path) -> None:
    git(repo, "switch", "-q", "-c", "pr")
    with (repo / "campaigns" / "data" / "alpha.csv").open("a") as stream:
        stream.write(f"{number(5)},Cy\n")
    commit_all(repo, "one more row")
    env = {**base_env(tmp_path), "CAMPAIGN_BASE": "main"}
    run = script(repo, "plan", env)
    assert run.returncode == 1
    body = (repo / ".campaign" / "ci" / "comment.md").read_text()
    assert "- ❌ `campaigns/alpha.yaml`: `campaigns/alpha.plan.json` is stale" in body
    assert "is stale; run `campaign plan campaigns/alpha.yaml -o campaigns/alpha.plan.json` and commit it\n" \
        "  - data/alpha.csv (recipients): changed\n\n" in body
    save_plan(repo, "alpha")
    commit_all(repo, "plan again")
    assert script(repo, "plan", env).returncode == 0


def test_plan_of_a_yaml_only_change_without_a_plan_file_fails_and_deleted_campaigns_are_reported(
    repo: Path, tmp_path: Path
) -> None:
    git(repo, "switch", "-q", "-c", "pr")
    (repo / "campaigns" / "alpha.plan.json").unlink()
    git(repo, "rm", "-q", "campaigns/beta.yaml", "campaigns/beta.plan.json")
    alpha = repo / "campaigns" / "alpha.yaml"
    alpha.write_text(alpha.read_text().replace("Hi {{ name }}", "Hey {{ name }}"))
    commit_all(repo, "edit alpha, delete beta")
    run = script(repo, "plan", {**base_env(tmp_path), "CAMPAIGN_BASE": "main"})
    assert run.returncode == 1
    body = (repo / ".campaign" / "ci" / "comment.md").read_text()
    assert ("- ❌ `campaigns/alpha.yaml`: no saved plan; run `campaign plan campaigns/alpha.yaml -o "
            "campaigns/alpha.plan.json` and commit it") in body
    assert "- 🗑️ `campaigns/beta.yaml`: deleted; nothing is sent" in body


def test_plan_against_a_ledger_shows_what_is_already_sent(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "ledger.db"
    assert script(repo, "apply", {**base_env(tmp_path), "CAMPAIGNS": "campaigns/alpha.yaml",
                                  "CAMPAIGN_STATE": str(state), "CAMPAIGN_APPLY_ARGS": "--sandbox"}).returncode == 0
    git(repo, "switch", "-q", "-c", "pr")
    with (repo / "campaigns" / "data" / "alpha.csv").open("a") as stream:
        stream.write(f"{number(5)},Cy\n")
    save_plan(repo, "alpha")
    commit_all(repo, "one more row")
    run = script(repo, "plan", {**base_env(tmp_path), "CAMPAIGN_BASE": "main", "CAMPAIGN_STATE": str(state)})
    assert run.returncode == 0, run.stdout + run.stderr
    body = (repo / ".campaign" / "ci" / "comment.md").read_text()
    assert "ledger: 2 destinations already accepted, 0 failed, 0 uncertain; to send: 1 messages" in body


def test_plan_of_an_invalid_campaign_fails_with_annotations(repo: Path, tmp_path: Path) -> None:
    git(repo, "switch", "-q", "-c", "pr")
    beta = repo / "campaigns" / "beta.yaml"
    beta.write_text(beta.read_text().replace("id: beta", "id: Not Valid"))
    commit_all(repo, "break beta")
    run = script(repo, "plan", {**base_env(tmp_path), "CAMPAIGN_BASE": "main"})
    assert run.returncode == 1
    assert "::error file=campaigns/beta.yaml,line=2" in run.stdout
    assert "- ❌ `campaigns/beta.yaml`: invalid" in (repo / ".campaign" / "ci" / "comment.md").read_text()


def test_plan_with_an_unknown_base_fails_instead_of_planning_nothing(repo: Path, tmp_path: Path) -> None:
    run = script(repo, "plan", {**base_env(tmp_path), "CAMPAIGN_BASE": "origin/main"})
    assert run.returncode == 2
    assert "fetch-depth: 0" in run.stderr
    assert not (repo / ".campaign" / "ci" / "comment.md").exists()


# --- apply on merge ------------------------------------------------------------------------------


def test_apply_after_a_multi_commit_merge_sends_every_reviewed_plan_and_skips_deleted(
    repo: Path, tmp_path: Path
) -> None:
    before = git(repo, "rev-parse", "HEAD")
    with (repo / "campaigns" / "data" / "alpha.csv").open("a") as stream:
        stream.write(f"{number(5)},Cy\n")
    save_plan(repo, "alpha")
    commit_all(repo, "csv only")
    write_campaign(repo / "campaigns", {"id": "gamma", "content": {"text": "New"},
                                        "recipients": [{"msisdn": number(4)}]}, name="gamma.yaml")
    save_plan(repo, "gamma")
    commit_all(repo, "add gamma")
    git(repo, "rm", "-q", "campaigns/beta.yaml", "campaigns/beta.plan.json")
    commit_all(repo, "delete beta")
    state = tmp_path / "ledger.db"
    summary = tmp_path / "summary.md"
    env = {**base_env(tmp_path), "CAMPAIGN_BASE": before, "CAMPAIGN_STATE": str(state),
           "CAMPAIGN_APPLY_ARGS": "--sandbox", "GITHUB_STEP_SUMMARY": str(summary)}
    run = script(repo, "apply", env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (sent(state, "alpha"), sent(state, "gamma"), sent(state, "beta")) == (3, 1, 0)
    assert "| `campaigns/alpha.yaml` | 0 | sent (or already sent) |" in summary.read_text()
    # the same push applied again (a re-run) sends nothing more
    assert script(repo, "apply", env).returncode == 0
    assert (sent(state, "alpha"), sent(state, "gamma")) == (3, 1)


def test_apply_attempts_every_campaign_when_one_is_refused_and_fails_at_the_end(repo: Path, tmp_path: Path) -> None:
    before = git(repo, "rev-parse", "HEAD")
    with (repo / "campaigns" / "data" / "alpha.csv").open("a") as stream:  # pushed without a new plan
        stream.write(f"{number(5)},Cy\n")
    beta = repo / "campaigns" / "beta.yaml"
    beta.write_text(beta.read_text().replace("Hello", "Hello again"))
    save_plan(repo, "beta")
    commit_all(repo, "alpha stale, beta reviewed")
    state = tmp_path / "ledger.db"
    env = {**base_env(tmp_path), "CAMPAIGN_BASE": before, "CAMPAIGN_STATE": str(state),
           "CAMPAIGN_APPLY_ARGS": "--sandbox"}
    run = script(repo, "apply", env)
    assert run.returncode == 4
    assert "::error file=campaigns/alpha.yaml::campaign apply exited 4" in run.stdout
    assert "| `campaigns/beta.yaml` | 0 |" in run.stdout
    assert (sent(state, "alpha"), sent(state, "beta")) == (0, 1)


def test_manual_apply_of_named_campaigns_passes_recovery_flags(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "ledger.db"
    env = {**base_env(tmp_path), "CAMPAIGNS": "campaigns/beta.yaml", "CAMPAIGN_STATE": str(state),
           "CAMPAIGN_APPLY_ARGS": "--sandbox --resend-uncertain --send-now"}
    run = script(repo, "apply", env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (sent(state, "alpha"), sent(state, "beta")) == (0, 1)
    bad = script(repo, "apply", {**env, "CAMPAIGN_APPLY_ARGS": "--sandbox --no-such-flag"})
    assert bad.returncode == 2


def test_apply_without_a_shared_ledger_refuses_before_sending(repo: Path, tmp_path: Path) -> None:
    run = script(repo, "apply", {**base_env(tmp_path), "CAMPAIGNS": "campaigns/beta.yaml",
                                 "CAMPAIGN_APPLY_ARGS": "--sandbox"})
    assert run.returncode == 2
    assert "CAMPAIGN_STATE is not set" in run.stdout
    assert not (repo / ".campaign" / "sandbox.db").exists()


# --- the one comment, updated in place -------------------------------------------------------------

FAKE_GH = r'''#!/usr/bin/env python3
"""A stand-in for GitHub's REST API behind `gh api`: comments kept in a JSON file."""
import json, os, sys
store = os.environ["FAKE_GH_STORE"]
comments = json.load(open(store)) if os.path.exists(store) else []
args = sys.argv[1:]
assert args[0] == "api", args
method = args[args.index("-X") + 1] if "-X" in args else "GET"
path = next(a for a in args[1:] if a.startswith("repos/"))
body = None
if "-F" in args:
    field = args[args.index("-F") + 1]
    assert field.startswith("body=@"), field
    body = open(field[len("body=@"):]).read()
if method == "GET":
    assert path.startswith("repos/o/r/issues/7/comments"), path
    print(json.dumps(comments[:2]))  # two pages, as --paginate prints them
    print(json.dumps(comments[2:]))
elif method == "POST":
    assert path == "repos/o/r/issues/7/comments", path
    comments.append({"id": 100 + len(comments), "body": body})
elif method == "PATCH":
    number = int(path.rsplit("/", 1)[1])
    next(c for c in comments if c["id"] == number)["body"] = body
json.dump(comments, open(store, "w"))
'''


def test_comment_is_created_once_then_updated_in_place(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "home").mkdir()
    gh = bin_dir / "gh"
    gh.write_text(FAKE_GH.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    gh.chmod(gh.stat().st_mode | stat.S_IEXEC)
    store = tmp_path / "comments.json"
    store.write_text(json.dumps([{"id": 1, "body": "LGTM"}, {"id": 2, "body": "other bot"},
                                 {"id": 3, "body": "a human"}]))
    env = {**base_env(tmp_path), "PATH": f"{bin_dir}{os.pathsep}{base_env(tmp_path)['PATH']}",
           "FAKE_GH_STORE": str(store), "GITHUB_REPOSITORY": "o/r", "PR_NUMBER": "7"}
    body = tmp_path / "comment.md"
    body.write_text(f"{MARKER}\nfirst plan\n")
    assert script(tmp_path, "comment", env, str(body)).returncode == 0
    body.write_text(f"{MARKER}\nsecond plan\n")
    run = script(tmp_path, "comment", env, str(body))
    assert run.returncode == 0, run.stderr
    assert json.loads(store.read_text()) == [
        {"id": 1, "body": "LGTM"}, {"id": 2, "body": "other bot"}, {"id": 3, "body": "a human"},
        {"id": 103, "body": f"{MARKER}\nsecond plan\n"},
    ]


# --- the workflow file ----------------------------------------------------------------------------


def workflow() -> dict[str, object]:
    """Every scalar as the string written (BaseLoader), and `on` as a key, as GitHub reads it."""
    data = yaml.load(WORKFLOW.read_text(), Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds only strings
    assert isinstance(data, dict)
    return data


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run([str(tool), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_workflow_matches_githubs_workflow_schema_and_a_broken_copy_does_not(tmp_path: Path) -> None:
    assert check_jsonschema(WORKFLOW).returncode == 0
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1))
    assert check_jsonschema(broken).returncode == 1


def test_workflow_plans_on_pull_requests_and_applies_reviewed_plans_on_merge() -> None:
    data = workflow()
    on = data["on"]
    assert isinstance(on, dict) and set(on) == {"pull_request", "push", "workflow_dispatch"}
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"campaigns", "resend_uncertain", "allow_changes", "send_now"}
    assert data["permissions"] == {"contents": "read"}
    assert data["env"]["CAMPAIGN_RUNNER"] == "campaign-runner==0.1.0"
    jobs = data["jobs"]
    plan, apply = jobs["plan"], jobs["apply"]
    for job in (plan, apply):
        assert int(job["timeout-minutes"]) > 0
        assert job["concurrency"]["cancel-in-progress"] == "false"
        assert job["steps"][0] == {"uses": "actions/checkout@v4", "with": {"fetch-depth": "0"}}
        assert {"run": 'pip install "$CAMPAIGN_RUNNER"'} in job["steps"]
    assert plan["permissions"] == {"contents": "read", "pull-requests": "write"}
    plan_runs = [step.get("run", "") for step in plan["steps"]]
    assert "ci/campaigns.sh plan" in plan_runs
    assert "ci/campaigns.sh comment .campaign/ci/comment.md" in plan_runs
    apply_step = apply["steps"][-1]
    assert apply_step["run"] == "ci/campaigns.sh apply"
    flags = apply_step["env"]["CAMPAIGN_APPLY_ARGS"]
    assert all(flag in flags for flag in ("--resend-uncertain", "--allow-changes", "--send-now"))
    assert apply_step["env"]["CAMPAIGN_STATE"] == "${{ secrets.CAMPAIGN_STATE }}"
    assert apply["concurrency"]["group"] == "campaigns-apply"


# --- pre-commit, completion, version ----------------------------------------------------------------


@pytest.mark.slow
def test_pre_commit_hook_validates_campaign_files_in_another_repository(tmp_path: Path) -> None:
    """`pre-commit try-repo` builds the hook's virtualenv with pip from this checkout (about a
    minute here: every dependency is installed into it)."""
    users = tmp_path / "users-repo"
    (users / "campaigns").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    git(users, "init", "-q", "-b", "main")
    shutil.copy(ROOT / "campaigns" / "welcome.yaml", users / "campaigns" / "welcome.yaml")
    (users / "campaigns" / "broken.yaml").write_text("version: 1\nid: Not Valid\n")
    (users / "notes.yaml").write_text("id: Not a campaign\n")  # outside campaigns/: not checked
    git(users, "add", "-A")
    env = {**base_env(tmp_path), "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    tool = Path(sys.executable).with_name("pre-commit")

    def try_repo() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(tool), "try-repo", str(ROOT), "campaign-validate", "--all-files"], cwd=users,
                              capture_output=True, text=True, env=env, timeout=900)

    run = try_repo()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "campaigns/broken.yaml:2:5: error: id: 'Not Valid' does not match" in run.stdout
    assert "notes.yaml" not in run.stdout
    assert "failed: 2 campaign files checked" in run.stdout
    (users / "campaigns" / "broken.yaml").unlink()
    git(users, "add", "-A")
    run = try_repo()
    assert run.returncode == 0, run.stdout + run.stderr


def test_shell_completion_script_is_printed() -> None:
    run = subprocess.run(campaign_command(), capture_output=True, text=True, timeout=60,
                         env={**os.environ, "_CAMPAIGN_COMPLETE": "bash_source"})
    assert run.returncode == 0
    assert "_campaign_completion()" in run.stdout
    assert "complete -o nosort -F _campaign_completion campaign" in run.stdout


def test_version_is_the_one_in_runner_init_everywhere() -> None:
    from importlib.metadata import version

    import runner

    run = subprocess.run([*campaign_command(), "--version"], capture_output=True, text=True, timeout=60)
    assert run.stdout == f"campaign, version {runner.__version__}\n"
    assert version("campaign-runner") == runner.__version__
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
