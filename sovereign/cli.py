"""The `sovereign` command: thin subcommands that delegate to the packages.

Heavy imports (torch, Ray) happen inside the commands that need them, so `--help` and
`policy check` answer instantly.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from policies import (
    DataClass,
    Decision,
    PolicyEvaluator,
    ResidencyPolicy,
    default_policy_path,
)

if TYPE_CHECKING:
    from policies.scan import ScanReport
    from serving.config import ServingConfig
    from serving.launcher import RunningStack

from sovereign.access_cli import keys_app, openbao_app, tenants_app
from sovereign.chart_cli import chart_app
from sovereign.operator_cli import operator_app
from sovereign.output import (
    EXIT_FAILED,
    EXIT_USAGE,
    PolicyFile,
    console,
    crash,
    errors,
    fail,
    load_policy_option,
    run_guarded,
)
from sovereign.plan_cli import EPILOG as PLAN_EPILOG
from sovereign.plan_cli import plan
from sovereign.registry_cli import registry_app

app = typer.Typer(
    name="sovereign",
    help="Sovereign on-prem stack for the A.X K1 model: serve it in-country, enforce the residency policy.",
    epilog="Start here: [bold]sovereign up[/bold], then call the printed OpenAI-compatible endpoint.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(
    help="Validate and query residency policy documents.",
    rich_markup_mode="rich",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")
audit_app = typer.Typer(help="Verify the tamper-evident audit log.", rich_markup_mode="rich", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(openbao_app, name="openbao")
app.add_typer(registry_app, name="registry")
app.add_typer(operator_app, name="operator")
app.add_typer(chart_app, name="chart")
app.command(epilog=PLAN_EPILOG)(plan)


def run() -> None:
    """The `sovereign` console script."""
    run_guarded(app)


def _print_version(requested: bool) -> None:
    if requested:
        print(f"sovereign-stack {version('sovereign-stack')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Sovereign on-prem stack for the A.X K1 model: serve it in-country, enforce the residency policy."""


