"""`sovereign plan`: how a model spreads over a GPU inventory, and how many sequences of a context it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from operators.capacity import (
    BUILTIN_MODELS,
    CapacityPlan,
    GpuInventory,
    Layout,
    load_model_shape,
    plan_capacity,
    planned_manifests,
)
from operators.planning import GIB, PlanError
from operators.resources import WeightDtype
from serving.model_size import human_count
from sovereign.output import EXIT_USAGE, PolicyFile, console, errors, fail, load_policy_option

EPILOG = (
    "Examples:\n\n"
    "  [bold]sovereign plan --model axk1-519b --gpus 16xH100-80GB --dtype bf16 --context 131072[/bold]  "
    "A.X K1 at its full context on two nodes of H100s\n\n"
    "  [bold]sovereign plan --gpus 8xH100-80GB[/bold]  exit 1: bf16 does not fit, and it says what would "
    "(16 GPUs, or fp8)\n\n"
    "  [bold]sovereign plan --model /models/A.X-K1 --gpus 8xH200-141GB --context 32768 --output plan/[/bold]  "
    "a checkpoint's config.json; writes plan/serve-config.yaml and plan/rayservice.yaml\n\n"
    "  [bold]sovereign plan --gpus 8xH100-80GB --dtype fp8 --json[/bold]  the plan as JSON\n\n"
    "Exit status: 0 it fits, 1 it does not (the message says what would), 2 unreadable input."
)

SERVE_CONFIG_FILE = "serve-config.yaml"
RAY_SERVICE_FILE = "rayservice.yaml"


class _NoAliases(yaml.SafeDumper):
    """Writes shared dicts (the labels) out in full: anchors would puzzle readers of a manifest."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _gib(count: int) -> str:
    return f"{count / GIB:.2f} GiB"


def _kb(count: int) -> str:
    return f"{count / 1000:,.1f} KB"


def _show(plan: CapacityPlan) -> None:
    layout = plan.layout
    summary = Table(title=f"{plan.model} on {plan.inventory}, {plan.dtype.value}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    rows = {
        "parameters": f"{human_count(plan.parameters_total)} total, {human_count(plan.parameters_active)} "
        "active per token",
        "weights per GPU": f"{_gib(layout.weight_bytes_per_gpu)} of {_gib(plan.usable_bytes_per_gpu)} usable",
        "KV cache per token": f"{_kb(plan.kv_bytes_per_token)} (bf16, all layers)",
        f"KV cache, {plan.context:,} tokens": f"{plan.kv_bytes_per_sequence / 1e9:.2f} GB",
        "KV room per GPU": _gib(layout.kv_room_per_gpu),
        "max concurrent sequences": f"{layout.max_concurrent_sequences:,} of {plan.context:,} tokens",
        "recommended": f"{layout.parallelism.describe()}, {plan.nodes} node(s) × {plan.gpus_per_node} GPUs",
    }
    for name, value in rows.items():
        summary.add_row(name, value)
    console.print(summary)
    candidates = Table(title="Layouts of these GPUs, best first")
    for header in ("layout", "weights/GPU", "KV/token/GPU", "KV room/GPU", "sequences"):
        candidates.add_column(header, justify="left" if header == "layout" else "right", no_wrap=header == "layout")
    for candidate in [layout, *plan.alternatives]:
        candidates.add_row(*_candidate_row(candidate), style="bold green" if candidate is layout else None)
    console.print(candidates)


def _candidate_row(layout: Layout) -> tuple[str, ...]:
    room = _gib(layout.kv_room_per_gpu) if layout.kv_room_per_gpu > 0 else "none"
    return (
        layout.parallelism.describe(),
        _gib(layout.weight_bytes_per_gpu),
        _kb(layout.kv_bytes_per_token_per_gpu),
        room,
        f"{layout.max_concurrent_sequences:,}",
    )


