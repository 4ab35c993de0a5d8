"""The model registry's rules: checksum manifests, training-data lineage and the promotion gates.

Pure logic over facts read from the registry, so every gate is testable without MLflow; talking to
MLflow is `serving.registry`. A version may serve under an alias only when all four gates pass:

- `in_country`: its artifacts lie in an artifact store of the policy, on an in-country site;
- `checksums`: every file's SHA-256 matches the manifest, and the manifest matches the digest
  recorded when it was registered;
- `datasets_scanned`: its training data is declared, and every dataset has a clean scan report
  (`sovereign scan --report`) or an exception recorded by the approver;
- `four_eyes`: the approver may promote (`registry.promote`, e.g. `model-admin`) and is not the
  principal that registered it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from policies.access import Principal
from policies.evaluation import PolicyEvaluator
from policies.model import ArtifactStore, Permission, ResidencyPolicy

MANIFEST_FILE = "sovereign-manifest.json"
CHUNK_BYTES = 8 * 1024 * 1024


# How every registry server runs, embedded or in the Helm chart.
REGISTRY_SERVER_ENVIRONMENT = {
    # One worker and no job runner: about 0.5 GB of memory instead of 2.3 GB, plenty for one machine.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # Nothing may phone home, and the registry is no route to foreign model APIs (MLflow's AI Gateway).
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_AI_GATEWAY": "false",
}


class Gate(StrEnum):
    IN_COUNTRY = "in_country"
    CHECKSUMS = "checksums"
    DATASETS_SCANNED = "datasets_scanned"
    FOUR_EYES = "four_eyes"


class RegistryError(ValueError):
    """Registry input that cannot be used; the message names the file, tag or option and what to do."""


# --- checksum manifests --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """SHA-256 and size of every file of a checkpoint, by path relative to the checkpoint directory."""

    files: dict[str, FileEntry]

    @property
    def total_bytes(self) -> int:
        return sum(entry.bytes for entry in self.files.values())

    def to_json(self) -> bytes:
        body = {"algorithm": "sha256", "files": {path: asdict(entry) for path, entry in sorted(self.files.items())}}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        """SHA-256 of the canonical manifest: the one value a registry tag must carry to pin every file."""
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Manifest:
        try:
            body = json.loads(data)
            files = {
                path: FileEntry(sha256=str(entry["sha256"]), bytes=int(entry["bytes"]))
                for path, entry in body["files"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise RegistryError(
                f"`{source}` is not a checksum manifest ({error!s}); register the model again"
            ) from None
        # The paths become file names on the serving machine: nothing may point outside the checkout.
        unsafe = [path for path in files if path.startswith("/") or ".." in PurePosixPath(path).parts or not path]
        if unsafe:
            raise RegistryError(f"`{source}` lists paths outside the checkpoint: {', '.join(unsafe[:3])}")
        return cls(files)

    def mismatches(self, observed: dict[str, str]) -> list[str]:
        """What differs between the manifest and the SHA-256 of each file found, one line per file."""
        problems = [
            f"`{path}`: expected sha256 {entry.sha256[:12]}…, found {observed[path][:12]}…"
            for path, entry in sorted(self.files.items())
            if path in observed and observed[path] != entry.sha256
        ]
        problems += [f"`{path}`: missing" for path in sorted(set(self.files) - set(observed))]
        problems += [f"`{path}`: not in the manifest" for path in sorted(set(observed) - set(self.files))]
        return problems


def checkpoint_files(directory: Path) -> list[Path]:
    """Every regular file under `directory` that belongs to the checkpoint (hidden files are skipped)."""
    return [
        path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    ]


def sha256_stream(chunks: Iterable[bytes], on_progress: Callable[[int], None] = lambda _: None) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        on_progress(len(chunk))
    return digest.hexdigest()


def read_chunks(path: Path, size: int = CHUNK_BYTES) -> Iterable[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(size):
            yield chunk


def verify_directory(
    directory: Path, manifest: Manifest, on_progress: Callable[[int], None] = lambda _: None
) -> list[str]:
    """Hash the files of a local copy and compare them with the manifest; empty when every file matches."""
    observed = {
        path.relative_to(directory).as_posix(): sha256_stream(read_chunks(path), on_progress)
        for path in checkpoint_files(directory)
        if path.name != MANIFEST_FILE
    }
    return manifest.mismatches(observed)


# --- lineage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A training or distillation dataset of a model version, with what its scan report said."""

    name: str
    report_sha256: str | None = None
    training_allowed: bool | None = None
    scanned_under: str | None = None
    identifiers: dict[str, int] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.training_allowed is None:
            return "not scanned"
        return "scanned clean" if self.training_allowed else "scan forbids training"

    def as_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, {})}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Dataset:
        return cls(
            name=str(body["name"]),
            report_sha256=body.get("report_sha256"),
            training_allowed=body.get("training_allowed"),
            scanned_under=body.get("scanned_under"),
            identifiers=dict(body.get("identifiers", {})),
        )


