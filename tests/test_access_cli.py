"""`sovereign tenants`, `sovereign keys` and `sovereign openbao` against a real OpenBao dev server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policies.openbao import AccessStore, BaoServer
from sovereign.cli import app

runner = CliRunner()


@pytest.fixture
def env(openbao: BaoServer) -> dict[str, str]:
    return {"VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token, "COLUMNS": "200"}


def test_create_a_tenant_and_a_key_then_revoke_it(env: dict[str, str], access_store: AccessStore) -> None:
    created = runner.invoke(
        app, ["tenants", "create", "mois", "--min-csap-tier", "high", "--tokens-per-day", "5000"], env=env
    )
    assert created.exit_code == 0, created.output
    assert access_store.tenant("mois").min_csap_tier == "high"

    result = runner.invoke(app, ["keys", "create", "--tenant", "mois", "--role", "auditor", "--name", "soc"], env=env)
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-sov-")
    assert "cannot be shown again" in result.stdout

    listed = json.loads(runner.invoke(app, ["keys", "list", "--tenant", "mois", "--json"], env=env).stdout)
    (entry,) = listed
    assert (entry["tenant"], entry["role"], entry["name"], entry["revoked"]) == ("mois", "auditor", "soc", None)
    assert key not in json.dumps(listed)
    stored = access_store.key(entry["id"])
    assert key.split("_", 1)[1] not in json.dumps(stored.__dict__), "only a hash of the secret is stored"

    revoked = runner.invoke(app, ["keys", "revoke", entry["id"]], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert access_store.key(entry["id"]).revoked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--tenant", "nobody", "--role", "model-user"], "--tenant: tenant `nobody` does not exist"),
        (["keys", "create", "--tenant", "acme", "--role", "root"], "--role: `root` is not a role of policy"),
        (["keys", "revoke", "0123456789abcdef"], "there is no key `0123456789abcdef`"),
        (["tenants", "create", "x", "--site", "us-east-1"], "sites: `us-east-1` is not a site of policy"),
        (["tenants", "create", "x", "--site", "local", "--min-csap-tier", "high"], "minCsapTier: no allowed site"),
        (["tenants", "create", "Bad_Name"], "--name:"),
    ],
)
def test_mistakes_are_named(args: list[str], message: str, env: dict[str, str], make_key: object) -> None:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code in (1, 2)
    assert message in result.stderr


def test_without_openbao_it_says_how_to_reach_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "list"], env={"VAULT_ADDR": "", "SOVEREIGN_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert "no OpenBao given and no embedded one" in result.stderr
    result = runner.invoke(app, ["keys", "list"], env={"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "x"})
    assert result.exit_code == 1
    assert "OpenBao is unreachable" in result.stderr


def test_least_privilege_policies_are_written_as_hcl(tmp_path: Path) -> None:
    result = runner.invoke(app, ["openbao", "policies", "--out", str(tmp_path)])
    assert result.exit_code == 0
    gateway = (tmp_path / "sovereign-gateway.hcl").read_text()
    assert 'path "transit/encrypt/tenant-data"' in gateway
    assert "decrypt" not in gateway.replace("Never decrypt", "")
    assert 'path "transit/decrypt/tenant-data"' in (tmp_path / "sovereign-operator.hcl").read_text()


def test_audit_verify_checks_transit_signatures_with_vault_addr(tmp_path: Path, env: dict[str, str]) -> None:
    from policies.audit import AuditLog, LocalKey
    from policies.openbao import TransitSigner, connect

    signer = TransitSigner(connect(env["VAULT_ADDR"], env["VAULT_TOKEN"]))
    log = AuditLog(tmp_path / "audit", LocalKey.load_or_create(tmp_path / "audit.key"), signer, checkpoint_every=2)
    for number in range(4):
        log.append("request", n=number)
    args = ["audit", "verify", str(tmp_path / "audit"), "--key", str(tmp_path / "audit.key")]
    without = runner.invoke(app, args, env={"VAULT_ADDR": ""})
    assert without.exit_code == 0
    assert "checkpoints signed by openbao-transit:audit-checkpoints were not verified" in without.stderr
    checked = runner.invoke(app, args, env=env)
    assert checked.exit_code == 0, checked.output
    assert "were not verified" not in checked.stderr
    assert "✓ intact" in checked.stdout


def test_a_stopped_stack_revokes_its_gateway_token(openbao: BaoServer) -> None:
    from policies.openbao import GATEWAY_POLICY, OpenBaoRefused, connect, issue_token
    from serving.config import AccessConfig
    from serving.launcher import AccessSetup

    token = issue_token(openbao.client(), GATEWAY_POLICY)
    AccessStore(connect(openbao.address, token)).tenants()
    AccessSetup(AccessConfig(vault_addr=openbao.address, vault_token=token), server=None, dev_key=None).stop()
    with pytest.raises(OpenBaoRefused, match="permission denied"):
        AccessStore(connect(openbao.address, token)).tenants()
