"""`sovereign up --model models:/NAME@ALIAS`: only a promoted, intact version loads, and it keeps serving."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from policies import ResidencyPolicy
from policies.openbao import BaoServer
from serving.launcher import free_port
from serving.registry import Registry
from serving.registry_server import RegistryServer
from sovereign.cli import app
from tests.conftest import all_records, running_registry
from tests.test_up import sovereign_up

runner = CliRunner()


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry of this module's own, so a test can take it away from a running stack."""
    with running_registry(tmp_path_factory.mktemp("own-mlflow")) as server:
        yield server


def _up(reference: str, registry_server: RegistryServer, openbao: BaoServer) -> Result:
    """`sovereign up` in-process for a start that must fail before Ray starts."""
    arguments = ["up", "--model", reference, "--registry-uri", registry_server.address, "--vault-addr", openbao.address]
    return runner.invoke(app, [*arguments, "--port", str(free_port())])


def test_serves_the_promoted_version_follows_the_alias_and_outlives_the_registry(
    own_registry: RegistryServer,
    default_policy: ResidencyPolicy,
    signer: object,
    person: Callable,
    audit: object,
    tiny_checkpoint: Path,
    openbao: BaoServer,
    make_key: Callable[..., str],
    state_dir: Path,
) -> None:
    registry = Registry(own_registry.address, default_policy, signer)
    engineer, officer = person()[0], person()[0]
    first = registry.register(tiny_checkpoint, "axk1-served", engineer, [])
    registry.promote("axk1-served", first, "production", officer, "SEC-200", audit)
    port = free_port()
    options = ["--registry-uri", own_registry.address, "--vault-addr", openbao.address, "--port", str(port)]
    follow = ["--follow", "--follow-seconds", "1"]
    with sovereign_up("--model", "models:/axk1-served@production", *options, *follow) as (process, output):
        text = "\n".join(output.lines)
        assert "Fetching models:/axk1-served@production and verifying its checksums" in text
        assert "Serving axk1-served" in text
        assert f"Registry UI  {own_registry.address}" in text
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {make_key()}"}
        body = {"model": "axk1-served", "messages": [{"role": "user", "content": "안녕"}], "max_tokens": 4}

        def chat() -> int:
            return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code

        def revision() -> str:
            return httpx.get(f"{base}/healthz").json()["revision"]

        models = httpx.get(f"{base}/v1/models", headers=headers).json()["data"]
        assert [m["id"] for m in models] == ["axk1-served"]
        assert revision() == f"axk1-served/{first}"
        assert chat() == 200

        # An alias set in MLflow directly is not rolled out; the running version keeps serving.
        unapproved = registry.register(tiny_checkpoint, "axk1-served", engineer, [])
        registry.client.set_registered_model_alias("axk1-served", "production", unapproved)
        output.wait_for(f"still serving axk1-served/{first}: models:/axk1-served@production points at", timeout=60)
        assert revision() == f"axk1-served/{first}"

        # A promoted version is verified, then rolled out.
        second = registry.register(tiny_checkpoint, "axk1-served", engineer, [])
        registry.promote("axk1-served", second, "production", officer, "SEC-201", audit)
        output.wait_for(f"now serving axk1-served/{second} (was axk1-served/{first})", timeout=120)
        assert revision() == f"axk1-served/{second}"
        assert chat() == 200
        (rollout,) = [r for r in all_records(state_dir) if r.get("action") == "model.rollout"]
        assert (rollout["revision"], rollout["previous"]) == (f"axk1-served/{second}", f"axk1-served/{first}")

        own_registry.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{own_registry.address}/health")
        output.wait_for(f"still serving axk1-served/{second}: the model registry at", timeout=60)
        assert chat() == 200, "the loaded version keeps serving without the registry"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


def test_up_refuses_a_version_whose_files_changed(
    registry: Registry, registry_server: RegistryServer, publish: Callable[[str], str], openbao: BaoServer
) -> None:
    version = publish("axk1-tampered")
    source = registry.client.get_model_version("axk1-tampered", version).source
    stored = registry_server.directory / "artifacts" / source.removeprefix("mlflow-artifacts:/") / "config.json"
    stored.write_text(stored.read_text().replace('"num_hidden_layers": 3', '"num_hidden_layers": 30'))
    result = _up("models:/axk1-tampered@production", registry_server, openbao)
    assert result.exit_code == 1, result.output
    assert "refusing to load, the stored files do not match the manifest: `config.json`" in result.stderr
    assert "only versions promoted with `sovereign registry promote` are served" in result.stderr


def test_up_refuses_an_alias_that_was_not_promoted(
    registry: Registry, person: Callable, tiny_checkpoint: Path, registry_server: RegistryServer, openbao: BaoServer
) -> None:
    version = registry.register(tiny_checkpoint, "axk1-unapproved", person()[0], [])
    registry.client.set_registered_model_alias("axk1-unapproved", "production", version)
    result = _up("models:/axk1-unapproved@production", registry_server, openbao)
    assert result.exit_code == 1, result.output
    assert "which was never approved for `production`" in result.stderr


def test_up_with_a_malformed_registry_reference() -> None:
    result = runner.invoke(app, ["up", "--model", "models:/axk1", "--no-registry"])
    assert result.exit_code == 2
    assert "--model: `models:/axk1` is not a registry reference; write models:/NAME@ALIAS" in result.stderr
    needs_registry = runner.invoke(app, ["up", "--model", "models:/axk1@production", "--no-registry"])
    assert needs_registry.exit_code == 1
    assert "--model: a models:/ reference needs a registry" in needs_registry.stderr
    nothing_to_follow = runner.invoke(app, ["up", "--follow", "--no-registry"])
    assert nothing_to_follow.exit_code == 1
    assert "--follow: only a models:/NAME@ALIAS reference can be followed" in nothing_to_follow.stderr
