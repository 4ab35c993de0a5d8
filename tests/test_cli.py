"""The `sovereign` command: policy subcommands, and `up` failing fast and clearly before Ray starts."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policies import default_policy_path, parse_policy
from serving.launcher import free_port
from sovereign.cli import app

runner = CliRunner()
DEFAULT_TEXT = default_policy_path().read_text(encoding="utf-8")


def test_help_teaches_with_examples() -> None:
    result = runner.invoke(app, ["up", "--help"])
    assert result.exit_code == 0
    assert "sovereign up --model /data/A.X-K1" in result.output
    assert "--think" in result.output


def test_policy_check_summarises_a_valid_document() -> None:
    result = runner.invoke(app, ["policy", "check"])
    assert result.exit_code == 0, result.output
    assert "✓ valid" in result.output
    assert "policy kr-default, jurisdiction KR (Republic of Korea)" in result.output
    for expected in ("kr-seoul-1", "unique-identifier", "registry-mirror", "platform-admin", "audit kept 730 days"):
        assert expected in result.output


def test_policy_check_reports_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(DEFAULT_TEXT.replace("code: KR", "code: Korea").replace("action: block", "action: drop", 1))
    result = runner.invoke(app, ["policy", "check", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: {path}:")
    assert "spec.jurisdiction.code: String should match pattern" in lines[0]
    assert "spec.dataClasses.unique-identifier.action: Input should be 'allow', 'redact' or 'block'" in lines[1]


def test_policy_check_of_a_missing_file() -> None:
    result = runner.invoke(app, ["policy", "check", "/nonexistent/policy.yaml"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: /nonexistent/policy.yaml: file not found"


def test_policy_default_prints_a_valid_policy_to_copy() -> None:
    result = runner.invoke(app, ["policy", "default"])
    assert result.exit_code == 0
    assert parse_policy(result.stdout).metadata.name == "kr-default"


@pytest.mark.parametrize(
    ("arguments", "exit_code", "first_line", "rule"),
    [
        (
            ["--role", "model-admin", "--action", "deploy"],
            0,
            "allow  role `model-admin` may deploy",
            "spec.roles.model-admin",
        ),
        (["--role", "auditor", "--action", "deploy"], 1, "deny  role `auditor` may not deploy", "spec.roles.auditor"),
        (
            ["--data-class", "personal", "--endpoint", "https://registry.sovereign.kr"],
            0,
            "redact  ",
            "spec.dataClasses.personal",
        ),
        (["--data-class", "public", "--endpoint", "https://example.com"], 1, "deny  ", "spec.egress.default"),
        (["--site", "kr-daejeon-1"], 0, "allow  site `kr-daejeon-1` is in KR", "spec.sites[kr-daejeon-1]"),
    ],
)
def test_policy_decide(arguments: list[str], exit_code: int, first_line: str, rule: str) -> None:
    result = runner.invoke(app, ["policy", "decide", *arguments])
    assert result.exit_code == exit_code
    decision, rule_line = result.stdout.strip().splitlines()
    assert decision.startswith(first_line)
    assert rule_line == f"rule: {rule}"


def test_policy_decide_needs_a_question() -> None:
    result = runner.invoke(app, ["policy", "decide", "--role", "auditor"])
    assert result.exit_code == 2
    assert "give --role with --action, --data-class with --endpoint, or --site" in result.stderr


def test_policy_decide_unknown_action() -> None:
    result = runner.invoke(app, ["policy", "decide", "--role", "auditor", "--action", "fly"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown action `fly`; expected one of: inference, deploy")


def test_up_with_a_missing_model_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--model", str(tmp_path / "A.X-K1")])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: model directory `{tmp_path / 'A.X-K1'}` does not exist; an HF-format checkpoint directory holds "
        "config.json, *.safetensors and tokenizer.json",
        "hint: point --model at a local checkpoint directory, or omit it for the tiny model",
    ]


def test_up_on_a_site_outside_the_jurisdiction(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    foreign = "    - name: us-east-1\n      kind: cloud-region\n      country: US\n      region: us-east-1\n"
    policy.write_text(DEFAULT_TEXT.replace("  sites:\n", "  sites:\n" + foreign + "      zones: [{name: a}]\n"))
    result = runner.invoke(app, ["up", "--policy", str(policy), "--site", "us-east-1"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "error: refusing to serve on site `us-east-1`: site `us-east-1` is in US, outside KR (spec.sites[us-east-1])"
    )


def test_up_with_an_invalid_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: [")
    result = runner.invoke(app, ["up", "--policy", str(policy)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {policy}:1: invalid YAML")


def test_up_on_a_port_in_use() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = runner.invoke(app, ["up", "--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is already in use; stop what holds it or choose another with --port"
    )


def test_up_with_prometheus_on_a_taken_port_names_the_option() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = runner.invoke(app, ["up", "--port", str(free_port()), "--prometheus", "--prometheus-port", str(port)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is already in use; stop what holds it or choose another with "
        "--prometheus-port"
    )


def test_up_with_prometheus_needs_the_binary() -> None:
    result = runner.invoke(app, ["up", "--prometheus"], env={"PATH": "/nonexistent"})
    assert result.exit_code == 1
    assert "--prometheus needs the `prometheus` binary" in result.stderr
    assert "apt-get install prometheus" in result.stderr


def test_up_with_a_bad_option_value() -> None:
    result = runner.invoke(app, ["up", "--dtype", "int3"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16'"
    result = runner.invoke(app, ["up", "--port", "70000"])
    assert result.exit_code == 2


def test_policy_schema_describes_every_field() -> None:
    result = runner.invoke(app, ["policy", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    models = {"ResidencyPolicy": schema, **schema["$defs"]}
    undocumented = [
        f"{model}.{name}"
        for model, definition in models.items()
        for name, field in definition.get("properties", {}).items()
        if not field.get("description")
    ]
    assert undocumented == []
    assert "unique-identifier" in schema["$defs"]["DataClassRules"]["properties"]
    assert schema["$defs"]["Site"]["properties"]["cidrs"]["items"] == {"type": "string", "format": "cidr"}


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == "sovereign-stack 0.1.0\n"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "no-equals-sign",
            "error: --upstream: `no-equals-sign` is not NAME=URL, e.g. kanana=https://llm.example.kr/v1",
        ),
        ("x=ftp://host/v1", "error: --upstream: String should match pattern '^https?://'"),
    ],
)
def test_up_with_a_malformed_upstream(value: str, message: str) -> None:
    result = runner.invoke(app, ["up", "--upstream", value])
    assert result.exit_code == 1
    assert result.stderr.strip() == message


def test_up_with_an_upstream_the_policy_does_not_allow() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    result = runner.invoke(app, ["up", "--port", str(port), "--upstream", "gpt=https://api.openai.com/v1"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "error: refusing upstream `gpt` at https://api.openai.com/v1: `https://api.openai.com/v1` is neither a site "
        "nor on the egress allowlist; egress is denied by default (spec.egress.default)"
    )


def test_an_error_no_command_caught_is_one_line_and_its_traceback_goes_to_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    from sovereign.output import run_guarded

    monkeypatch.setenv("SOVEREIGN_STATE_DIR", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["sovereign", "explode", "--now"])
    broken = typer.Typer()

    @broken.command()
    def explode(now: bool = False) -> None:
        raise RuntimeError("the disk went away")

    @broken.command()
    def hold() -> None:
        """A second command, so that Typer keeps `explode` a subcommand."""

    with pytest.raises(SystemExit) as exited:
        run_guarded(broken)
    assert exited.value.code == 1
    log = tmp_path / "sovereign.log"
    stderr = capsys.readouterr().err.splitlines()
    assert stderr == [
        "error: sovereign explode failed: RuntimeError: the disk went away",
        f"hint: the full traceback is in {log}; fix what it names and run the command again",
    ]
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert "Traceback (most recent call last)" in log.read_text()
    assert "sovereign explode --now" in log.read_text()
