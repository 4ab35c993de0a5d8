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


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, str]:
    """Placeholders in the cases below: a checkpoint, a fake report, an unknown architecture, an empty dir."""
    directory = tmp_path_factory.mktemp("mistakes")
    (directory / "report.json").write_text('{"not": "a report"}')
    shutil.copytree(tiny_checkpoint, directory / "unknown")
    config = json.loads((directory / "unknown" / "config.json").read_text())
    (directory / "unknown" / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    (directory / "empty").mkdir()
    return {
        "<checkpoint>": str(tiny_checkpoint),
        "<report>": str(directory / "report.json"),
        "<unknown>": str(directory / "unknown"),
        "<empty>": str(directory / "empty"),
    }


REGISTER = ["registry", "register", "<checkpoint>", "--name", "mistake"]
PROMOTE = ["registry", "promote", "mistake", "1", "--ticket", "T"]


@pytest.mark.parametrize(
    ("arguments", "exit_code", "message"),
    [
        ([*REGISTER, "--dataset", "corpus=<report>"], 2, "--dataset corpus: `<report>` is not a scan report"),
        ([*REGISTER, "--dataset", "corpus="], 2, "--dataset `corpus=` is not NAME or NAME=SCAN_REPORT.json"),
        ([*REGISTER, "--dataset", "corpus", "--no-training-data"], 2, "contradict each other"),
        ([*REGISTER, "--base", "models:/missing@production", "--no-training-data"], 1, "--base models:/missing@p"),
        (["registry", "register", "<empty>", "--name", "m", "--no-training-data"], 1, "config.json` is missing"),
        (
            ["registry", "register", "<unknown>", "--name", "m", "--no-training-data"],
            1,
            "does not describe a model transformers can build",
        ),
        (
            ["registry", "register", "<checkpoint>", "--name", "a/b%", "--no-training-data"],
            1,
            "--name: Invalid model name 'a/b%'. Names cannot contain '/' or ':'.",
        ),
        ([*PROMOTE, "--alias", "latest"], 1, "--alias: 'latest' alias name (case insensitive) is reserved."),
        (["registry", "promote", "no-such-model", "1", "--ticket", "T"], 1, "model `no-such-model` has no version"),
        (["registry", "promote", "mistake", "1"], 2, "--ticket is required"),
    ],
)
def test_mistakes_are_named(
    env: dict[str, str],
    make_key: Callable[..., str],
    inputs: dict[str, str],
    arguments: list[str],
    exit_code: int,
    message: str,
) -> None:
    def filled(text: str) -> str:
        for placeholder, value in inputs.items():
            text = text.replace(placeholder, value)
        return text

    result = runner.invoke(
        app, [filled(a) for a in arguments], env={**env, "SOVEREIGN_API_KEY": make_key(TENANT, "model-admin")}
    )
    assert result.exit_code == exit_code, result.output
    assert filled(message) in result.stderr
    assert "Traceback" not in result.output


def test_a_key_that_is_not_one_is_named(env: dict[str, str]) -> None:
    result = runner.invoke(app, PROMOTE, env={**env, "SOVEREIGN_API_KEY": "sk-123"})
    assert result.exit_code == 1
    assert "--api-key: it is not a sovereign-stack key" in result.stderr


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


def test_checkout_fetches_the_approved_version_as_serving_pods_do(
    env: dict[str, str], publish: Callable[[str], str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    version = publish("cli-checkout")
    cache = tmp_path / "models"
    moved = runner.invoke(
        app,
        ["registry", "checkout", "cli-checkout", "--expect-version", str(int(version) + 1)],
        env={**env, "SOVEREIGN_CACHE_DIR": str(cache)},
    )
    assert moved.exit_code == 1
    assert f"now points at version {version}, not {int(version) + 1}" in moved.stderr
    assert not cache.exists()

    fetched = runner.invoke(
        app,
        ["registry", "checkout", "cli-checkout", "--expect-version", version],
        env={**env, "SOVEREIGN_CACHE_DIR": str(cache)},
    )
    assert fetched.exit_code == 0, fetched.output
    target = cache / "registry" / "cli-checkout" / version
    assert f"Verified: models:/cli-checkout@production version {version}" in fetched.output
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in tiny_checkpoint.iterdir())

    unknown = runner.invoke(app, ["registry", "checkout", "cli-checkout", "--alias", "canary"], env=env)
    assert unknown.exit_code == 1
    assert "has no alias `canary`" in unknown.stderr
