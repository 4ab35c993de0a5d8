"""The model registry on MLflow: register checkpoints, promote them through the policy gates, and
check a promoted version out for serving.

Artifacts travel through the registry server's artifact proxy (`mlflow server --serve-artifacts`),
so clients never hold storage credentials and the server's `--artifacts-destination` is the one
place model bytes are written. Every file is hashed while it is uploaded or downloaded: one read.
The rules (gates, manifests, lineage) are `policies.registry`; this module only reads and writes
MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from monitoring import catalogue
from policies import ResidencyPolicy
from policies.access import Principal
from policies.audit import AuditLog, Signer
from policies.registry import (
    MANIFEST_FILE,
    Approval,
    Dataset,
    FileEntry,
    GateResult,
    Manifest,
    Registration,
    RegistryError,
    VersionFacts,
    artifact_store_for,
    check_store,
    checkpoint_files,
    evaluate_gates,
    principal_id,
    sha256_stream,
    verify_directory,
)
from serving.checkpoint import CheckpointError, inspect_checkpoint
from serving.model_size import human_count, parameter_counts

EXPERIMENT = "sovereign-registry"
CHECKPOINT_PATH = "checkpoint"
LINEAGE_PATH = "lineage"
CHUNK_BYTES = 4 * 1024 * 1024
REFERENCE_PREFIX = "models:/"

# MLflow would otherwise retry an unreachable server for minutes and print run URLs on stdout, and its
# client reports usage to MLflow's servers abroad: nothing may phone home from a sovereign installation.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


class Tag:
    """Model version tags: what the registry UI shows a security officer, and what the gates read."""

    ARCHITECTURE = "sovereign.architecture"
    PARAMETERS_TOTAL = "sovereign.parameters.total"
    PARAMETERS_ACTIVE = "sovereign.parameters.active"
    SITE = "sovereign.residency.site"
    STORE = "sovereign.residency.store"
    JURISDICTION = "sovereign.residency.jurisdiction"
    MANIFEST = "sovereign.checksums.manifest_sha256"
    FILES = "sovereign.checksums.files"
    BYTES = "sovereign.checksums.bytes"
    LICENSE = "sovereign.license"
    BASE = "sovereign.lineage.base"
    DATASETS = "sovereign.lineage.datasets"
    EXCEPTIONS = "sovereign.lineage.exceptions"
    REGISTERED_BY = "sovereign.registered_by"
    REGISTERED_AT = "sovereign.registered_at"
    REGISTRATION_SIGNATURE = "sovereign.registration.signature"
    APPROVED_BY = "sovereign.approved_by"
    APPROVED_AT = "sovereign.approved_at"
    TICKET = "sovereign.approval.ticket"
    APPROVAL_ALIAS = "sovereign.approval.alias"
    APPROVAL_POLICY = "sovereign.approval.policy_sha256"
    APPROVAL_SIGNATURE = "sovereign.approval.signature"
    GATES = "sovereign.gates"
    GATES_CHECKED_AT = "sovereign.gates.checked_at"


class RegistryUnavailable(RuntimeError):
    """The registry server cannot be reached."""


class PromotionRefused(RuntimeError):
    """At least one gate failed; `results` holds every gate's verdict."""

    def __init__(self, model: str, version: str, results: list[GateResult]) -> None:
        failed = [result for result in results if not result.passed]
        super().__init__(
            f"promotion of {model} version {version} refused by {len(failed)} gate(s): "
            + "; ".join(f"{result.gate.value}: {result.reason}" for result in failed)
        )
        self.results = results


class ServingRefused(RuntimeError):
    """A registry version that must not be loaded: unapproved, altered, or its files do not match."""


