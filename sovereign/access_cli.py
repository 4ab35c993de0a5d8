"""`sovereign keys`, `sovereign tenants` and `sovereign openbao`: the operator's side of access control.

They talk to OpenBao directly with the operator's token ($VAULT_ADDR and $VAULT_TOKEN, or AppRole),
or, without $VAULT_ADDR, to the embedded OpenBao of a running `sovereign up`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from policies import DataClass
from policies.access import Tenant, TenantError
from policies.openbao import (
    AccessStore,
    OpenBaoRefused,
    OpenBaoUnavailable,
    operator_client,
    save_tenant,
    write_policy_files,
)
from policies.state import embedded_openbao_dir
from sovereign.output import EXIT_USAGE, PolicyFile, console, fail, load_policy_option

keys_app = typer.Typer(
    help="Create, list and revoke API keys. A key is shown once; OpenBao keeps only its hash.",
    rich_markup_mode="rich",
    no_args_is_help=True,
)
tenants_app = typer.Typer(
    help="Create and list tenants: the organisations sharing the model, with their limits.",
    rich_markup_mode="rich",
    no_args_is_help=True,
)
openbao_app = typer.Typer(help="OpenBao configuration for clusters.", rich_markup_mode="rich", no_args_is_help=True)

VaultAddr = Annotated[
    str | None,
    typer.Option(
        envvar="VAULT_ADDR",
        help="OpenBao or Vault address (token from $VAULT_TOKEN). Unset: the embedded OpenBao of `sovereign up`.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def _store(vault_addr: str | None) -> Iterator[AccessStore]:
    try:
        yield AccessStore(operator_client(vault_addr, embedded_openbao_dir()))
    except OpenBaoUnavailable as error:
        fail(str(error), "is OpenBao running? `sovereign up` starts one; otherwise set VAULT_ADDR")
    except OpenBaoRefused as error:
        fail(str(error), "the token needs the sovereign-operator policy (`sovereign openbao policies`)")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for; it must exist.")],
    role: Annotated[str, typer.Option(help="A role of the policy: model-user, model-admin, auditor, ...")],
    name: Annotated[str, typer.Option(help="What the key is for, shown by `keys list`.")] = "",
    policy: PolicyFile = None,
    vault_addr: VaultAddr = None,
) -> None:
    """Create an API key and print it once, e.g. [bold]sovereign keys create --tenant mois --role model-user[/bold]."""
    import getpass

    residency = load_policy_option(policy)
    if role not in residency.spec.roles:
        fail(
            f"--role: `{role}` is not a role of policy `{residency.metadata.name}`; "
            f"choose one of {', '.join(residency.spec.roles)}",
            exit_code=EXIT_USAGE,
        )
    with _store(vault_addr) as store:
        if store.tenant(tenant) is None:
            fail(f"--tenant: tenant `{tenant}` does not exist", "create it with `sovereign tenants create`")
        record, key = store.create_key(tenant, role, name, created_by=f"cli:{getpass.getuser()}")
    console.print(
        f"Created key [bold]{record.key_id}[/bold] for tenant {escape(tenant)} as {escape(role)}.", highlight=False
    )
    console.print("[yellow]Copy it now: it is not stored and cannot be shown again.[/yellow]")
    print(key)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.", show_default=False)] = None,
    as_json: AsJson = False,
    vault_addr: VaultAddr = None,
) -> None:
    """List keys: id, tenant, role, when created and by whom, and whether revoked. Never the key itself."""
    with _store(vault_addr) as store:
        keys = store.keys(tenant)
    if as_json:
        print(json.dumps([key.public() for key in keys], indent=2))
        return
    table = Table(title="API keys")
    for column in ("id", "tenant", "role", "name", "created", "by", "revoked"):
        # Ids and times are copied into `keys revoke` and reports: never cut them.
        table.add_column(column, no_wrap=column in {"id", "created", "revoked"})
    for key in keys:
        table.add_row(key.key_id, key.tenant, key.role, key.name, key.created, key.created_by, key.revoked or "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `keys list` shows it (not the key).")],
    vault_addr: VaultAddr = None,
) -> None:
    """Revoke a key. Gateways stop accepting it within keyCacheSeconds of the policy (5 s by default)."""
    with _store(vault_addr) as store:
        record = store.revoke_key(key_id)
    console.print(
        f"Revoked key [bold]{record.key_id}[/bold] of tenant {escape(record.tenant)} at {record.revoked}.",
        highlight=False,
    )


@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="Tenant name, e.g. `mois`.")],
    description: Annotated[str, typer.Option(help="Who the tenant is.")] = "",
    model: Annotated[
        list[str] | None, typer.Option(help="A model the tenant may use (repeatable); default all.", show_default=False)
    ] = None,
    data_class: Annotated[
        list[DataClass] | None,
        typer.Option(
            help="A data class the tenant may send (repeatable); default public, internal, personal.",
            show_default=False,
        ),
    ] = None,
    site: Annotated[
        list[str] | None,
        typer.Option(
            help="A site the tenant may be served on (repeatable); default every in-country site.", show_default=False
        ),
    ] = None,
    min_csap_tier: Annotated[
        str | None, typer.Option(help="high, medium or low: the CSAP tier serving sites need.", show_default=False)
    ] = None,
    requests_per_minute: Annotated[int, typer.Option(min=1, help="Request rate limit.")] = 60,
    tokens_per_day: Annotated[int, typer.Option(min=1, help="Prompt plus completion tokens per UTC day.")] = 1_000_000,
    debug_capture: Annotated[bool, typer.Option(help="Keep prompts, encrypted per tenant, for debugging.")] = False,
    policy: PolicyFile = None,
    vault_addr: VaultAddr = None,
) -> None:
    """Create or update a tenant, checked against the policy (its sites must exist and be in-country)."""
    residency = load_policy_option(policy)
    fields = {
        "name": name,
        "description": description,
        "requests_per_minute": requests_per_minute,
        "tokens_per_day": tokens_per_day,
        "debug_capture": debug_capture,
        "min_csap_tier": min_csap_tier,
        "sites": site or None,
    }
    if model:
        fields["models"] = model
    if data_class:
        fields["data_classes"] = data_class
    try:
        tenant = Tenant(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", exit_code=EXIT_USAGE)
    with _store(vault_addr) as store:
        try:
            save_tenant(store, residency, tenant)
        except TenantError as error:
            fail(f"tenant `{name}`: {error}", "`sovereign policy check` lists the sites and their CSAP tiers")
    console.print(f"Saved tenant [bold]{escape(name)}[/bold].", highlight=False)


@tenants_app.command("list")
def tenants_list(as_json: AsJson = False, vault_addr: VaultAddr = None) -> None:
    """List tenants with their models, data classes, sites and limits."""
    with _store(vault_addr) as store:
        tenants = store.tenants()
    if as_json:
        print(json.dumps([t.model_dump(mode="json", by_alias=True) for t in tenants], indent=2))
        return
    table = Table(title="Tenants")
    for column in ("tenant", "models", "data classes", "sites", "CSAP", "req/min", "tokens/day"):
        table.add_column(column)
    for t in tenants:
        table.add_row(
            t.name,
            ", ".join(t.models),
            ", ".join(t.data_classes),
            ", ".join(t.sites or ["all"]),
            t.min_csap_tier or "",
            str(t.requests_per_minute),
            str(t.tokens_per_day),
        )
    console.print(table)


@openbao_app.command("policies")
def openbao_policies_command(
    out: Annotated[Path, typer.Option(help="Directory to write one HCL file per component into.")] = Path("openbao"),
) -> None:
    """Write the least-privilege OpenBao policies (gateway, operator, auditor, registry) as HCL files.

    Load them on a cluster's OpenBao with [bold]bao policy write sovereign-gateway openbao/sovereign-gateway.hcl[/bold];
    docs/access.md shows the Kubernetes auth roles that bind them to service accounts.
    """
    for path in write_policy_files(out):
        console.print(f"wrote {escape(str(path))}", highlight=False)
