"""`sovereign registry`: register checkpoints, promote them through the policy gates, show their state.

The caller is named by an API key ($SOVEREIGN_API_KEY), checked against OpenBao like at the gateway:
registering needs `registry.register`, approving needs `registry.promote` and another principal
than the registrant. The registry is $MLFLOW_TRACKING_URI, or the embedded one of `sovereign up`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from policies import ResidencyPolicy
from policies.access import Roles
from policies.model import Permission
from policies.openbao import (
    APPROVAL_KEY,
    KeyRejected,
    OpenBaoRefused,
    OpenBaoUnavailable,
    TransitSigner,
    authenticate_key,
    operator_client,
)
from policies.registry import Dataset, RegistryError, dataset_from_report, parse_dataset_option
from policies.state import (
    METRICS_DIR_ENV,
    default_state_dir,
    embedded_openbao_dir,
    embedded_registry_dir,
    running_stack_metrics_dir,
)
from sovereign.access_cli import VaultAddr
from sovereign.output import EXIT_USAGE, PolicyFile, console, fail, load_policy_option

if TYPE_CHECKING:
    from serving.registry import Registrant, Registry

registry_app = typer.Typer(
    help="The model registry (MLflow): register checkpoints, promote them through the policy gates.",
    epilog=(
        "Typical flow:\n\n"
        "  [bold]sovereign registry register ./axk1-student --name axk1-student --dataset corpus=scan.json[/bold]\n\n"
        "  [bold]sovereign registry promote axk1-student 1 --ticket SEC-42[/bold]  (a second person approves)\n\n"
        "  [bold]sovereign up --model models:/axk1-student@production[/bold]"
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
)

RegistryUri = Annotated[
    str | None,
    typer.Option(
        envvar="MLFLOW_TRACKING_URI",
        help="The MLflow registry server. Unset: the embedded registry of a running `sovereign up`.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str,
    typer.Option(
        envvar="SOVEREIGN_API_KEY",
        help="Your API key (sk-sov-...): who registers or approves. `sovereign keys create --role model-admin`.",
        show_default=False,
    ),
]


def registry_uri_or_embedded(registry_uri: str | None) -> str:
    if registry_uri:
        return registry_uri
    from serving.registry_server import running_address

    address = running_address(embedded_registry_dir())
    if address is None:
        fail(
            "no registry to talk to: --registry-uri (or $MLFLOW_TRACKING_URI) is unset and no `sovereign up` is "
            "running an embedded one",
            "start `sovereign up`, or point --registry-uri at your MLflow server",
            exit_code=EXIT_USAGE,
        )
    return address


@contextmanager
def _registry(
    registry_uri: str | None, vault_addr: str | None, residency: ResidencyPolicy, api_key: str | None
) -> Iterator[tuple[Registry, Registrant | None]]:
    """The registry, with approvals signed in OpenBao, and the caller the API key names (when one is given)."""
    try:
        from mlflow.exceptions import MlflowException

        from serving.registry import Registrant, Registry, RegistryUnavailable, ServingRefused
    except ImportError as error:
        fail(
            f"the registry client is not installed ({error.name} is missing)", "pip install 'sovereign-stack[serving]'"
        )
    uri = registry_uri_or_embedded(registry_uri)
    try:
        client = operator_client(vault_addr, embedded_openbao_dir())
        caller = None
        if api_key is not None:
            from policies.openbao import AccessStore

            principal, record = authenticate_key(AccessStore(client), Roles(residency), api_key)
            caller = Registrant(principal, record.name)
        yield Registry(uri, residency, TransitSigner(client, key=APPROVAL_KEY)), caller
    except KeyRejected as error:
        fail(f"--api-key: {error}", "`sovereign keys list` shows your keys; `sovereign keys create` makes one")
    except OpenBaoUnavailable as error:
        fail(str(error), "is OpenBao running? `sovereign up` starts one; otherwise set VAULT_ADDR")
    except OpenBaoRefused as error:
        fail(str(error), "the token needs the sovereign-registry policy (`sovereign openbao policies`)")
    except RegistryUnavailable as error:
        fail(str(error), "is the registry running? `sovereign up` starts one; otherwise set --registry-uri")
    except (RegistryError, ServingRefused) as error:
        fail(str(error))
    except MlflowException as error:
        fail(f"the registry refused: {error.message}", "check the name and version; `sovereign registry --help`")


def _require(caller: Registrant | None, permission: Permission, residency: ResidencyPolicy) -> Registrant:
    assert caller is not None
    if not caller.principal.may(permission):
        fail(
            f"--api-key: key of `{caller.id}` has role `{caller.principal.role}`, which may not {permission.value}",
            f"roles that may: {', '.join(n for n, r in residency.spec.roles.items() if permission in r.permissions)}",
        )
    return caller


@contextmanager
def _transfer(description: str) -> Iterator[dict[str, Callable[[int], None]]]:
    """A progress bar in bytes, and the `on_start`/`on_progress` callbacks the registry reports to."""
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)
        yield {
            "on_start": lambda total: progress.update(task, total=total),
            "on_progress": lambda size: progress.advance(task, size),
        }


def _share_metrics_with_running_stack() -> None:
    """Count promotions into a running embedded stack's /metrics (set before the metric catalogue loads)."""
    if METRICS_DIR_ENV not in os.environ and (directory := running_stack_metrics_dir()) is not None:
        os.environ[METRICS_DIR_ENV] = str(directory)