@app.command(
    epilog=(
        "Examples:\n\n"
        "  [bold]sovereign up[/bold]  serve the tiny built-in A.X K1 model on http://127.0.0.1:8000\n\n"
        "  [bold]sovereign up --model /data/A.X-K1 --port 9000[/bold]  serve a local HF checkpoint\n\n"
        "  [bold]sovereign up --model models:/axk1@production --follow[/bold]  serve the promoted version, and roll "
        "out the next one promoted\n\n"
        "  [bold]sovereign up --policy my-policy.yaml --site kr-seoul-1[/bold]  run as a policy site\n\n"
        "  [bold]sovereign up --upstream kanana=https://llm.sovereign.kr/v1[/bold]  also relay an in-country model"
    )
)
def up(
    model: Annotated[
        str | None,
        typer.Option(
            help="Local HF-format checkpoint directory (config.json, *.safetensors, tokenizer.json), or "
            "models:/NAME@ALIAS for a version promoted in the registry (checked and verified before it loads). "
            "Without it, a tiny A.X K1-architecture model is built locally.",
            show_default=False,
        ),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="Model id clients send; defaults to the directory name.", show_default=False),
    ] = None,
    policy: PolicyFile = None,
    site: Annotated[str, typer.Option(help="Policy site this machine belongs to; it must be in-country.")] = "local",
    host: Annotated[str, typer.Option(help="Address to listen on. Keep loopback unless a gateway fronts it.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the OpenAI-compatible API.")] = 8000,
    dtype: Annotated[str, typer.Option(help="Weight dtype: auto, float32, bfloat16 or float16.")] = "auto",
    think: Annotated[
        bool,
        typer.Option(
            "--think/--no-think",
            help="Default Think Fusion mode when a request does not set enable_thinking.",
        ),
    ] = False,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            help="Also serve an OpenAI-compatible model as NAME=URL (repeatable); egress to it is checked "
            "against the policy before any byte is sent.",
            show_default=False,
        ),
    ] = None,
    vault_addr: Annotated[
        str | None,
        typer.Option(
            envvar="VAULT_ADDR",
            help="Use this OpenBao or Vault (token from $VAULT_TOKEN, or AppRole from $VAULT_ROLE_ID and "
            "$VAULT_SECRET_ID) instead of starting an embedded one.",
            show_default=False,
        ),
    ] = None,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus/--no-prometheus",
            help="Also start a local Prometheus (Debian package `prometheus`) scraping the stack, with the alert "
            "rules of monitoring/rules loaded.",
        ),
    ] = False,
    prometheus_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the local Prometheus, with --prometheus.")
    ] = 9090,
    registry: Annotated[
        bool,
        typer.Option(
            "--registry/--no-registry",
            help="Start the embedded model registry (MLflow on SQLite, UI on --registry-port); the first start "
            "registers the tiny model.",
        ),
    ] = True,
    registry_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the embedded registry and its UI.")
    ] = 5000,
    registry_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_TRACKING_URI",
            help="Use this MLflow registry server instead of starting the embedded one.",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--no-follow",
            help="With --model models:/NAME@ALIAS: roll out each version later promoted to the alias, once it is "
            "verified; the running version serves until the new one is ready.",
        ),
    ] = False,
    follow_seconds: Annotated[float, typer.Option(min=1, help="How often --follow checks the alias.")] = 30.0,
) -> None:
    """Start the whole stack on this machine: OpenBao, the model registry, Ray, Ray Serve and the OpenAI API.

    The residency policy is loaded first and the serving site is checked against it. Without
    --vault-addr an embedded OpenBao keeps tenants, key hashes and transit keys under the state
    directory, and a fresh `model-user` key for the `local` tenant is printed (the previous one is
    revoked). The command stays up until Ctrl-C, then shuts everything down cleanly.
    """
    from pydantic import ValidationError

    started = time.monotonic()
    residency = load_policy_option(policy)
    try:
        from serving.config import ServingConfig
    except ImportError as error:
        fail(
            f"serving is not installed ({error.name} is missing)",
            "install it with: pip install 'sovereign-stack[serving]'",
        )
    from serving.config import Upstream

    try:
        from_registry = model is not None and model.startswith("models:/")
        if from_registry:
            from policies.registry import RegistryError
            from serving.registry import ModelReference

            try:
                ModelReference.parse(str(model))
            except RegistryError as error:
                fail(f"--model: {error}", exit_code=EXIT_USAGE)
        config = ServingConfig(
            model_path=None if from_registry or model is None else Path(model),
            model_uri=model if from_registry else None,
            registry_port=registry_port if registry and registry_uri is None else None,
            registry_uri=registry_uri,
            follow_seconds=follow_seconds if follow else None,
            served_model_name=served_model_name,
            site=site,
            host=host,
            port=port,
            dtype=dtype,
            default_enable_thinking=think,
            upstreams=[Upstream.parse(text) for text in upstream or []],
            vault_addr=vault_addr,
            prometheus_port=prometheus_port if prometheus else None,
        )
    except ValidationError as error:
        first = error.errors()[0]
        # An upstream's own fields (name, url, model) are all given through --upstream.
        if not first["loc"]:  # a rule across options; its message starts with the option's name
            fail("--" + first["msg"].removeprefix("Value error, "))
        location = str(first["loc"][0])
        field = "upstream" if location in Upstream.model_fields else location.removesuffix("_uri").removesuffix("_path")
        fail(f"--{field.replace('_', '-')}: {first['msg']}")
    except ValueError as error:
        fail(f"--upstream: {error}")

    stack = _start(config, residency)
    _print_ready(stack, residency, time.monotonic() - started)
    _wait_for_interrupt()
    with console.status("Shutting down Prometheus, the registry, Ray Serve, Ray and OpenBao"):
        stack.stop()
    console.print("[green]Stopped.[/green]")


