"""What every command shares: the consoles, the error exit, and loading the policy named by --policy."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from policies import PolicyError, ResidencyPolicy, load_default_policy, load_policy
from policies.state import default_state_dir

console = Console()
errors = Console(stderr=True)

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, hint: str | None = None, exit_code: int = EXIT_FAILED) -> NoReturn:
    errors.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        errors.print(f"[dim]hint:[/dim] {escape(hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)


def log_file() -> Path:
    """Where the commands write the tracebacks they do not show: the stack's log, beside its state."""
    return default_state_dir() / "sovereign.log"


def crash(error: BaseException, what: str) -> NoReturn:
    """Fail on an error nothing else explained: one line that says what failed and where the traceback went."""
    log = log_file()
    detail = f"{type(error).__name__}: {error}".strip().removesuffix(":")
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a", encoding="utf-8") as file:
            file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} sovereign {' '.join(sys.argv[1:])}\n")
            file.write("".join(traceback.format_exception(error)))
    except OSError as unwritable:
        fail(f"{what} failed: {detail}", f"the traceback could not be written to {log} ({unwritable.strerror})")
    fail(f"{what} failed: {detail}", f"the full traceback is in {log}; fix what it names and run the command again")


def run_guarded(app: typer.Typer) -> None:
    """Run the command line so that nothing escapes as a traceback: what no command caught ends in `crash`.

    Usage errors, Ctrl-C and the commands' own exits are click's, handled inside `app()` as always.
    """
    try:
        app()
    except Exception as error:
        command = " ".join(argument for argument in sys.argv[1:3] if not argument.startswith("-"))
        try:
            crash(error, f"sovereign {command}".strip())
        except typer.Exit as done:
            sys.exit(done.exit_code)


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