@registry_app.command(
    epilog=(
        "Examples:\n\n"
        "  [bold]sovereign registry register ./student --name axk1-student --dataset ko-news=news.scan.json "
        "--base models:/axk1@production[/bold]\n\n"
        "  [bold]sovereign registry register ./axk1 --name axk1 --no-training-data --license apache-2.0[/bold]"
    )
)
def register(
    path: Annotated[Path, typer.Argument(help="Local HF-format checkpoint directory (config.json, *.safetensors).")],
    name: Annotated[str, typer.Option(help="Registered model name, e.g. axk1 or axk1-student-ko.")],
    api_key: ApiKey,
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            help="A training or distillation dataset as NAME=SCAN_REPORT.json (from `sovereign scan --report`), "
            "or NAME when it was not scanned (repeatable).",
            show_default=False,
        ),
    ] = None,
    no_training_data: Annotated[
        bool, typer.Option(help="Declare that no dataset trained it (e.g. randomly initialised).")
    ] = False,
    base: Annotated[
        str | None,
        typer.Option(
            help="The base or teacher model: models:/NAME@ALIAS or NAME/VERSION, recorded as lineage.",
            show_default=False,
        ),
    ] = None,
    license_name: Annotated[str, typer.Option("--license", help="The weights' license.")] = "",
    description: Annotated[str, typer.Option(help="Shown on the version's page in the registry UI.")] = "",
    policy: PolicyFile = None,
    registry_uri: RegistryUri = None,
    vault_addr: VaultAddr = None,
) -> None:
    """Upload a checkpoint and create a model version with residency, checksum and lineage tags.

    Refused before anything is written when the registry's artifact store is outside the
    jurisdiction or the directory is not a loadable checkpoint. Every file's SHA-256 goes into a
    manifest whose digest is signed in OpenBao together with who registered it.
    """
    from serving.checkpoint import CheckpointError

    residency = load_policy_option(policy)
    if dataset and no_training_data:
        fail("--dataset and --no-training-data contradict each other; give one", exit_code=EXIT_USAGE)
    try:
        parsed = [parse_dataset_option(text) for text in dataset or []]
        reports = {dataset_name: report for dataset_name, report in parsed if report is not None}
        datasets = [
            dataset_from_report(dataset_name, report) if report else Dataset(dataset_name)
            for dataset_name, report in parsed
        ]
    except RegistryError as error:
        fail(str(error), exit_code=EXIT_USAGE)
    declared = datasets if (datasets or no_training_data) else None
    with _registry(registry_uri, vault_addr, residency, api_key) as (registry, caller):
        registrant = _require(caller, Permission.REGISTRY_REGISTER, residency)
        with _transfer(f"Uploading {path.name}") as callbacks:
            try:
                version = registry.register(
                    path,
                    name,
                    registrant,
                    declared,
                    reports=reports,
                    base=base,
                    license_name=license_name,
                    description=description,
                    **callbacks,
                )
            except CheckpointError as error:
                fail(str(error), "register a directory that `sovereign up --model PATH` could serve")
    console.print(
        f"Registered [bold]{escape(name)}[/bold] version [bold]{version}[/bold] as {escape(registrant.id)}.",
        highlight=False,
    )
    if declared is None:
        console.print("[yellow]No training data declared: promotion will refuse it until lineage is known.[/yellow]")
    console.print(f"Registry UI: {registry.uri}/#/models/{name}/versions/{version}", highlight=False)
    console.print(
        f"Next, a second person: sovereign registry promote {name} {version} --alias production --ticket TICKET",
        highlight=False,
        soft_wrap=True,
    )