def _start(config: ServingConfig, residency: ResidencyPolicy) -> RunningStack:
    from monitoring.prometheus import PrometheusUnavailable
    from policies.openbao import OpenBaoRefused, OpenBaoUnavailable
    from serving.app import ResidencyViolation
    from serving.checkpoint import CheckpointError
    from serving.launcher import DeploymentFailed, PortInUse, start_stack
    from serving.registry import RegistryUnavailable, ServingRefused
    from serving.registry_server import RegistryServerFailed

    last: list[tuple[str, float]] = []

    def step(name: str) -> None:
        now = time.monotonic()
        if last:
            console.print(f"[green]✓[/green] {last[-1][0]} [dim]({now - last[-1][1]:.1f} s)[/dim]")
        last.append((name, now))
        status.update(f"{name}…")

    try:
        with console.status("Starting…") as status:
            stack = start_stack(config, residency, step, _announce)
            step("")
    except CheckpointError as error:
        fail(str(error), "point --model at a local checkpoint directory, or omit it for the tiny model")
    except ResidencyViolation as error:
        fail(str(error), "choose an in-country site with --site; `sovereign policy check` lists them")
    except PortInUse as error:
        fail(str(error))
    except DeploymentFailed as error:
        fail(str(error), "the Ray Serve logs are under /tmp/ray/session_latest/logs/serve/")
    except PrometheusUnavailable as error:
        fail(str(error), "or start without --prometheus")
    except ServingRefused as error:
        fail(str(error), "only versions promoted with `sovereign registry promote` are served")
    except RegistryUnavailable as error:
        fail(str(error), "check --registry-uri, or leave it out to use the embedded registry")
    except RegistryServerFailed as error:
        fail(str(error), "or start without it: --no-registry")
    except OpenBaoUnavailable as error:
        fail(str(error), "check --vault-addr, or leave it out to start an embedded OpenBao")
    except OpenBaoRefused as error:
        fail(str(error), "the token needs the rights to bootstrap mounts, policies and tokens (see docs/access.md)")
    except ValueError as error:
        fail(str(error))
    except Exception as error:
        crash(error, last[-1][0] if last else "starting the stack")
    return stack


def _announce(event: str) -> None:
    """What happens after start-up (rollouts, or why one was not done), with the time."""
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(event)}", highlight=False, soft_wrap=True)


def _print_ready(stack: RunningStack, residency: ResidencyPolicy, elapsed: float) -> None:
    base_url = stack.base_url
    model_id = stack.card.id
    summary = [
        f"[bold green]Serving {escape(model_id)}[/bold green] in {elapsed:.1f} s "
        f"[dim](policy {residency.metadata.name}, site {stack.config.site})[/dim]",
        "",
        f"OpenAI API   {base_url}/v1",
        f"Models       {base_url}/v1/models",
        f"Health       {base_url}/healthz",
        f"OpenBao      {stack.openbao.access.vault_addr}",
        *([f"Registry UI  {stack.registry_uri}"] if stack.registry_uri else []),
        *([f"Prometheus   {stack.prometheus.url}"] if stack.prometheus else []),
        f"Audit log    {escape(str(stack.audit.directory))}",
    ]
    console.print(Panel("\n".join(summary), title="sovereign-stack", expand=False), highlight=False)
    body = (
        f'{{"model": "{model_id}", "messages": [{{"role": "user", "content": "안녕하세요!"}}], '
        f'"max_tokens": 64, "chat_template_kwargs": {{"enable_thinking": true}}}}'
    )
    # Plain prints: commands meant for copying must not be cropped or wrapped by rich.
    key = stack.openbao.dev_key or "$OPENAI_API_KEY"
    if stack.openbao.dev_key:
        print("API key of tenant `local` (model-user), shown once; the next start replaces it:")
        print(f"  {key}")
    print("Try it:")
    print(f"  curl -s {base_url}/v1/chat/completions -H 'Content-Type: application/json' \\")
    print(f"    -H 'Authorization: Bearer {key}' \\")
    print(f"    -d '{body}'")
    print("For the openai client:")
    print(f"  export OPENAI_BASE_URL={base_url}/v1 OPENAI_API_KEY={key}")
    console.print("[dim]Ctrl-C stops the stack.[/dim]")


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


