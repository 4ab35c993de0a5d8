"""`pulumi up` entry point (Pulumi.yaml `main`): the program lives in infra/program.py."""

from infra.program import run

run()
