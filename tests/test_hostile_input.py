"""Hostile and careless input (issue 8): no leaks, no hangs, no exit 70.

Campaign files arrive through pull requests; `validate` and `plan` run on them in CI
next to credentials. Each test plants a secret where an attacker or a careless author
would, runs the real command, and scans everything it printed for the secret. Cases
that used to hang (FIFOs) run in a real process with a timeout.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from runner.client import ApiClient, Credentials
from runner.commands import CompileSettings, run_compile
from runner.errors import CampaignError, ExitCode
from runner.load import MAX_FILE_BYTES, load_document
from tests.helpers import NOW, number, write_campaign, write_csv
from tests.test_cli import CAMPAIGN, RUNNER_ENV, _UNSET, invoke, run_campaign

PLANTED = "sk-PLANTED-5ecret-0123456789"
FORMATS = ("text", "json", "github", "markdown")
# Generous: these commands answer in well under a second; a hang is what the timeout catches.
HANG_TIMEOUT = 30


def assert_not_leaked(*texts: str) -> None:
    for text in texts:
        assert PLANTED not in text, text
        assert "5ecret" not in text, text  # no part of it either


def campaign_text(recipients: list[object], **more: object) -> dict[str, object]:
    return {"content": {"text": "Hi {{ name }}"}, "substitutions": {"name": "there"}, "recipients": recipients,
            **more}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository (a real `.git` folder) with the campaign in a subfolder, and a secret beside the repository."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "campaigns").mkdir()
    (root / "data").mkdir()
    (tmp_path / "secret.txt").write_text(f"{PLANTED}\n", encoding="utf-8")
    return root


def _bounded_memory() -> None:
    """A run that reads /dev/zero must fail, not take the machine's memory with it."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run_in(folder: Path, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, bounded in time and memory: these inputs used to hang or read without end."""
    environment = {k: v for k, v in os.environ.items() if k not in _UNSET}
    environment["CAMPAIGN_NOW"] = "2026-11-23T12:00:00Z"
    environment.update(env or {})
    proc = subprocess.run([*CAMPAIGN, *map(str, args)], cwd=folder, env=environment, capture_output=True,
                          encoding="utf-8", timeout=HANG_TIMEOUT, preexec_fn=_bounded_memory)
    assert "Traceback" not in proc.stderr and "unexpected error" not in proc.stderr, proc.stderr
    return proc