@app.command(
    epilog=(
        "Examples:\n\n"
        "  [bold]sovereign scan corpus/ --report scan.json[/bold]  scan a directory, keep the report for lineage\n\n"
        "  [bold]sovereign scan data.jsonl --redact-to clean/[/bold]  also write a redacted copy\n\n"
        "  [bold]sovereign scan data.jsonl --json[/bold]  one JSON object per finding, for other tools"
    )
)
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Text, Markdown, JSON(L), CSV or TSV files, or directories.")],
    policy: PolicyFile = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Write a report here; a .json or .md name picks the format.", show_default=False),
    ] = None,
    redact_to: Annotated[
        Path | None,
        typer.Option(help="Write a copy of every file with identifiers replaced by [TYPE].", show_default=False),
    ] = None,
    json_findings: Annotated[
        bool,
        typer.Option("--json", help='Print one {"type", "line", "start", "end"} object per finding (one file).'),
    ] = False,
) -> None:
    """Scan training or distillation data for identifiers before it is used.

    Lines are streamed, so files of any size work. Exit status 1 means the policy forbids training
    on a data class that was found (for example resident registration numbers); 0 means it may be used.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from policies.scan import ScanError, atomic_text_file, input_files
    from policies.scan import scan as scan_paths

    evaluator = PolicyEvaluator(load_policy_option(policy))
    if report is not None and report.suffix not in {".json", ".md"}:
        fail(f"--report `{report}` must end in .json or .md", exit_code=EXIT_USAGE)
    try:
        files = input_files(paths)
    except ScanError as error:
        fail(str(error), exit_code=EXIT_USAGE)
    if json_findings and (len(files) != 1 or paths[0].is_dir()):
        fail("--json takes exactly one file, so that lines and offsets are unambiguous", exit_code=EXIT_USAGE)
    total = sum(path.stat().st_size for path, _ in files)
    emit = (lambda found: print(json.dumps(found.as_json()), flush=True)) if json_findings else (lambda _: None)
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=errors, transient=True, disable=not errors.is_terminal) as progress:
            task = progress.add_task(f"Scanning {len(files)} file(s)", total=total)
            result = scan_paths(paths, evaluator, redact_to, emit, lambda read: progress.advance(task, read))
    except ScanError as error:
        fail(str(error))
    if report is not None:
        with atomic_text_file(report) as out:
            out.write(
                json.dumps(result.as_json(), indent=2, ensure_ascii=False)
                if report.suffix == ".json"
                else result.as_markdown()
            )
    _print_scan_summary(result, Console(stderr=True) if json_findings else console)
    if not result.training_allowed:
        raise typer.Exit(EXIT_FAILED)


def _print_scan_summary(result: ScanReport, out: Console) -> None:
    table = Table(
        "identifier", "count", title=f"{sum(f.lines for f in result.files)} lines in {len(result.files)} file(s)"
    )
    for name, count in result.counts_by_type.items():
        table.add_row(name, str(count))
    out.print(table)
    forbidden = [(data_class, decision) for data_class, decision in result.training if not decision.allowed]
    if forbidden:
        listed = "; ".join(f"{data_class} ({decision.rule})" for data_class, decision in forbidden)
        out.print(f"[bold red]✗ training forbidden[/bold red]: found {escape(listed)}", highlight=False, soft_wrap=True)
    else:
        out.print("[bold green]✓ training allowed[/bold green] by policy " + escape(result.policy), highlight=False)


@audit_app.command("verify")
def audit_verify(
    path: Annotated[Path, typer.Argument(help="An audit log directory, or one audit-NNNNNN.jsonl segment.")],
    key: Annotated[
        Path | None,
        typer.Option(
            help="The log's key file: also checks every record's MAC and checkpoint signatures.", show_default=False
        ),
    ] = None,
    vault_addr: Annotated[
        str | None,
        typer.Option(
            envvar="VAULT_ADDR",
            help="OpenBao that signed the checkpoints (token from $VAULT_TOKEN): checks transit signatures too.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Verify the audit log's hash chain and name the first record that was edited, removed, added or moved.

    Exit status 0 means intact, 1 means tampered with. A last line cut short by a crash is reported,
    not counted as tampering. Without --key only the chain is checked, so an edit to the very last
    record cannot be seen.
    """
    from policies.audit import LocalKey, verify

    if key is not None and not key.is_file():
        fail(f"key file `{key}` does not exist", exit_code=EXIT_USAGE)
    from policies.openbao import OpenBaoRefused, OpenBaoUnavailable, TransitSigner, connect

    signer = TransitSigner(connect(vault_addr)) if vault_addr else None
    try:
        result = verify(path, LocalKey.load(key) if key else None, signer)
    except FileNotFoundError as error:
        fail(str(error), exit_code=EXIT_USAGE)
    except (OpenBaoUnavailable, OpenBaoRefused) as error:
        fail(str(error), "the token needs `update` on transit/verify/audit-checkpoints (sovereign-auditor policy)")
    if result.truncated_tail:
        errors.print(f"[yellow]note:[/yellow] {escape(result.truncated_tail)}", highlight=False, soft_wrap=True)
    if not result.intact:
        fail(f"tampering detected at {result.problem}")
    if result.unverified_signers:
        errors.print(
            f"[yellow]note:[/yellow] checkpoints signed by {', '.join(result.unverified_signers)} were not "
            "verified; pass --vault-addr (and VAULT_TOKEN) to check them",
            highlight=False,
            soft_wrap=True,
        )
    start = "genesis" if result.from_genesis else f"record {result.first_seq} (earlier segments removed)"
    checked = "chain, MACs and signatures" if key else "chain only; pass --key to check MACs and signatures"
    console.print(
        f"[bold green]✓ intact[/bold green]: {result.records} records in {result.segments} segment(s) from {start}, "
        f"{result.checkpoints} checkpoint(s); {checked}",
        highlight=False,
        soft_wrap=True,
    )