def dataset_from_report(name: str, report: Path) -> Dataset:
    """Read a `sovereign scan --report x.json` report; the error names the file and what is wrong with it."""
    try:
        data = report.read_bytes()
    except OSError as error:
        raise RegistryError(f"--dataset {name}: cannot read scan report `{report}`: {error.strerror}") from None
    try:
        body = json.loads(data)
        allowed = body["trainingAllowed"]
        policy = body["policy"]
        if not isinstance(allowed, bool) or not isinstance(policy, dict):
            raise TypeError("trainingAllowed must be true or false")
        counts = {str(kind): int(count) for kind, count in body.get("countsByType", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RegistryError(
            f"--dataset {name}: `{report}` is not a scan report; make one with `sovereign scan DATA --report x.json`"
        ) from None
    return Dataset(
        name=name,
        report_sha256=hashlib.sha256(data).hexdigest(),
        training_allowed=allowed,
        scanned_under=f"{policy.get('name')}@{str(policy.get('sha256', ''))[:12]}",
        identifiers=counts,
    )


def parse_dataset_option(text: str) -> tuple[str, Path | None]:
    """`NAME=REPORT.json` (a scanned dataset) or `NAME` (declared, not scanned)."""
    name, separator, report = text.partition("=")
    if not name.strip() or (separator and not report.strip()):
        raise RegistryError(f"--dataset `{text}` is not NAME or NAME=SCAN_REPORT.json")
    return name.strip(), Path(report.strip()) if separator else None


# --- the gates -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    passed: bool
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"gate": self.gate.value, "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class VersionFacts:
    """What the gates judge, as read from the registry and the artifact store."""

    source: str
    storage_site: str | None
    checksum_problems: list[str]
    datasets: list[Dataset] | None
    registered_by: str | None
    exceptions: dict[str, str] = field(default_factory=dict)


def artifact_store_for(policy: ResidencyPolicy, uri: str) -> ArtifactStore | None:
    """The policy's artifact store whose URI prefix is the longest match for `uri`, by whole path segments."""
    matches = [store for store in policy.spec.registry.artifact_stores if _under(uri, store.uri)]
    return max(matches, key=lambda store: len(store.uri), default=None)


def _under(uri: str, prefix: str) -> bool:
    """`s3://models/x` is under `s3://models` and `s3://models/`; `s3://models-eu/x` is under neither."""
    if prefix.endswith(("/", ":")):
        return uri.startswith(prefix)
    return uri == prefix or uri.startswith(prefix + "/")


def check_store(policy: ResidencyPolicy, store: ArtifactStore) -> str | None:
    """Why the store may not hold model artifacts, or None when it may."""
    evaluator = PolicyEvaluator(policy)
    decision = evaluator.site_in_country(store.site)
    if not decision.allowed:
        return f"artifact store `{store.name}` is on site `{store.site}`: {decision.reason} ({decision.rule})"
    if store.endpoint is not None:
        egress = evaluator.may_send("internal", store.endpoint)
        if not egress.allowed:
            return f"artifact store `{store.name}` endpoint {store.endpoint}: {egress.reason} ({egress.rule})"
    return None


def s3_uri(bucket: str, prefix: str = "") -> str:
    """`s3://bucket/prefix/`, the form artifact store URIs are matched in."""
    prefix = prefix.strip("/")
    return f"s3://{bucket}/{prefix + '/' if prefix else ''}"


def artifact_destination_problems(policy: ResidencyPolicy, uri: str, endpoint: str, endpoint_field: str) -> list[str]:
    """Why artifacts may not be kept at `uri` reached at `endpoint` (named `endpoint_field` in messages): in no
    store of the policy, in a store outside the jurisdiction, or through another endpoint than the store's."""
    store = artifact_store_for(policy, uri)
    if store is None:
        stores = ", ".join(known.uri for known in policy.spec.registry.artifact_stores)
        return [f"MLflow artifacts at {uri} lie in no artifact store of the policy ({stores})"]
    problems = [problem] if (problem := check_store(policy, store)) else []
    if store.endpoint is not None and store.endpoint.rstrip("/") != endpoint.rstrip("/"):
        problems.append(f"{endpoint_field} {endpoint} is not {store.endpoint}, where store `{store.name}` is")
    return problems


def principal_id(principal: Principal) -> str:
    """How a principal is named in registry tags: `tenant/subject`, e.g. `acme/key:0123abcd4567ef89`."""
    return f"{principal.tenant}/{principal.subject}"


def evaluate_gates(policy: ResidencyPolicy, facts: VersionFacts, approver: Principal) -> list[GateResult]:
    """Every gate's verdict, in a fixed order; promotion needs all of them to pass."""
    return [
        _in_country(policy, facts),
        _checksums(facts),
        _datasets_scanned(facts),
        _four_eyes(facts, approver),
    ]


def _in_country(policy: ResidencyPolicy, facts: VersionFacts) -> GateResult:
    store = artifact_store_for(policy, facts.source)
    if store is None:
        known = ", ".join(f"{s.name} ({s.uri})" for s in policy.spec.registry.artifact_stores) or "none"
        return GateResult(
            Gate.IN_COUNTRY,
            False,
            f"artifacts at `{facts.source}` are in no artifact store of policy `{policy.metadata.name}` "
            f"(spec.registry.artifactStores: {known})",
        )
    if problem := check_store(policy, store):
        return GateResult(Gate.IN_COUNTRY, False, problem)
    if facts.storage_site is not None and facts.storage_site != store.site:
        return GateResult(
            Gate.IN_COUNTRY,
            False,
            f"the version says its artifacts are on site `{facts.storage_site}`, but store `{store.name}` "
            f"is on `{store.site}`",
        )
    return GateResult(Gate.IN_COUNTRY, True, f"store `{store.name}` on in-country site `{store.site}`")


def _checksums(facts: VersionFacts) -> GateResult:
    if facts.checksum_problems:
        shown = facts.checksum_problems[:10]
        more = len(facts.checksum_problems) - len(shown)
        return GateResult(Gate.CHECKSUMS, False, "; ".join(shown) + (f"; and {more} more" if more > 0 else ""))
    return GateResult(Gate.CHECKSUMS, True, "every file matches the manifest")


def _datasets_scanned(facts: VersionFacts) -> GateResult:
    if facts.datasets is None:
        return GateResult(
            Gate.DATASETS_SCANNED,
            False,
            "no training data declared; register with --dataset NAME=SCAN_REPORT.json, or --no-training-data",
        )
    if not facts.datasets:
        return GateResult(Gate.DATASETS_SCANNED, True, "declared as trained on no data")
    problems = []
    for dataset in facts.datasets:
        if dataset.name in facts.exceptions:
            continue
        if dataset.training_allowed is None:
            problems.append(f"dataset `{dataset.name}` has no scan report")
        elif not dataset.training_allowed:
            found = ", ".join(f"{kind} {count}" for kind, count in sorted(dataset.identifiers.items()))
            problems.append(f"dataset `{dataset.name}`'s scan forbids training on it ({found or 'see the report'})")
    if problems:
        return GateResult(
            Gate.DATASETS_SCANNED,
            False,
            "; ".join(problems) + "; rescan clean data, or record an exception with --dataset-exception NAME",
        )
    excepted = [name for name in (d.name for d in facts.datasets) if name in facts.exceptions]
    note = f" (exceptions: {', '.join(excepted)})" if excepted else ""
    return GateResult(Gate.DATASETS_SCANNED, True, f"{len(facts.datasets)} dataset(s) scanned clean{note}")


def _four_eyes(facts: VersionFacts, approver: Principal) -> GateResult:
    if not approver.may(Permission.REGISTRY_PROMOTE):
        return GateResult(
            Gate.FOUR_EYES,
            False,
            f"approver `{principal_id(approver)}` has role `{approver.role}`, which may not registry.promote "
            f"(spec.roles; e.g. model-admin may)",
        )
    if facts.registered_by is None:
        return GateResult(
            Gate.FOUR_EYES,
            False,
            "the version has no valid signed registration, so who registered it is unknown: it was not registered "
            "with `sovereign registry register`, or its tags were altered",
        )
    if facts.registered_by == principal_id(approver):
        return GateResult(
            Gate.FOUR_EYES,
            False,
            f"approver `{principal_id(approver)}` registered this version; a second person must approve it",
        )
    return GateResult(
        Gate.FOUR_EYES, True, f"approved by `{principal_id(approver)}`, registered by `{facts.registered_by}`"
    )


# --- signed records ------------------------------------------------------------------------------
# Registry tags can be edited by anyone who may write to MLflow. Who registered a version, its
# manifest digest and its approval are therefore signed by an OpenBao transit key, and the gates and
# serving trust only what verifies.


@dataclass(frozen=True)
class Registration:
    """Who registered which files as a model version."""

    model: str
    version: str
    source: str
    manifest_sha256: str
    registered_by: str
    registered_at: str

    def document(self) -> bytes:
        return _signed_document("registration", self)


@dataclass(frozen=True)
class Approval:
    """Who approved a version to serve under an alias, after which gates passed."""

    model: str
    version: str
    alias: str
    manifest_sha256: str
    approved_by: str
    approved_at: str
    ticket: str
    policy_sha256: str

    def document(self) -> bytes:
        return _signed_document("approval", self)


def _signed_document(kind: str, record: Registration | Approval) -> bytes:
    return json.dumps({"kind": kind, **asdict(record)}, sort_keys=True, separators=(",", ":")).encode()
