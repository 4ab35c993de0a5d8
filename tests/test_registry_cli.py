"""`sovereign registry` as people use it: keys name who acts, mistakes are named, exit codes mean something."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policies.openbao import BaoServer
from serving.registry_server import RegistryServer
from sovereign.cli import app
from tests.conftest import TENANT

runner = CliRunner()


@pytest.fixture
def env(openbao: BaoServer, registry_server: RegistryServer) -> dict[str, str]:
    return {
        "VAULT_ADDR": openbao.address,
        "VAULT_TOKEN": openbao.root_token,
        "MLFLOW_TRACKING_URI": registry_server.address,
        "COLUMNS": "200",
    }


@pytest.fixture(scope="module")
def scan_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli-scan")
    (directory / "corpus.txt").write_text("공개 보도자료입니다.\n", encoding="utf-8")
    report = directory / "corpus.scan.json"
    assert runner.invoke(app, ["scan", str(directory / "corpus.txt"), "--report", str(report)]).exit_code == 0
    return report


def test_register_promote_and_status(
    env: dict[str, str], make_key: Callable[..., str], tiny_checkpoint: Path, scan_report: Path
) -> None:
    engineer, officer = make_key(TENANT, "model-admin"), make_key(TENANT, "model-admin")
    registered = runner.invoke(
        app,
        ["registry", "register", str(tiny_checkpoint), "--name", "cli-student", "--dataset", f"corpus={scan_report}"],
        env={**env, "SOVEREIGN_API_KEY": engineer},
    )
    assert registered.exit_code == 0, registered.output
    version = re.search(r"Registered cli-student version (\d+)", registered.output)
    assert version, registered.output
    assert f"#/models/cli-student/versions/{version.group(1)}" in registered.output

    own = runner.invoke(
        app,
        ["registry", "promote", "cli-student", version.group(1), "--ticket", "SEC-9", "--json"],
        env={**env, "SOVEREIGN_API_KEY": engineer},
    )
    assert own.exit_code == 1
    verdict = json.loads(own.stdout)
    assert verdict["promoted"] is False
    assert [g["gate"] for g in verdict["gates"] if not g["passed"]] == ["four_eyes"]
    assert "refused: 1 gate(s) failed" in own.stderr

    approved = runner.invoke(
        app,
        ["registry", "promote", "cli-student", version.group(1), "--ticket", "SEC-9"],
        env={**env, "SOVEREIGN_API_KEY": officer},
    )
    assert approved.exit_code == 0, approved.output
    assert f"Promoted cli-student version {version.group(1)} to @production" in approved.output

    status = runner.invoke(app, ["registry", "status", "cli-student", "--json"], env=env)
    assert status.exit_code == 0, status.output
    (latest,) = json.loads(status.stdout)
    assert latest["aliases"] == ["production"]
    assert latest["tags"]["sovereign.approval.ticket"] == "SEC-9"
    table = runner.invoke(app, ["registry", "status", "cli-student"], env=env)
    assert "@production" in table.output
    assert "all passed" in table.output


def test_verify_names_what_changed(
    env: dict[str, str], registry: object, registry_server: object, publish: Callable[[str], str]
) -> None:
    version = publish("cli-verified")
    intact = runner.invoke(app, ["registry", "verify", "cli-verified", version], env=env)
    assert intact.exit_code == 0, intact.output
    assert f"Intact: cli-verified version {version} matches its signed manifest" in intact.output
    source = registry.client.get_model_version("cli-verified", version).source
    stored = registry_server.directory / "artifacts" / source.removeprefix("mlflow-artifacts:/") / "tokenizer.json"
    stored.unlink()
    broken = runner.invoke(app, ["registry", "verify", "cli-verified", version], env=env)
    assert broken.exit_code == 1
    assert f"cli-verified version {version} is not intact: `tokenizer.json`: missing" in broken.stderr


@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("model-user", "has role `model-user`, which may not registry.register"),
        ("auditor", "may not registry.register"),
    ],
)
def test_register_needs_the_permission(
    env: dict[str, str], make_key: Callable[..., str], tiny_checkpoint: Path, role: str, message: str
) -> None:
    result = runner.invoke(
        app,
        ["registry", "register", str(tiny_checkpoint), "--name", "nope", "--no-training-data"],
        env={**env, "SOVEREIGN_API_KEY": make_key(TENANT, role)},
    )
    assert result.exit_code == 1
    assert message in result.stderr
    assert "roles that may: model-admin" in result.stderr


def test_mistakes_are_named(
    env: dict[str, str], make_key: Callable[..., str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    key = make_key(TENANT, "model-admin")
    bad_report = tmp_path / "report.json"
    bad_report.write_text('{"not": "a report"}')
    cases = [
        (["--dataset", f"corpus={bad_report}"], 2, f"--dataset corpus: `{bad_report}` is not a scan report"),
        (["--dataset", "corpus="], 2, "--dataset `corpus=` is not NAME or NAME=SCAN_REPORT.json"),
        (["--dataset", "corpus", "--no-training-data"], 2, "contradict each other"),
        (["--base", "models:/missing@production", "--no-training-data"], 1, "--base models:/missing@production"),
    ]
    for extra, code, message in cases:
        result = runner.invoke(
            app,
            ["registry", "register", str(tiny_checkpoint), "--name", "mistake", *extra],
            env={**env, "SOVEREIGN_API_KEY": key},
        )
        assert result.exit_code == code, (extra, result.output)
        assert message in result.stderr, (extra, result.stderr)

    not_a_key = runner.invoke(
        app, ["registry", "promote", "mistake", "1", "--ticket", "T"], env={**env, "SOVEREIGN_API_KEY": "sk-123"}
    )
    assert not_a_key.exit_code == 1
    assert "--api-key: it is not a sovereign-stack key" in not_a_key.stderr
    no_ticket = runner.invoke(app, ["registry", "promote", "mistake", "1"], env={**env, "SOVEREIGN_API_KEY": key})
    assert no_ticket.exit_code == 2
    assert "--ticket is required" in no_ticket.stderr
    missing = runner.invoke(
        app, ["registry", "promote", "no-such-model", "1", "--ticket", "T"], env={**env, "SOVEREIGN_API_KEY": key}
    )
    assert missing.exit_code == 1
    assert "model `no-such-model` has no version `1`" in missing.stderr
    unknown_architecture = tmp_path / "unknown"
    shutil.copytree(tiny_checkpoint, unknown_architecture)
    config = json.loads((unknown_architecture / "config.json").read_text())
    (unknown_architecture / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    unknown = runner.invoke(
        app,
        ["registry", "register", str(unknown_architecture), "--name", "mistake", "--no-training-data"],
        env={**env, "SOVEREIGN_API_KEY": key},
    )
    assert unknown.exit_code == 1
    assert "does not describe a model transformers can build" in unknown.stderr
    bad_name = runner.invoke(
        app,
        ["registry", "register", str(tiny_checkpoint), "--name", "a/b%", "--no-training-data"],
        env={**env, "SOVEREIGN_API_KEY": key},
    )
    assert bad_name.exit_code == 1, bad_name.output
    assert "--name: Invalid model name 'a/b%'. Names cannot contain '/' or ':'." in bad_name.stderr
    reserved = runner.invoke(
        app,
        ["registry", "promote", "mistake", "1", "--alias", "latest", "--ticket", "T"],
        env={**env, "SOVEREIGN_API_KEY": key},
    )
    assert reserved.exit_code == 1
    assert "--alias: 'latest' alias name (case insensitive) is reserved." in reserved.stderr
    not_a_checkpoint = runner.invoke(
        app,
        ["registry", "register", str(tmp_path), "--name", "mistake", "--no-training-data"],
        env={**env, "SOVEREIGN_API_KEY": key},
    )
    assert not_a_checkpoint.exit_code == 1
    assert "config.json` is missing" in not_a_checkpoint.stderr


def test_without_a_registry_it_says_how_to_reach_one(env: dict[str, str], tmp_path: Path) -> None:
    embedded = runner.invoke(
        app, ["registry", "status", "x"], env={**env, "MLFLOW_TRACKING_URI": "", "SOVEREIGN_STATE_DIR": str(tmp_path)}
    )
    assert embedded.exit_code == 2
    assert "no `sovereign up` is running an embedded one" in embedded.stderr
    unreachable = runner.invoke(
        app, ["registry", "status", "x"], env={**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}
    )
    assert unreachable.exit_code == 1
    assert "the model registry at http://127.0.0.1:1 is not reachable" in unreachable.stderr