@policy_app.command("check")
def policy_check(
    file: Annotated[
        Path | None,
        typer.Argument(help="Policy YAML to validate; defaults to the shipped Korean policy.", show_default=False),
    ] = None,
) -> None:
    """Validate a residency policy document and print a summary.

    Every problem is reported with its file, line and field. Exit status 0 means valid, 1 invalid.
    """
    residency = load_policy_option(file)
    spec = residency.spec
    evaluator = PolicyEvaluator(residency)
    console.print(
        f"[bold green]✓ valid[/bold green] {escape(str(file or default_policy_path()))}: policy "
        f"[bold]{residency.metadata.name}"
        f"[/bold], jurisdiction {spec.jurisdiction.code} ({spec.jurisdiction.name})",
        highlight=False,
        soft_wrap=True,
    )
    sites = Table(title="Sites")
    for column in ("site", f"in {spec.jurisdiction.code}", "region", "zones", "CSAP", "CIDRs"):
        sites.add_column(column, no_wrap=column in {"site", "CIDRs"})
    for site in spec.sites:
        in_country = evaluator.site_in_country(site.name).allowed
        sites.add_row(
            site.name,
            "yes" if in_country else f"[red]no ({site.country})[/red]",
            site.region,
            ", ".join(zone.name for zone in site.zones),
            site.csap_tier or "-",
            ", ".join(str(network) for network in site.cidrs),
        )
    classes = Table("data class", "action", "in-country only", "training", "identifiers", title="Data classes")
    for data_class in DataClass:
        rule = spec.data_classes.rule_for(data_class)
        found_as = ", ".join(pii.value for pii, mapped in spec.identifiers.items() if mapped is data_class)
        classes.add_row(
            data_class.value, rule.action.value, _yes(rule.in_country_only), _yes(rule.training_allowed), found_as
        )
    egress = Table("egress rule", "country", "destinations", "ports", title="Egress allowlist (default: deny)")
    for rule in spec.egress.allow:
        destinations = [*map(str, rule.cidrs), *rule.hosts]
        egress.add_row(rule.name, rule.country, ", ".join(destinations), ", ".join(map(str, rule.ports)) or "any")
    roles = Table("role", "permissions", title="Roles")
    for name, role in spec.roles.items():
        roles.add_row(name, ", ".join(str(permission) for permission in role.permissions))
    for table in (sites, classes, egress, roles):
        console.print(table)
    console.print(
        f"Image registries: {', '.join(spec.image_registries)}; audit kept {spec.audit.retention_days} "
        f"days; digest sha256:{residency.digest()[:16]}…",
        highlight=False,
    )


