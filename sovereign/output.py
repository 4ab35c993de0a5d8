"""What every command shares: the consoles, the error exit, and loading the policy named by --policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from policies import PolicyError, ResidencyPolicy, load_default_policy, load_policy

console = Console()
errors = Console(stderr=True)

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, hint: str | None = None, exit_code: int = EXIT_FAILED) -> NoReturn:
    errors.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        errors.print(f"[dim]hint:[/dim] {escape(hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)


def load_policy_option(path: Path | None) -> ResidencyPolicy:
    try:
        return load_default_policy() if path is None else load_policy(path)
    except PolicyError as error:
        for problem in error.problems:
            errors.print(f"[bold red]error:[/bold red] {escape(str(problem))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None


PolicyFile = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        "-p",
        help="Residency policy YAML; defaults to the shipped Korean policy.",
        show_default=False,
    ),
]