@dataclass(frozen=True)
class ModelReference:
    """`models:/NAME@ALIAS`: a registered model's version as an alias points at it."""

    name: str
    alias: str

    @classmethod
    def parse(cls, text: str) -> ModelReference:
        name, separator, alias = text.removeprefix(REFERENCE_PREFIX).partition("@")
        if not text.startswith(REFERENCE_PREFIX) or not separator or not name or not alias or "/" in name:
            raise RegistryError(
                f"`{text}` is not a registry reference; write models:/NAME@ALIAS, e.g. models:/axk1@production"
            )
        return cls(name, alias)

    def __str__(self) -> str:
        return f"{REFERENCE_PREFIX}{self.name}@{self.alias}"


@dataclass(frozen=True)
class Registrant:
    """Who registers or approves: the principal and a readable label (the API key's name)."""

    principal: Principal
    label: str = ""

    @property
    def id(self) -> str:
        return principal_id(self.principal)

    @property
    def tag(self) -> str:
        """As `registered_by` and `approved_by` show it: `acme/key:0123… (alice)`."""
        return self.id + (f" ({self.label})" if self.label else "")


def _tagged_principal(tag: str) -> str:
    """The principal id of a `Registrant.tag` value, which is what the signatures cover."""
    return tag.split(" (")[0]


@dataclass
class VersionStatus:
    version: str
    aliases: list[str]
    tags: dict[str, str]
    gates: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ApprovedVersion:
    """A version an alias points at whose approval for that alias verifies."""

    reference: ModelReference
    version: str
    manifest_sha256: str
    parameters_total: int
    parameters_active: int


@dataclass(frozen=True)
class Checkout:
    """A verified local copy of a promoted version."""

    path: Path
    name: str
    version: str
    manifest_sha256: str

    @property
    def revision(self) -> str:
        return revision_of(self.name, self.version)


def revision_of(name: str, version: str) -> str:
    """How a served registry version is named in /healthz and the audit log: `NAME/VERSION`."""
    return f"{name}/{version}"


Progress = Callable[[int], None]


def _no_progress(_: int) -> None:
    return None