@policy_app.command(
    "decide",
    epilog=(
        "Examples:\n\n"
        "  [bold]sovereign policy decide --role auditor --action registry.promote[/bold]\n\n"
        "  [bold]sovereign policy decide --data-class personal --endpoint https://api.example.com[/bold]\n\n"
        "  [bold]sovereign policy decide --site kr-seoul-1[/bold]"
    ),
)
def policy_decide(
    policy: PolicyFile = None,
    role: Annotated[str | None, typer.Option(help="Role to ask about, with --action.", show_default=False)] = None,
    action: Annotated[
        str | None,
        typer.Option(help="Action such as inference, deploy, registry.promote.", show_default=False),
    ] = None,
    data_class: Annotated[
        DataClass | None, typer.Option(help="Data class to send, with --endpoint.", show_default=False)
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="URL, host, host:port or IP the data would go to.", show_default=False)
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site to check for residency.", show_default=False)] = None,
) -> None:
    """Ask the policy one question and print the decision with the rule that made it.

    Exit status 0 when allowed (possibly after redaction), 1 when denied: usable in scripts.
    """
    evaluator = PolicyEvaluator(load_policy_option(policy))
    try:
        if role is not None and action is not None:
            decision = evaluator.may(role, action)
        elif data_class is not None and endpoint is not None:
            decision = evaluator.may_send(data_class, endpoint)
        elif site is not None:
            decision = evaluator.site_in_country(site)
        else:
            fail("give --role with --action, --data-class with --endpoint, or --site", exit_code=EXIT_USAGE)
    except ValueError as error:
        fail(str(error))
    _print_decision(decision)
    if not decision.allowed:
        raise typer.Exit(EXIT_FAILED)


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy document's JSON Schema, generated from the models, for editors and validators."""
    print(json.dumps(ResidencyPolicy.model_json_schema(by_alias=True), indent=2, ensure_ascii=False))


@policy_app.command("default")
def policy_default() -> None:
    """Print the shipped Korean policy, to copy and adapt: sovereign policy default > my-policy.yaml"""
    print(default_policy_path().read_text(encoding="utf-8"), end="")


def _print_decision(decision: Decision) -> None:
    colour = {"allow": "green", "redact": "yellow", "deny": "red"}[decision.effect.value]
    console.print(
        f"[bold {colour}]{decision.effect.value}[/bold {colour}]  {escape(decision.reason)}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"[dim]rule:[/dim] {escape(decision.rule)}", highlight=False, soft_wrap=True)


def _yes(value: bool) -> str:
    return "yes" if value else "no"
