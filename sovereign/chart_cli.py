"""`sovereign chart`: write the Helm charts' files that come from the residency policy, or check they are current."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sovereign.output import EXIT_USAGE, PolicyFile, console, fail, load_policy_option

DEFAULT_CHARTS_DIR = Path("charts")

chart_app = typer.Typer(
    help="The Helm charts: generate their CRDs, values schema and policy objects from the residency policy.",
    epilog=(
        "After changing the policy or the chart values model:\n\n"
        "  [bold]sovereign chart generate --policy my-policy.yaml[/bold]\n\n"
        "In CI, fail when the committed files are out of date:\n\n"
        "  [bold]sovereign chart generate --check[/bold]"
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
)


@chart_app.callback()
def chart() -> None:
    """Keeps `generate` a subcommand when this module runs alone (`python -m sovereign.chart_cli generate`)."""


@chart_app.command(
    epilog="Example: [bold]sovereign chart generate --policy my-policy.yaml --charts-dir charts[/bold], then "
    "[bold]helm install sovereign charts/sovereign-stack -n sovereign-system[/bold]"
)
def generate(
    policy: PolicyFile = None,
    charts_dir: Annotated[
        Path, typer.Option(help="The folder holding the sovereign-stack and sovereign-stack-crds charts.")
    ] = DEFAULT_CHARTS_DIR,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if a generated file is missing or out of date.")
    ] = False,
) -> None:
    """Write the CRD templates, values.yaml and values.schema.json, and the policy's Kubernetes objects."""
    from operators import charts

    residency = load_policy_option(policy)
    if not (charts_dir / charts.STACK_CHART).is_dir():
        fail(
            f"--charts-dir: {charts_dir} holds no {charts.STACK_CHART} chart",
            "run from the repository root",
            exit_code=EXIT_USAGE,
        )
    try:
        paths = charts.stale_files(residency, charts_dir) if check else charts.generate(residency, charts_dir)
    except (OSError, ValueError) as error:
        fail(f"could not generate the charts from policy `{residency.metadata.name}`: {error}")
    if check:
        if paths:
            listing = ", ".join(str(path) for path in paths)
            fail(f"{len(paths)} generated chart file(s) are out of date: {listing}", "run `make charts` and commit")
        console.print(f"[green]✓[/green] the charts are current for policy [bold]{residency.metadata.name}[/bold]")
        return
    for path in paths:
        console.print(f"  wrote {escape(str(path))}", highlight=False)
    console.print(
        f"[green]✓[/green] {len(paths)} chart files generated from policy [bold]{residency.metadata.name}[/bold]"
    )


if __name__ == "__main__":
    chart_app()