@registry_app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to promote, as `registry status` shows it.")],
    api_key: ApiKey,
    alias: Annotated[str, typer.Option(help="The alias to point at the version; serving uses models:/NAME@ALIAS.")] = (
        "production"
    ),
    ticket: Annotated[str, typer.Option(help="The change or approval ticket, recorded with the approval.")] = "",
    dataset_exception: Annotated[
        list[str] | None,
        typer.Option(
            help="Accept a dataset without a clean scan (repeatable); recorded with your name and the ticket.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gate results as JSON.")] = False,
    policy: PolicyFile = None,
    registry_uri: RegistryUri = None,
    vault_addr: VaultAddr = None,
) -> None:
    """Approve a version and point an alias at it, if every gate passes. Exit status 1 lists each failed gate.

    Gates: artifacts in an in-country store; every stored file matches the manifest; every training
    dataset scanned clean or excepted; the approver may promote and did not register it (four eyes).
    Each attempt is recorded: gate results on the version, an audit record, and a metric.
    """
    if not ticket.strip():
        fail("--ticket is required: name the change or approval ticket (e.g. SEC-123)", exit_code=EXIT_USAGE)
    _share_metrics_with_running_stack()
    from policies.audit import open_log
    from serving.registry import PromotionRefused

    residency = load_policy_option(policy)
    with _registry(registry_uri, vault_addr, residency, api_key) as (registry, approver):
        assert approver is not None
        audit = open_log(default_state_dir(), registry.signer)
        with _transfer(f"Verifying {name} v{version}") as callbacks:
            try:
                results = registry.promote(
                    name, version, alias, approver, ticket.strip(), audit, exceptions=dataset_exception, **callbacks
                )
                refused = False
            except PromotionRefused as error:
                results, refused = error.results, True
    if as_json:
        print(json.dumps({"promoted": not refused, "gates": [r.as_json() for r in results]}, indent=2))
    else:
        table = Table(title=f"Gates for {name} version {version} → @{alias}")
        for column in ("gate", "result", "reason"):
            table.add_column(column, overflow="fold")
        for result in results:
            table.add_row(
                result.gate.value, "[green]pass[/green]" if result.passed else "[red]FAIL[/red]", result.reason
            )
        console.print(table)
    if refused:
        fail(f"promotion of {name} version {version} refused: {sum(not r.passed for r in results)} gate(s) failed")
    console.print(f"[green]Promoted[/green] {escape(name)} version {version} to @{escape(alias)}.", highlight=False)