# --- 2. files outside the repository --------------------------------------------------


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink", "exclude"])
def test_recipient_file_outside_the_repository_is_refused_unread(repo: Path, how: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    secret = repo.parent / "secret.txt"
    entry: object = {"file": "../../secret.txt"}
    recipients: list[object] = [{"msisdn": number(1)}]
    more: dict[str, object] = {}
    if how == "absolute":
        entry = {"file": str(secret)}
    elif how == "symlink":
        (repo / "data" / "audience.csv").symlink_to(secret)
        entry = {"file": "../data/audience.csv"}
    if how == "exclude":
        more["exclude"] = ["../../secret.txt"]
    else:
        recipients.append(entry)
    write_campaign(repo / "campaigns", campaign_text(recipients, **more))
    monkeypatch.chdir(repo)
    for output_format in FORMATS:
        result = invoke("validate", "--format", output_format, "campaigns/campaign.yaml")
        assert result.exit_code == ExitCode.INVALID
        assert "file-outside-repo" in result.stdout
        assert_not_leaked(result.stdout, result.stderr)
    text = invoke("validate", "campaigns/campaign.yaml").stdout
    line = "11:3" if how == "exclude" else "10:9"
    assert f"campaigns/campaign.yaml:{line}:" in text and "columns" not in text
    for command in ("plan", "compile"):
        result = invoke(command, "campaigns/campaign.yaml")
        assert result.exit_code == ExitCode.INVALID
        assert "file-outside-repo" in result.stderr
        assert_not_leaked(result.stdout, result.stderr)


@pytest.mark.parametrize("variable", ["WEBEX_CONNECT_SERVICE_KEY_FILE", "WEBEX_CONNECT_JWT_FILE"])
def test_the_credential_file_inside_the_repository_is_refused_unread(repo: Path, variable: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / ".secrets").mkdir()
    (repo / ".secrets" / "key").write_text(f"{PLANTED}\n", encoding="utf-8")
    (repo / "data" / "audience.csv").symlink_to("../.secrets/key")
    write_campaign(repo / "campaigns", campaign_text([{"file": "../.secrets/key"}, {"file": "../data/audience.csv"}]))
    monkeypatch.chdir(repo)
    env = {variable: str(repo / ".secrets" / "key")}
    for output_format in FORMATS:
        result = invoke("validate", "--format", output_format, "campaigns/campaign.yaml", env=env)
        assert result.exit_code == ExitCode.INVALID
        assert_not_leaked(result.stdout, result.stderr)
    errors = [line for line in invoke("validate", "campaigns/campaign.yaml", env=env).stdout.splitlines()
              if ": error: " in line]
    assert len(errors) == 2 and all(f"the file is the one {variable} names" in line for line in errors)


def test_validate_and_plan_output_redacts_the_environment_key(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that reached a file in the repository (a header, a value) is not passed on to a review comment."""
    # a long value: the text table wraps it over lines, and markdown cuts long cells
    write_csv(repo / "data" / "people.csv", ["msisdn", "name", PLANTED], [[number(1), "x" * 150 + PLANTED, "x"]])
    write_campaign(repo / "campaigns", {"content": {"text": "Hi {{ name }} {{ missing }}"},
                                        "recipients": [{"file": "../data/people.csv"}]})
    monkeypatch.chdir(repo)
    env = {"WEBEX_CONNECT_SERVICE_KEY": PLANTED}
    for output_format in FORMATS:
        result = invoke("validate", "--format", output_format, "campaigns/campaign.yaml", env=env)
        assert result.exit_code == ExitCode.INVALID and "missing-variable" in result.stdout
        # the header, as "columns: ***, name" (markdown escapes the stars, so they stay literal)
        assert (r"\*\*\*" if output_format == "markdown" else "***") in result.stdout
        assert_not_leaked(result.stdout, result.stderr)
    write_campaign(repo / "campaigns", {"content": {"text": "Hi {{ name }}"},
                                        "recipients": [{"file": "../data/people.csv"}]})
    for output_format in ("text", "json", "markdown"):
        shown = ["--show-pii"] if output_format == "markdown" else []  # markdown masks the value itself otherwise
        result = invoke("plan", "--format", output_format, *shown, "campaigns/campaign.yaml", env=env)
        assert result.exit_code == ExitCode.OK
        assert (r"\*\*\*" if output_format == "markdown" else "***") in result.stdout
        assert_not_leaked(result.stdout, result.stderr)


def test_without_git_the_campaign_folder_is_the_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "campaigns").mkdir()
    write_csv(tmp_path / "audience.csv", ["msisdn", "name"], [[number(1), "Ada"]])
    write_csv(tmp_path / "campaigns" / "inside.csv", ["msisdn", "name"], [[number(2), "Bo"]])
    write_campaign(tmp_path / "campaigns", campaign_text([{"file": "../audience.csv"}, {"file": "inside.csv"}]))
    monkeypatch.chdir(tmp_path)
    result = invoke("validate", "campaigns/campaign.yaml")
    assert result.exit_code == ExitCode.INVALID
    assert [line.rsplit("[", 1)[-1] for line in result.stdout.splitlines() if ": error: " in line] == [
        "file-outside-repo] (hint: recipient and exclude files must be inside the repository that holds the "
        "campaign (the nearest folder with .git, else the campaign file's folder); symlinks are followed)"]
    (tmp_path / ".git").mkdir()  # now the repository is tmp_path, and ../audience.csv is inside it
    assert invoke("validate", "campaigns/campaign.yaml").exit_code == ExitCode.OK


def test_a_data_folder_beside_the_campaigns_is_fine(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_csv(repo / "data" / "audience.csv", ["msisdn", "name"], [[number(1), "Ada"]])
    write_campaign(repo / "campaigns", campaign_text([{"file": "../data/audience.csv"}]))
    monkeypatch.chdir(repo)
    assert invoke("plan", "campaigns/campaign.yaml").exit_code == ExitCode.OK


# --- 2. only regular files: FIFOs never hang ---------------------------------------------


def test_fifo_as_recipient_or_exclude_file_is_an_error_not_a_hang(repo: Path) -> None:
    os.mkfifo(repo / "data" / "audience.csv")
    os.mkfifo(repo / "data" / "optouts.csv")
    write_campaign(repo / "campaigns", campaign_text([{"file": "../data/audience.csv"}],
                                                     exclude=["../data/optouts.csv"]))
    proc = run_in(repo, "validate", "campaigns/campaign.yaml")
    assert proc.returncode == ExitCode.INVALID
    lines = [line for line in proc.stdout.splitlines() if ": error: " in line]
    assert len(lines) == 2 and all("it is a FIFO (named pipe), not a regular file" in line for line in lines)
    for command in ("plan", "compile"):
        assert run_in(repo, command, "campaigns/campaign.yaml").returncode == ExitCode.INVALID


def test_fifo_as_campaign_file_is_an_error_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "campaign.yaml")
    proc = run_in(tmp_path, "validate", "campaign.yaml")
    assert proc.returncode == ExitCode.INVALID
    assert "campaign.yaml: error: cannot read file: it is a FIFO (named pipe), not a regular file" in proc.stdout
    assert run_in(tmp_path, "plan", "campaign.yaml").returncode == ExitCode.INVALID


@pytest.mark.parametrize("variable", ["WEBEX_CONNECT_SERVICE_KEY_FILE", "WEBEX_CONNECT_JWT_FILE"])
def test_credential_file_must_be_a_small_regular_file(tmp_path: Path, variable: str) -> None:
    os.mkfifo(tmp_path / "fifo")
    huge = tmp_path / "huge"
    huge.write_text(PLANTED + "x" * (64 * 1024), encoding="utf-8")
    write_campaign(tmp_path, campaign_text([{"msisdn": number(1)}]))
    for target, reason in [(tmp_path / "fifo", "it is a FIFO (named pipe), not a regular file"),
                           (Path("/dev/zero"), "it is a character device, not a regular file"),
                           (huge, "the limit is 65,536 bytes"),
                           (tmp_path, "it is a directory")]:
        if target in (huge, tmp_path):  # in-process only where the old code could neither hang nor flood
            with pytest.raises(CampaignError) as caught:
                Credentials.from_env({variable: str(target)})
            assert caught.value.exit_code == ExitCode.USAGE
            assert variable in caught.value.message and reason in caught.value.message
            assert_not_leaked(caught.value.message, caught.value.hint or "")
        # apply reads the credentials; every error message passes through them to be redacted too
        proc = run_in(tmp_path, "apply", "--yes", "--state", "s.db", "--base-url", "http://127.0.0.1:9",
                      "campaign.yaml", env={variable: str(target)})
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert variable in proc.stderr and reason in proc.stderr
        assert_not_leaked(proc.stdout, proc.stderr)


# --- 2. no value of a secret-like key in any diagnostic ------------------------------------


def test_schema_error_does_not_echo_a_key_under_a_credential_name(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.yaml").write_text(
        "version: 1\nid: leak\nfrom: {serviceKey: " + PLANTED + "}\ncontent: {text: hi}\n"
        "recipients: [{msisdn: \"+447911000123\"}]\noptions: {domain: https://x.example, tag1: {token: "
        + PLANTED + "}}\ncontactPolicy: {jwt: !!int " + PLANTED + "}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for output_format in FORMATS:
        result = invoke("validate", "--format", output_format, "c.yaml")
        assert result.exit_code == ExitCode.INVALID
        assert_not_leaked(result.stdout, result.stderr)
    text = invoke("validate", "c.yaml").stdout
    assert "c.yaml:3:7: error: from: an object is not of type 'string' [schema.type]" in text
    assert "c.yaml:7:22: error: this value cannot be read as an integer (it is tagged !!int) [yaml-bad-value]" in text
    assert "secret-in-file" in text
    result = invoke("plan", "c.yaml")
    assert result.exit_code == ExitCode.INVALID
    assert_not_leaked(result.stdout, result.stderr)


def test_long_values_are_cut_in_diagnostics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_campaign(tmp_path, {"id": "x" * 5000, **campaign_text([{"msisdn": number(1)}])})
    monkeypatch.chdir(tmp_path)
    result = invoke("validate", "campaign.yaml")
    line = next(line for line in result.stdout.splitlines() if "schema.pattern" in line)
    assert "(5,000 characters)" in line and "x" * 100 not in line
    assert len(line) < 250
    (tmp_path / "number.yaml").write_text("version: 1\nid: n\nfrom: " + "1" * 4000 + "\ncontent: {text: hi}\n"
                                          'recipients: [{msisdn: "+447911000123"}]\n', encoding="utf-8")
    lines = invoke("validate", "number.yaml").stdout.splitlines()
    assert lines[0] == ("number.yaml:3:7: error: an unquoted 4,000-character number was read by YAML as a number, "
                        "not a string [yaml-unquoted-number] (hint: quote it)")


def test_a_value_that_looks_like_a_jwt_is_not_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJzdmMifQ.c2lnbmF0dXJlMTIz"
    write_campaign(tmp_path, {"from": [jwt], **campaign_text([{"msisdn": number(1)}])})  # flagged, and the list is wrong
    monkeypatch.chdir(tmp_path)
    for output_format in FORMATS:
        result = invoke("validate", "--format", output_format, "campaign.yaml")
        assert result.exit_code == ExitCode.INVALID
        assert "c2lnbmF0dXJl" not in result.stdout and "eyJpc3Mi" not in result.stdout


# --- 5. never exit 70 for the input or the environment -------------------------------------


@pytest.mark.parametrize("line, says", [
    ('{"msisdn": "+447911000123", "name": "\\ud83d"}', "'name' holds a lone surrogate \\ud83d"),
    ('{"msisdn": "+447911000123", "\\udc00": "x"}', "holds a lone surrogate \\udc00"),
    ('{"msisdn": "+4479110\\ud83d"}', "'msisdn' holds a lone surrogate \\ud83d"),
    ("[" * 100_000, "invalid JSON: nested too deeply"),
])
def test_hostile_json_lines_row_is_a_row_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str,
                                              says: str) -> None:
    (tmp_path / "audience.jsonl").write_text(f'{{"msisdn": "{number(0)}"}}\n{line}\n', encoding="utf-8")
    write_campaign(tmp_path, campaign_text([{"file": "audience.jsonl"}]))
    monkeypatch.chdir(tmp_path)
    for command in ("plan", "compile"):
        result = invoke(command, "campaign.yaml")
        assert result.exit_code == ExitCode.INVALID, result.stderr
        assert result.stderr.startswith("audience.jsonl:2: error: ") and says in result.stderr, result.stderr


def test_stdout_closed_early_ends_quietly(tmp_path: Path) -> None:
    # 1,000 lines of output: more than a pipe holds, so the writer meets the closed end
    write_campaign(tmp_path, campaign_text([{"msisdn": number(i)} for i in range(1000)], throughput={"tps": 1}))
    environment = {k: v for k, v in os.environ.items() if k not in _UNSET}
    environment["CAMPAIGN_NOW"] = "2026-11-23T12:00:00Z"
    for args in (["compile", "campaign.yaml"], ["plan", "--all", "campaign.yaml"],
                 ["plan", "--all", "--format", "json", "campaign.yaml"]):
        proc = subprocess.Popen([*CAMPAIGN, *args], cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        _, err = proc.communicate(timeout=HANG_TIMEOUT)
        assert first
        assert (proc.returncode, err) == (0, b""), err


def test_full_disk_is_an_io_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    write_campaign(tmp_path, campaign_text([{"msisdn": number(i)} for i in range(50)]))
    environment = {k: v for k, v in os.environ.items() if k not in _UNSET}
    environment["CAMPAIGN_NOW"] = "2026-11-23T12:00:00Z"
    for args in (["compile", "campaign.yaml"], ["plan", "campaign.yaml"], ["validate", "campaign.yaml"]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([*CAMPAIGN, *args], cwd=tmp_path, env=environment, stdout=full,
                                  stderr=subprocess.PIPE, encoding="utf-8", timeout=HANG_TIMEOUT)
        assert proc.returncode == ExitCode.IO_ERROR == 74
        assert proc.stderr.splitlines() == ["error: cannot write output: No space left on device",
                                            "hint: free some space (or fix the device) and run it again"]


def test_sandbox_port_taken_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*CAMPAIGN, "sandbox", "--port", str(port)], capture_output=True, encoding="utf-8",
                              timeout=HANG_TIMEOUT)
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use",
                                        "hint: pick another --port, or --port 0 for a free one"]


# --- 6. compile -o never destroys anything ------------------------------------------------


@pytest.fixture
def compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_csv(tmp_path / "audience.csv", ["msisdn", "name"], [[number(1), "Ada"]])
    write_csv(tmp_path / "optouts.csv", ["msisdn"], [[number(9)]])
    write_campaign(tmp_path, campaign_text([{"file": "audience.csv"}], exclude=["optouts.csv"]))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    return {p.name: (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file() else "other")
            for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("target", ["campaign.yaml", "audience.csv", "optouts.csv", "./sub/../audience.csv",
                                    "link-to-campaign", "hardlink.csv"])
def test_compile_refuses_to_overwrite_its_own_inputs(compiled: Path, target: str) -> None:
    (compiled / "sub").mkdir()
    (compiled / "link-to-campaign").symlink_to("campaign.yaml")
    os.link(compiled / "audience.csv", compiled / "hardlink.csv")
    before = _snapshot(compiled)
    result = invoke("compile", "-o", target, "campaign.yaml")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines() == [f"error: cannot write {Path(target)}: it is one of the campaign's own input files",
                                          "hint: write the requests to a new file"]
    assert _snapshot(compiled) == before


def test_compile_refuses_fifo_device_and_folder(compiled: Path) -> None:
    os.mkfifo(compiled / "pipe")
    (compiled / "folder").mkdir()
    (compiled / "to-null").symlink_to("/dev/null")
    for target, reason in [("pipe", "it is a FIFO (named pipe), not a regular file"),
                           ("/dev/null", "it is a character device, not a regular file"),
                           ("to-null", "it is a character device, not a regular file"),
                           ("folder", "it is a directory")]:
        with pytest.raises(CampaignError) as caught:
            run_compile(CompileSettings(Path("campaign.yaml"), Path(target)), now=NOW, out=open(os.devnull, "w"))
        assert caught.value.exit_code == ExitCode.USAGE
        assert caught.value.message == f"cannot write {target}: {reason}"
    assert Path("/dev/null").is_char_device()
    assert (compiled / "to-null").is_symlink() and (compiled / "pipe").is_fifo()
    assert sorted(p.name for p in (compiled / "folder").iterdir()) == []


def test_compile_writes_through_a_symlink_and_keeps_it(compiled: Path) -> None:
    (compiled / "out").mkdir()
    (compiled / "out" / "real.jsonl").write_text("old\n", encoding="utf-8")
    (compiled / "link.jsonl").symlink_to("out/real.jsonl")
    result = invoke("compile", "-o", "link.jsonl", "campaign.yaml")
    assert (result.exit_code, result.stderr) == (0, "")
    assert (compiled / "link.jsonl").is_symlink() and os.readlink(compiled / "link.jsonl") == "out/real.jsonl"
    written = (compiled / "out" / "real.jsonl").read_text(encoding="utf-8")
    body = json.loads(written)
    assert ([e["msisdn"] for e in body["to"]], body["content"]["text"]) == ([[number(1)]], "Hi Ada")
    assert sorted(p.name for p in (compiled / "out").iterdir()) == ["real.jsonl"]


def test_compile_dash_is_stdout(compiled: Path) -> None:
    result = invoke("compile", "-o", "-", "campaign.yaml")
    assert result.exit_code == 0
    body = json.loads(result.stdout)
    assert ([e["msisdn"] for e in body["to"]], body["content"]["text"]) == ([[number(1)]], "Hi Ada")
    assert not (compiled / "-").exists()


def test_compile_stale_partial_symlink_is_not_written_through(compiled: Path) -> None:
    (compiled / "victim.txt").write_text("keep me\n", encoding="utf-8")
    (compiled / "out.jsonl.partial").symlink_to("victim.txt")
    assert invoke("compile", "-o", "out.jsonl", "campaign.yaml").exit_code == 0
    assert (compiled / "victim.txt").read_text(encoding="utf-8") == "keep me\n"
    assert (compiled / "out.jsonl").is_file() and not (compiled / "out.jsonl.partial").exists()


# --- 7. large inputs fail fast ---------------------------------------------------------------


def test_oversized_campaign_file_is_refused_by_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:  # sparse: 42 MB that would take the parser minutes
        handle.truncate(42_000_000)
    document, diagnostics = load_document(path, "huge.yaml")
    assert document is None
    assert [str(d) for d in diagnostics] == [
        f"huge.yaml: error: the file is 42,000,000 bytes; a campaign file may hold at most {MAX_FILE_BYTES:,} "
        "bytes [file-too-large] (hint: put large audiences in a recipient file (`recipients: [{file: "
        "audience.csv}]`), which has no size limit)"]
    assert MAX_FILE_BYTES == 4 * 1024 * 1024


def test_oversized_campaign_file_exit_code(tmp_path: Path) -> None:
    with open(tmp_path / "huge.yaml", "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    proc = run_campaign("validate", "huge.yaml", cwd=tmp_path)
    assert proc.returncode == ExitCode.INVALID
    assert "[file-too-large]" in proc.stdout


def test_many_inline_recipients_are_plain_data_not_an_alias_bomb(tmp_path: Path) -> None:
    lines = ["version: 1", "id: big", 'from: "12025550100"', "content: {text: 'Hi {{ name }}'}", "recipients:"]
    lines += [f'- msisdn: "{number(i)}"\n  substitutions: {{name: P{i}}}\n  correlationId: c{i}' for i in range(25_000)]
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    document, diagnostics = load_document(path, "c.yaml")
    assert diagnostics == [] and document is not None
    assert len(document.data["recipients"]) == 25_000
    assert document.data["recipients"][24_999] == {"msisdn": number(24_999), "substitutions": {"name": "P24999"},
                                                   "correlationId": "c24999"}


def test_too_many_inline_recipients_point_to_recipient_files(tmp_path: Path) -> None:
    lines = ["version: 1", "id: big", 'from: "12025550100"', "content: {text: hi}", "recipients:"]
    lines += [f'- msisdn: "{number(i)}"' for i in range(50_001)]
    (tmp_path / "big.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_campaign("validate", "big.yaml", cwd=tmp_path)
    assert proc.returncode == ExitCode.INVALID
    assert proc.stdout.splitlines()[0] == (
        "big.yaml:5:1: error: 50,001 inline recipients; a campaign file may list at most 50,000 "
        "[too-many-inline-recipients] (hint: put them in a recipient file (CSV or JSON Lines): "
        "`recipients: [{file: audience.csv}]`)")
    assert "alias" not in proc.stdout


def test_many_plain_values_blame_size_not_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runner.load.MAX_NODES", 1_000)  # the real limit needs a million values
    text = "version: 1\nid: x\nnotes: [" + ", ".join(["0"] * 1_000) + "]\n"
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    document, diagnostics = load_document(tmp_path / "c.yaml", "c.yaml")
    assert document is None
    assert [d.rule for d in diagnostics] == ["yaml-too-large"]
    assert "alias" not in str(diagnostics[0]) and "recipient file" in str(diagnostics[0])


# --- 2. redaction happens before any cut ----------------------------------------------------


@pytest.mark.parametrize("offset", [150, 176, 190, 199, 480, 495])
def test_a_long_vendor_answer_never_leaks_part_of_the_key(offset: int) -> None:
    from tests.test_client import SECRET_KEY, ScriptedServer, make_batch, reply

    assert len(SECRET_KEY) == 25
    server = ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        for body in (("x" * offset + SECRET_KEY + "y" * 600).encode(),  # not JSON: shown as a snippet
                     json.dumps({"code": "7004", "message": "x" * offset + SECRET_KEY + "y" * 600}).encode()):
            server.script.answers.append(reply(502, body))
            with ApiClient(server.url, Credentials(service_key=SECRET_KEY), timeout=5) as client:
                answer = client.send(make_batch())
            for length in range(6, len(SECRET_KEY) + 1):  # no 6 consecutive characters of it
                for start in range(0, len(SECRET_KEY) - length + 1):
                    assert SECRET_KEY[start:start + length] not in answer.message, (offset, answer.message)
    finally:
        server.shutdown()
        server.server_close()


def test_apply_redacts_the_environment_key_from_the_plan_it_prints(repo: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """apply prints the plan's warnings before sending: a key that reached a recipient file
    (here a column name, quoted by the control-character warning) is redacted there too."""
    write_csv(repo / "data" / "people.csv", ["msisdn", "name", PLANTED], [[number(1), "Ada", "a\x1bb"]])
    write_campaign(repo / "campaigns", {"content": {"text": "Hi {{ name }}"},
                                        "recipients": [{"file": "../data/people.csv"}]})
    monkeypatch.chdir(repo)
    result = invoke("apply", "--sandbox", "--yes", "--quiet", "--state", str(repo / "s.db"),
                    "campaigns/campaign.yaml", env={"WEBEX_CONNECT_SERVICE_KEY": PLANTED})
    assert result.exit_code == ExitCode.OK, result.stderr
    assert "value of '***' holds control character U+001B [control-character]" in result.stderr
    assert_not_leaked(result.stdout, result.stderr)