def _write(output: Path, documents: dict[str, dict[str, object]]) -> list[Path]:
    if output.exists() and not output.is_dir():
        fail(f"--output: {output} is a file, not a folder", "name a folder, or one to create", exit_code=EXIT_USAGE)
    written = []
    try:
        output.mkdir(parents=True, exist_ok=True)
        for name, document in documents.items():
            path = output / name
            path.write_text(yaml.dump(document, Dumper=_NoAliases, sort_keys=False), encoding="utf-8")
            written.append(path)
    except OSError as error:
        fail(f"--output: cannot write {error.filename or output}: {error.strerror}", exit_code=EXIT_USAGE)
    return written


def plan(
    gpus: Annotated[
        str,
        typer.Option(
            help="The GPU inventory, COUNTxTYPE with TYPE as MODEL-<memory>GB: 16xH100-80GB, 8xH200-141GB.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            help=f"A built-in model ({', '.join(BUILTIN_MODELS)}), a config.json, or a Hugging Face checkpoint "
            "directory (only its config.json is read)."
        ),
    ] = "axk1-519b",
    dtype: Annotated[
        WeightDtype, typer.Option(help="Weight dtype: bf16 (2 bytes a parameter) or fp8 (1). The KV cache is bf16.")
    ] = WeightDtype.BF16,
    context: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Tokens per sequence (prompt + output) to plan for, vLLM's max_model_len. Default: the model's "
            "max_position_embeddings.",
            show_default=False,
        ),
    ] = None,
    gpus_per_node: Annotated[
        int, typer.Option(min=1, help="GPUs in one node: tensor parallelism stays inside a node.")
    ] = 8,
    policy: PolicyFile = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help=f"Write {SERVE_CONFIG_FILE} (Ray Serve LLM) and {RAY_SERVICE_FILE} (KubeRay) into this folder, "
            "created if missing: what the operator writes for a ModelDeployment with this parallelism.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="The registered model the manifests serve (models:/NAME@production). Default: the model's name.",
            show_default=False,
        ),
    ] = None,
    model_version: Annotated[
        str, typer.Option(help="The registry version the manifests' pods fetch and verify.")
    ] = "1",
    namespace: Annotated[str, typer.Option(help="The manifests' Kubernetes namespace.")] = "models",
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON instead of tables.")] = False,
) -> None:
    """Plan how a model shards over GPUs: weights and KV cache per GPU, concurrent sequences, TP/PP/DP/EP.

    Every layout of the GPUs is weighed: tensor × pipeline parallelism (experts over the tensor ranks)
    and data-parallel attention with expert parallelism. Usable memory is 90% of each GPU (vLLM's
    gpu_memory_utilization); what the weights leave is the KV cache's room. Recommended is the layout
    that holds a sequence of --context tokens with the fewest pipeline stages (tensor parallel inside a
    node, stages across nodes); the others follow with their counts. See docs/kubernetes.md,
    "Planning capacity".
    """
    try:
        shape = load_model_shape(model)
        inventory = GpuInventory.parse(gpus)
        context = context or shape.max_position_embeddings
        shape.check_context(context)
    except PlanError as error:
        fail(str(error), exit_code=EXIT_USAGE)
    residency = load_policy_option(policy)
    try:
        capacity = plan_capacity(shape, inventory, dtype, context, gpus_per_node)
    except PlanError as error:
        fail(f"{shape.name} does not fit on {inventory}: {error}")
    written: list[Path] = []
    if output is not None:
        try:
            serve_config, ray_service = planned_manifests(
                capacity, name or shape.name, residency, version=model_version, namespace=namespace
            )
        except PlanError as error:
            fail(f"cannot write the manifests: {error}", "pass --name with the registered model's name", EXIT_USAGE)
        written = _write(output, {SERVE_CONFIG_FILE: serve_config, RAY_SERVICE_FILE: ray_service})
    if as_json:
        print(json.dumps(capacity.model_dump(mode="json"), indent=2))
    else:
        _show(capacity)
    for path in written:
        (errors if as_json else console).print(f"  wrote {escape(str(path))}", highlight=False)
