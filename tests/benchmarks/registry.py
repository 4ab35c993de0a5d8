"""Registering and verifying a 1 GB checkpoint, against plain SHA-256 of the same files.

    python -m tests.benchmarks.registry              # 1 GB, as recorded in docs/BENCHMARKS.md
    python -m tests.benchmarks.registry --gigabytes 4

It builds a real sharded A.X K1-architecture checkpoint of the requested size (bf16, 256 MB
shards with an index), starts an MLflow server on SQLite and an OpenBao dev server on loopback,
then times, in one run and on warm page cache:

- plain SHA-256 of the checkpoint's files (hashlib, 8 MB reads): the floor for any checksummed copy;
- curl PUT and GET of the same files through the same artifact proxy: the transport alone;
- `register`: upload through the registry's artifact proxy, hashed in the same read;
- `promote`: every gate, of which the checksum gate streams every stored file back and hashes it;
- `checkout`: download for serving, hashed while written, then compared with the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from policies import load_default_policy
from policies.access import Roles
from policies.audit import open_log
from policies.openbao import APPROVAL_KEY, TransitSigner, bootstrap, start_dev_server
from policies.registry import checkpoint_files, read_chunks
from serving import registry_server
from serving.launcher import free_port
from serving.registry import ModelReference, Registrant, Registry
from serving.tiny_model import TINY_ARCHITECTURE

console = Console()


def build_checkpoint(directory: Path, gigabytes: float) -> None:
    """A loadable A.X K1-architecture checkpoint of about `gigabytes` in bf16, in 256 MB shards."""
    import torch
    from transformers import AXK1Config, AXK1ForCausalLM

    from serving.tokenizer import build_tokenizer

    # Widen the tiny model's experts until the weights reach the size asked for.
    experts = 64
    hidden, expert_width, layers = 1024, 512, 1 + round(gigabytes * 2**30 / (2 * experts * 3 * 1024 * 512))
    config = AXK1Config(
        **{
            **TINY_ARCHITECTURE,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "moe_intermediate_size": expert_width,
            "num_hidden_layers": layers,
            "n_routed_experts": experts,
            "num_experts_per_tok": 8,
            "n_group": 8,
            "topk_group": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
        },
        vocab_size=32000,
    )
    with torch.device("cpu"):
        model = AXK1ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="256MB")
    build_tokenizer(directory)


def plain_sha256(directory: Path) -> float:
    started = time.perf_counter()
    for path in checkpoint_files(directory):
        digest = hashlib.sha256()
        for chunk in read_chunks(path):
            digest.update(chunk)
    return time.perf_counter() - started


def curl_transfer(directory: Path, base_url: str, upload: bool) -> float:
    """The transport alone: every file PUT (or GET) through the same artifact proxy with curl, no hashing."""
    os.sync()
    started = time.perf_counter()
    for path in checkpoint_files(directory):
        url = f"{base_url}/{path.name}"
        command = ["curl", "-sf", "-T", str(path), url] if upload else ["curl", "-sf", "-o", "/dev/null", url]
        subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0, help="Checkpoint size to build (default 1).")
    arguments = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    os.environ.setdefault("SOVEREIGN_STATE_DIR", str(work / "state"))
    bao = start_dev_server(free_port(), work / "openbao")
    mlflow = registry_server.start(work / "mlflow", free_port())
    try:
        checkpoint = work / "checkpoint"
        with console.status(f"Building a {arguments.gigabytes:g} GB checkpoint"):
            build_checkpoint(checkpoint, arguments.gigabytes)
        size = sum(path.stat().st_size for path in checkpoint_files(checkpoint))
        files = len(checkpoint_files(checkpoint))
        bootstrap(bao.client())
        mlflow.wait_ready()
        policy = load_default_policy()
        signer = TransitSigner(bao.client(), key=APPROVAL_KEY)
        registry = Registry(mlflow.address, policy, signer)
        roles = Roles(policy)
        engineer = Registrant(roles.principal("acme", "key:engineer", "model-admin", "api-key"), "engineer")
        officer = Registrant(roles.principal("acme", "key:officer", "model-admin", "api-key"), "officer")

        plain_sha256(checkpoint)  # warm the page cache, so every measure below reads from memory
        timings = {"plain sha256 (hashlib)": plain_sha256(checkpoint)}
        os.sync()  # each step starts with no writes pending from the one before
        started = time.perf_counter()
        version = registry.register(checkpoint, "bench", engineer, [])
        timings["register (upload + hash, one read)"] = time.perf_counter() - started
        os.sync()
        started = time.perf_counter()
        registry.promote("bench", version, "production", officer, "BENCH-1", open_log(work / "state", signer))
        timings["promote (all gates; streams and hashes every file)"] = time.perf_counter() - started
        os.sync()
        started = time.perf_counter()
        registry.checkout(ModelReference("bench", "production"), work / "cache")
        timings["checkout for serving (download + hash + write)"] = time.perf_counter() - started
        # The transport alone, after the registry's own steps so that neither finds the other's writes.
        scratch = f"{mlflow.address}/api/2.0/mlflow-artifacts/artifacts/0/curl-baseline"
        timings["curl PUT through the artifact proxy (no hashing)"] = curl_transfer(checkpoint, scratch, upload=True)
        timings["curl GET through the artifact proxy (no hashing)"] = curl_transfer(checkpoint, scratch, upload=False)
    finally:
        mlflow.stop()
        bao.stop()
        shutil.rmtree(work, ignore_errors=True)

    baseline = timings["plain sha256 (hashlib)"]
    table = Table(
        title=f"{size / 2**30:.2f} GiB checkpoint, {files} files — {os.cpu_count()} cores, {platform.platform()}"
    )
    for column in ("step", "seconds", "MB/s", "× plain sha256 time"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step, seconds in timings.items():
        table.add_row(step, f"{seconds:.2f}", f"{size / seconds / 1e6:.0f}", f"{seconds / baseline:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