@registry_app.command()
def verify(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to check, as `registry status` shows it.")],
    policy: PolicyFile = None,
    registry_uri: RegistryUri = None,
    vault_addr: VaultAddr = None,
) -> None:
    """Check that a version is intact: its signed registration, and every stored file against its manifest.

    Streams every file back from the artifact store and hashes it; nothing is written. Exit status 1
    names each problem. Use it to re-check a serving version, e.g. from a nightly job.
    """
    residency = load_policy_option(policy)
    with (
        _registry(registry_uri, vault_addr, residency, None) as (registry, _),
        _transfer(f"Verifying {name} v{version}") as callbacks,
    ):
        problems = registry.verify(name, version, **callbacks)
    if problems:
        fail(f"{name} version {version} is not intact: " + "; ".join(problems))
    console.print(f"[green]Intact:[/green] {escape(name)} version {version} matches its signed manifest.")


@registry_app.command()
def checkout(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str, typer.Option(help="The alias to fetch; only a version approved for it is fetched.")] = (
        "production"
    ),
    expect_version: Annotated[
        str | None,
        typer.Option(help="Refuse unless the alias points at this version (the one the operator rolled out)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(envvar="SOVEREIGN_CACHE_DIR", help="Where the files go: CACHE_DIR/registry/NAME/VERSION."),
    ] = None,
    policy: PolicyFile = None,
    registry_uri: RegistryUri = None,
    vault_addr: VaultAddr = None,
) -> None:
    """Fetch the version an alias points at, checking its signed approval and every file's SHA-256.

    This is the serving pods' init step on Kubernetes: `ModelDeployment` workers run it before Ray
    starts. A local copy that is already complete is checked and kept.
    """
    from serving.registry import ModelReference
    from serving.tiny_model import default_cache_dir

    residency = load_policy_option(policy)
    reference = ModelReference(name, alias)
    with (
        _registry(registry_uri, vault_addr, residency, None) as (registry, _),
        _transfer(f"Fetching {reference}") as callbacks,
    ):
        fetched = registry.checkout(
            reference, cache_dir or default_cache_dir(), expect_version=expect_version, **callbacks
        )
    console.print(f"[green]Verified:[/green] {escape(str(reference))} version {fetched.version} in {fetched.path}")


@registry_app.command()
def status(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    policy: PolicyFile = None,
    registry_uri: RegistryUri = None,
    vault_addr: VaultAddr = None,
) -> None:
    """Show every version: aliases, residency, checksums, lineage, who registered and approved it, gate results."""
    from serving.registry import Tag

    residency = load_policy_option(policy)
    with _registry(registry_uri, vault_addr, residency, None) as (registry, _):
        versions = registry.status(name)
    if as_json:
        print(json.dumps([vars(v) for v in versions], indent=2))
        return
    table = Table(title=f"{name} in {registry.uri}")
    for column in ("version", "aliases", "site", "datasets", "registered by", "approved by", "gates"):
        table.add_column(column, overflow="fold")
    for v in versions:
        failed = [str(g.get("gate")) for g in v.gates if not g.get("passed")]
        gates = (
            "not checked"
            if not v.gates
            else ("[red]failed: " + ", ".join(failed) + "[/red]" if failed else "[green]all passed[/green]")
        )
        table.add_row(
            v.version,
            ", ".join(f"@{alias}" for alias in v.aliases),
            v.tags.get(Tag.SITE, "?"),
            _datasets_summary(v.tags.get(Tag.DATASETS)),
            _who(v.tags.get(Tag.REGISTERED_BY, "unknown")),
            _who(v.tags.get(Tag.APPROVED_BY, "")),
            gates,
        )
    console.print(table)
    console.print("[dim]--json shows every tag and each gate's reason.[/dim]")


def _who(tagged: str) -> str:
    """`acme/key:0123… (alice)` as `alice (acme)`: the name people recognise, with the tenant."""
    identity, _, label = tagged.partition(" (")
    tenant = identity.split("/")[0]
    return f"{label.rstrip(')')} ({tenant})" if label else identity


def _datasets_summary(raw: str | None) -> str:
    if raw is None or raw == "undeclared":
        return "undeclared"
    names = [item.get("name", "?") for item in json.loads(raw)]
    return ", ".join(names) or "none"