class Registry:
    """One MLflow registry server, judged by one residency policy, with approvals signed by `signer`."""

    def __init__(self, uri: str, policy: ResidencyPolicy, signer: Signer) -> None:
        from mlflow import MlflowClient

        self.uri = uri.rstrip("/")
        self.policy = policy
        self.signer = signer
        self._require_reachable()
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.http = requests.Session()
        # Larger socket writes than http.client's 16 KiB default: uploads run at disk speed.
        self.http.mount("http://", _LargeBlockAdapter())
        self.http.mount("https://", _LargeBlockAdapter())
        if (user := os.environ.get("MLFLOW_TRACKING_USERNAME")) is not None:
            self.http.auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        elif token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            self.http.headers["Authorization"] = f"Bearer {token}"

    # -- register ---------------------------------------------------------------------------------

    def register(
        self,
        directory: Path,
        name: str,
        registrant: Registrant,
        datasets: list[Dataset] | None,
        reports: dict[str, Path] | None = None,
        base: str | None = None,
        license_name: str = "",
        description: str = "",
        on_start: Callable[[int], None] = lambda _: None,
        on_progress: Progress = _no_progress,
    ) -> str:
        """Upload a checkpoint and create a model version with its residency, checksum and lineage tags.

        Everything that can be refused is checked before the first byte is written; if the upload
        fails, the half-made run is deleted and no version exists. Returns the new version number.
        """
        _check_names(name=name)
        card = inspect_checkpoint(directory)
        experiment = self._experiment()
        store = artifact_store_for(self.policy, experiment.artifact_location)
        if store is None:
            raise RegistryError(
                f"the registry stores artifacts at `{experiment.artifact_location}`, which is in no artifact store of "
                f"policy `{self.policy.metadata.name}`; add it under spec.registry.artifactStores"
            )
        if problem := check_store(self.policy, store):
            raise RegistryError(f"refusing to store {name} outside the jurisdiction: {problem}")
        base_version = self._resolve_base(base) if base else None
        try:
            counts = parameter_counts(card.path)
        except (ValueError, OSError, KeyError) as error:
            raise CheckpointError(
                f"`{card.path / 'config.json'}` does not describe a model transformers can build: {error}"
            ) from None
        files = checkpoint_files(card.path)
        on_start(sum(path.stat().st_size for path in files))

        run = self.client.create_run(experiment.experiment_id, tags={"mlflow.runName": f"register {name}"})
        try:
            root = run.info.artifact_uri
            relative = {path: path.relative_to(card.path).as_posix() for path in files}
            manifest = Manifest(
                {
                    name_in_checkpoint: FileEntry(
                        self._upload(root, f"{CHECKPOINT_PATH}/{name_in_checkpoint}", path, on_progress),
                        path.stat().st_size,
                    )
                    for path, name_in_checkpoint in relative.items()
                }
            )
            self._upload_bytes(root, MANIFEST_FILE, manifest.to_json())
            for dataset_name, report in (reports or {}).items():
                self._upload_bytes(root, f"{LINEAGE_PATH}/{dataset_name}.scan.json", report.read_bytes())
            self.client.set_terminated(run.info.run_id)
        except BaseException:
            self.client.delete_run(run.info.run_id)
            raise

        now = _now()
        tags = {
            Tag.ARCHITECTURE: card.model_type,
            Tag.PARAMETERS_TOTAL: f"{human_count(counts.total)} ({counts.total:,})",
            Tag.PARAMETERS_ACTIVE: f"{human_count(counts.active)} ({counts.active:,})",
            Tag.SITE: store.site,
            Tag.STORE: store.name,
            Tag.JURISDICTION: self.policy.spec.jurisdiction.code,
            Tag.MANIFEST: manifest.digest(),
            Tag.FILES: str(len(manifest.files)),
            Tag.BYTES: str(manifest.total_bytes),
            Tag.LICENSE: license_name or "unspecified",
            Tag.DATASETS: "undeclared" if datasets is None else json.dumps([d.as_json() for d in datasets]),
            Tag.REGISTERED_BY: registrant.tag,
            Tag.REGISTERED_AT: now,
            **({Tag.BASE: base_version} if base_version else {}),
        }
        if self._find_model(name) is None:
            self.client.create_registered_model(name, description=description or None)
        source = f"{run.info.artifact_uri}/{CHECKPOINT_PATH}"
        version = self.client.create_model_version(
            name, source=source, run_id=run.info.run_id, tags=tags, description=_describe(description, tags)
        ).version
        try:
            registration = Registration(name, str(version), source, manifest.digest(), registrant.id, now)
            self.client.set_model_version_tag(
                name, version, Tag.REGISTRATION_SIGNATURE, self.signer.sign(registration.document())
            )
        except BaseException:
            self.client.delete_model_version(name, version)
            raise
        return str(version)

    # -- promote ----------------------------------------------------------------------------------

    def promote(
        self,
        name: str,
        version: str,
        alias: str,
        approver: Registrant,
        ticket: str,
        audit: AuditLog,
        exceptions: list[str] | None = None,
        on_start: Callable[[int], None] = lambda _: None,
        on_progress: Progress = _no_progress,
    ) -> list[GateResult]:
        """Judge every gate; point `alias` at the version only if all pass, and sign the approval.

        Every attempt, allowed or refused, is recorded: the gate results as a version tag, an audit
        record, and `sovereign_registry_promotions_total`. Raises PromotionRefused listing each failed gate.
        """
        _check_names(alias=alias)
        model_version = self._version(name, version)
        tags = dict(model_version.tags)
        recorded_exceptions = _json_tag(tags, Tag.EXCEPTIONS, {})
        new_exceptions = dict.fromkeys(exceptions or [], f"{ticket} by {approver.id}")
        unknown = sorted(set(new_exceptions) - {d.name for d in _datasets(tags) or []})
        if unknown:
            raise RegistryError(
                f"--dataset-exception {', '.join(unknown)}: not a dataset of {name} version {version}; "
                f"it declares: {', '.join(d.name for d in _datasets(tags) or []) or 'none'}"
            )
        all_exceptions = {**recorded_exceptions, **new_exceptions}
        registration, manifest_digest, checksum_problems = self._integrity(model_version, on_start, on_progress)
        facts = VersionFacts(
            source=model_version.source,
            storage_site=tags.get(Tag.SITE),
            checksum_problems=checksum_problems,
            datasets=_datasets(tags),
            registered_by=registration.registered_by if registration else None,
            exceptions=all_exceptions,
        )
        results = evaluate_gates(self.policy, facts, approver.principal)
        now = _now()
        self.client.set_model_version_tag(name, version, Tag.GATES, json.dumps([r.as_json() for r in results]))
        self.client.set_model_version_tag(name, version, Tag.GATES_CHECKED_AT, now)
        failed = [result.gate.value for result in results if not result.passed]
        for gate in failed:
            catalogue.REGISTRY_PROMOTIONS.labels("refused", gate).inc()
        audit.append(
            "admin",
            action="registry.promote",
            principal=approver.id,
            tenant=approver.principal.tenant,
            role=approver.principal.role,
            model=name,
            version=version,
            alias=alias,
            ticket=ticket,
            result="refused" if failed else "allowed",
            failedGates=failed,
            manifestSha256=manifest_digest,
        )
        if failed:
            raise PromotionRefused(name, version, results)
        approval = Approval(name, version, alias, manifest_digest, approver.id, now, ticket, self.policy.digest())
        approval_tags = {
            Tag.APPROVED_BY: approver.tag,
            Tag.APPROVED_AT: now,
            Tag.TICKET: ticket,
            Tag.APPROVAL_ALIAS: alias,
            Tag.APPROVAL_POLICY: approval.policy_sha256,
            Tag.APPROVAL_SIGNATURE: self.signer.sign(approval.document()),
            **({Tag.EXCEPTIONS: json.dumps(all_exceptions)} if all_exceptions else {}),
        }
        for key, value in approval_tags.items():
            self.client.set_model_version_tag(name, version, key, value)
        summary = (
            f"**Approved** for `@{alias}` by {approval_tags[Tag.APPROVED_BY]} at {now}, ticket {ticket}; "
            "gates passed: " + ", ".join(result.gate.value for result in results) + "."
        )
        self.client.update_model_version(
            name, version, description=f"{model_version.description or ''}\n\n{summary}".strip()
        )
        # The alias moves last: until it does, the previous version keeps serving.
        self.client.set_registered_model_alias(name, alias, version)
        catalogue.REGISTRY_PROMOTIONS.labels("allowed", "none").inc()
        return results

    # -- verify -----------------------------------------------------------------------------------

    def verify(
        self,
        name: str,
        version: str,
        on_start: Callable[[int], None] = lambda _: None,
        on_progress: Progress = _no_progress,
    ) -> list[str]:
        """Everything wrong with a version's stored files and signed records; empty when it is intact.

        What the checksum gate checks, on demand: for a security officer's periodic integrity check.
        """
        registration, _, checksum_problems = self._integrity(self._version(name, version), on_start, on_progress)
        return ([] if registration else ["its signed registration is missing or was altered"]) + checksum_problems

    # -- status -----------------------------------------------------------------------------------

    def status(self, name: str) -> list[VersionStatus]:
        """Every version, newest first, with its aliases, tags and the gate results of its last promotion."""
        model = self._find_model(name)
        if model is None:
            raise RegistryError(
                f"no registered model `{name}`; `sovereign registry register PATH --name {name}` makes one"
            )
        # Searches do not return aliases; the registered model maps each alias to its version.
        aliases = dict(model.aliases)
        versions = self.client.search_model_versions(f"name = '{_quoted(name)}'")
        return [
            VersionStatus(
                version=str(v.version),
                aliases=sorted(alias for alias, target in aliases.items() if str(target) == str(v.version)),
                tags=dict(v.tags),
                gates=_json_tag(dict(v.tags), Tag.GATES, []),
            )
            for v in sorted(versions, key=lambda v: int(v.version), reverse=True)
        ]

    def version_of(self, reference: ModelReference) -> str:
        """The version the alias points at now."""
        return str(self._by_alias(reference).version)

    def resolve(self, reference: ModelReference) -> ApprovedVersion:
        """The version the alias points at, once its signed approval for that alias verifies; nothing is downloaded.

        Raises ServingRefused (never approved for the alias, or altered), RegistryError (no such alias)
        or RegistryUnavailable.
        """
        self._require_reachable()
        model_version = self._by_alias(reference)
        manifest_digest = self._approved_manifest(model_version, reference)
        tags = dict(model_version.tags)
        return ApprovedVersion(
            reference=reference,
            version=str(model_version.version),
            manifest_sha256=manifest_digest,
            parameters_total=_count_tag(tags.get(Tag.PARAMETERS_TOTAL, "")),
            parameters_active=_count_tag(tags.get(Tag.PARAMETERS_ACTIVE, "")),
        )

    def has_model(self, name: str) -> bool:
        return self._find_model(name) is not None

    # -- serving ----------------------------------------------------------------------------------

    def checkout(
        self,
        reference: ModelReference,
        cache_dir: Path,
        on_start: Callable[[int], None] = lambda _: None,
        on_progress: Progress = _no_progress,
        expect_version: str | None = None,
    ) -> Checkout:
        """A local copy of the version `reference` names, verified file by file against its signed manifest.

        Refuses a version without a valid approval for that alias, and any file whose SHA-256 differs;
        with `expect_version`, also an alias that has moved on (the operator rolls the new one out).
        """
        model_version = self._by_alias(reference)
        version = str(model_version.version)
        if expect_version is not None and version != expect_version:
            raise ServingRefused(
                f"{reference} now points at version {version}, not {expect_version}; the operator rolls out the "
                "new version next, nothing to do here"
            )
        manifest_digest = self._approved_manifest(model_version, reference)
        manifest = self._manifest(model_version, manifest_digest)
        target = cache_dir / "registry" / reference.name / version
        on_start(manifest.total_bytes)
        if target.is_dir():
            problems = verify_directory(target, manifest, on_progress)
            if problems:
                raise ServingRefused(
                    f"{reference} (version {version}): the local copy in {target} does not match the manifest: "
                    + "; ".join(problems)
                    + f". Delete {target} to download it again."
                )
            return Checkout(target, reference.name, version, manifest_digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            downloaded = {
                path: self._download(model_version.source, path, staging / path, on_progress) for path in manifest.files
            }
            observed = {path: digest for path, digest in downloaded.items() if digest is not None}
            if problems := manifest.mismatches(observed):
                raise ServingRefused(
                    f"{reference} (version {version}): refusing to load, the stored files do not match the "
                    "manifest: " + "; ".join(problems)
                )
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Checkout(target, reference.name, version, manifest_digest)

    # -- internals --------------------------------------------------------------------------------

    def _require_reachable(self) -> None:
        try:
            healthy = requests.get(f"{self.uri}/health", timeout=5).ok
        except requests.RequestException as error:
            raise RegistryUnavailable(
                f"the model registry at {self.uri} is not reachable ({type(error).__name__})"
            ) from None
        if not healthy:
            raise RegistryUnavailable(f"the model registry at {self.uri} is not healthy (GET /health failed)")

    def _experiment(self) -> Any:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            self.client.create_experiment(EXPERIMENT, tags={"sovereign.purpose": "model registrations"})
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
        return experiment

    def _by_alias(self, reference: ModelReference) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(reference.name, reference.alias)
        except MlflowException:
            raise RegistryError(
                f"{reference}: model `{reference.name}` has no alias `{reference.alias}`; "
                f"`sovereign registry status {reference.name}` shows its versions and aliases"
            ) from None

    def _find_model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            return None

    def _version(self, name: str, version: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, version)
        except MlflowException:
            raise RegistryError(
                f"model `{name}` has no version `{version}`; `sovereign registry status {name}` lists them"
            ) from None

    def _resolve_base(self, base: str) -> str:
        """`models:/NAME@ALIAS` or `NAME/VERSION` as the concrete `NAME/VERSION` it names today."""
        if base.startswith(REFERENCE_PREFIX):
            reference = ModelReference.parse(base)
            try:
                model_version = self.client.get_model_version_by_alias(reference.name, reference.alias)
            except Exception:  # MLflow raises several types for a missing model or alias
                raise RegistryError(f"--base {base}: no such model or alias in the registry") from None
            return f"{reference.name}/{model_version.version}"
        name, _, version = base.partition("/")
        self._version(name, version)
        return base

    def _integrity(
        self, model_version: Any, on_start: Callable[[int], None], on_progress: Progress
    ) -> tuple[Registration | None, str, list[str]]:
        """The signed registration (None if it does not verify), the manifest digest, and the stored files' problems.

        Without a valid registration the digest tag is all there is; the manifest is still checked against it.
        """
        tags = dict(model_version.tags)
        registration = self._registration(model_version)
        digest = registration.manifest_sha256 if registration else tags.get(Tag.MANIFEST, "")
        on_start(int(tags.get(Tag.BYTES, "0") or 0))
        return registration, digest, self._stored_checksum_problems(model_version, digest, on_progress)

    def _registration(self, model_version: Any) -> Registration | None:
        """The signed registration record, or None when it is missing or does not verify."""
        tags = dict(model_version.tags)
        signature = tags.get(Tag.REGISTRATION_SIGNATURE)
        registered_by = _tagged_principal(tags.get(Tag.REGISTERED_BY, ""))
        if not signature or not registered_by:
            return None
        registration = Registration(
            str(model_version.name),
            str(model_version.version),
            str(model_version.source),
            tags.get(Tag.MANIFEST, ""),
            registered_by,
            tags.get(Tag.REGISTERED_AT, ""),
        )
        return registration if self.signer.verify(registration.document(), signature) else None

    def _approved_manifest(self, model_version: Any, reference: ModelReference) -> str:
        """The manifest digest the version's approval signs, or ServingRefused saying why it cannot serve."""
        tags = dict(model_version.tags)
        version = str(model_version.version)
        hint = f"promote it with `sovereign registry promote {reference.name} {version} --alias {reference.alias}`"
        if tags.get(Tag.APPROVAL_ALIAS) != reference.alias or not tags.get(Tag.APPROVAL_SIGNATURE):
            raise ServingRefused(
                f"{reference} points at version {version}, which was never approved for `{reference.alias}` "
                f"(the alias was set outside `sovereign registry promote`); {hint}"
            )
        registration = self._registration(model_version)
        if registration is None:
            raise ServingRefused(f"{reference} (version {version}): its signed registration is missing or altered")
        approval = Approval(
            reference.name,
            version,
            reference.alias,
            registration.manifest_sha256,
            _tagged_principal(tags.get(Tag.APPROVED_BY, "")),
            tags.get(Tag.APPROVED_AT, ""),
            tags.get(Tag.TICKET, ""),
            tags.get(Tag.APPROVAL_POLICY, ""),
        )
        if not self.signer.verify(approval.document(), tags[Tag.APPROVAL_SIGNATURE]):
            raise ServingRefused(
                f"{reference} (version {version}): the approval signature does not verify, so its approval tags "
                f"were altered; {hint}"
            )
        return registration.manifest_sha256

    def _manifest(self, model_version: Any, digest: str) -> Manifest:
        url = self._artifact_url(_run_root(model_version.source), MANIFEST_FILE)
        response = self._get(url)
        manifest = Manifest.from_json(response.content, f"{model_version.name} v{model_version.version} manifest")
        if manifest.digest() != digest:
            raise ServingRefused(
                f"{model_version.name} version {model_version.version}: its manifest was altered (sha256 "
                f"{manifest.digest()[:12]}…, registered {digest[:12]}…)"
            )
        return manifest

    def _stored_checksum_problems(self, model_version: Any, digest: str, on_progress: Progress) -> list[str]:
        """Hash every stored file of the version (streamed, nothing written) against its manifest."""
        try:
            manifest = self._manifest(model_version, digest)
        except (RegistryError, ServingRefused) as error:
            return [str(error)]
        observed = {
            path: sha256_stream(self._stream(self._artifact_url(model_version.source, path)), on_progress)
            for path in self._stored_files(model_version)
        }
        return manifest.mismatches(observed)

    def _stored_files(self, model_version: Any) -> list[str]:
        """Paths of every file stored under the version's checkpoint, relative to it."""
        files: list[str] = []
        pending = [CHECKPOINT_PATH]
        while pending:
            directory = pending.pop()
            for info in self.client.list_artifacts(model_version.run_id, directory):
                if info.is_dir:
                    pending.append(info.path)
                else:
                    files.append(info.path.removeprefix(f"{CHECKPOINT_PATH}/"))
        return sorted(files)

    def _artifact_url(self, artifact_uri: str, relative: str) -> str:
        if not artifact_uri.startswith("mlflow-artifacts:"):
            raise RegistryError(
                f"artifacts at `{artifact_uri}` are not served by the registry; run the MLflow server with "
                "--serve-artifacts (and --artifacts-destination for its store)"
            )
        path = artifact_uri.removeprefix("mlflow-artifacts:").lstrip("/")
        return f"{self.uri}/api/2.0/mlflow-artifacts/artifacts/{path}/{relative}"

    def _upload(self, root: str, relative: str, path: Path, on_progress: Progress) -> str:
        with path.open("rb") as source:
            reader = _HashingReader(source, path.stat().st_size, on_progress)
            self._put(self._artifact_url(root, relative), reader)
        return reader.sha256()

    def _upload_bytes(self, root: str, relative: str, data: bytes) -> None:
        self._put(self._artifact_url(root, relative), data)

    def _put(self, url: str, body: Any) -> None:
        try:
            response = self.http.put(url, data=body, timeout=(10, 600))
        except requests.RequestException as error:
            raise RegistryUnavailable(f"uploading to {url} failed: {type(error).__name__}") from None
        if not response.ok:
            raise RegistryUnavailable(f"uploading to {url} failed: HTTP {response.status_code} {response.text[:200]}")

    def _get(self, url: str) -> requests.Response:
        try:
            response = self.http.get(url, timeout=(10, 600), stream=True)
        except requests.RequestException as error:
            raise RegistryUnavailable(f"downloading {url} failed: {type(error).__name__}") from None
        if response.status_code == 404:
            raise RegistryError(f"`{url}` is missing from the artifact store")
        if not response.ok:
            raise RegistryUnavailable(f"downloading {url} failed: HTTP {response.status_code}")
        return response

    def _stream(self, url: str) -> Iterator[bytes]:
        with self._get(url) as response:
            yield from response.iter_content(CHUNK_BYTES)

    def _download(self, source: str, relative: str, target: Path, on_progress: Progress) -> str | None:
        """Write one stored file to `target`, hashing it as it streams; None when the store lacks it."""
        target.parent.mkdir(parents=True, exist_ok=True)
        chunks = self._stream(self._artifact_url(source, relative))

        def written() -> Iterator[bytes]:
            with target.open("wb") as sink:
                for chunk in chunks:
                    sink.write(chunk)
                    yield chunk

        try:
            return sha256_stream(written(), on_progress)
        except RegistryError:
            return None


class _HashingReader:
    """A file object for `requests` that hashes and reports progress as the upload reads it."""

    def __init__(self, source: Any, size: int, on_progress: Progress) -> None:
        import hashlib

        self._source = source
        self._size = size
        self._on_progress = on_progress
        self._digest = hashlib.sha256()

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self._digest.update(chunk)
        self._on_progress(len(chunk))
        return chunk

    def sha256(self) -> str:
        return self._digest.hexdigest()


class _LargeBlockAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = CHUNK_BYTES
        super().init_poolmanager(*args, **kwargs)


# MLflow's documented naming rules (Model Registry docs, "Registered model aliases"), checked by us: its own checks are
# private names that change between releases.
MAX_ALIAS_LENGTH = 255
ALIAS_PATTERN = re.compile(r"[\w\-]+")
VERSION_ALIAS_PATTERN = re.compile(r"[vV]\d+")


def model_name_problem(name: str) -> str | None:
    """Why MLflow would refuse this registered model name, or None."""
    if not name.strip():
        return "a model name cannot be empty."
    if "/" in name or ":" in name:
        return f"Invalid model name '{name}'. Names cannot contain '/' or ':'."
    # Without a '/', only these two change meaning when the name is used as a path.
    if name in {".", ".."}:
        return f"Invalid model name '{name}': it would resolve to {name!r} when treated as a path."
    return None


def alias_problem(alias: str) -> str | None:
    """Why MLflow would refuse this alias, or None: characters, length, and the reserved `latest` and `vN`."""
    if not alias:
        return "an alias cannot be empty."
    if not ALIAS_PATTERN.fullmatch(alias):
        return f"Invalid alias name: '{alias}'. Names may only contain alphanumerics, underscores (_), and dashes (-)."
    if len(alias) > MAX_ALIAS_LENGTH:
        return f"an alias has at most {MAX_ALIAS_LENGTH} characters, this one {len(alias)}."
    if alias.lower() == "latest":
        return "'latest' alias name (case insensitive) is reserved."
    if VERSION_ALIAS_PATTERN.fullmatch(alias):
        return f"Version alias name '{alias}' is reserved."
    return None


def _check_names(name: str | None = None, alias: str | None = None) -> None:
    """MLflow's rules for model and alias names, checked before anything is written."""
    if name is not None and (problem := model_name_problem(name)):
        raise RegistryError(f"--name: {problem}")
    if alias is not None and (problem := alias_problem(alias)):
        raise RegistryError(f"--alias: {problem}")


def _describe(description: str, tags: dict[str, str]) -> str:
    """The version's page summary in the registry UI: what a security officer checks first."""
    datasets = _datasets(tags)
    if datasets is None:
        lineage = "training data **undeclared**"
    elif not datasets:
        lineage = "trained on no data"
    else:
        lineage = "datasets: " + ", ".join(f"{d.name} ({d.verdict})" for d in datasets)
    lines = [
        f"**Residency:** artifacts on site `{tags[Tag.SITE]}` (store `{tags[Tag.STORE]}`), "
        f"jurisdiction {tags[Tag.JURISDICTION]}.",
        f"**Checksums:** {tags[Tag.FILES]} files, {int(tags[Tag.BYTES]):,} bytes, "
        f"manifest sha256 `{tags[Tag.MANIFEST]}`.",
        f"**Model:** `{tags[Tag.ARCHITECTURE]}`, {tags[Tag.PARAMETERS_TOTAL]} parameters, "
        f"{tags[Tag.PARAMETERS_ACTIVE]} active; license {tags[Tag.LICENSE]}.",
        f"**Lineage:** base {tags.get(Tag.BASE, 'none')}; {lineage}.",
        f"**Registered** by {tags[Tag.REGISTERED_BY]} at {tags[Tag.REGISTERED_AT]}.",
    ]
    return "\n\n".join([*([description] if description else []), *lines])


def _run_root(source: str) -> str:
    return source.removesuffix(f"/{CHECKPOINT_PATH}")


def _datasets(tags: dict[str, str]) -> list[Dataset] | None:
    raw = tags.get(Tag.DATASETS)
    if raw is None or raw == "undeclared":
        return None
    try:
        return [Dataset.from_json(item) for item in json.loads(raw)]
    except (ValueError, KeyError, TypeError):
        return None


def _count_tag(value: str) -> int:
    """`519.0B (519,000,000,000)` → 519000000000; 0 when the tag is missing or malformed."""
    match = re.search(r"\(([\d,]+)\)", value)
    return int(match.group(1).replace(",", "")) if match else 0


def _json_tag(tags: dict[str, str], key: str, default: Any) -> Any:
    try:
        return json.loads(tags[key])
    except (KeyError, ValueError):
        return default


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
