"""Scan training and distillation data for identifiers, line by line, and judge it against the policy.

Offsets are character offsets within each raw line of the original file (for JSONL and CSV too),
so a finding `{"type", "line", "start", "end"}` points at the exact characters in the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from policies.evaluation import Decision, PolicyEvaluator
from policies.pii import Finding, detect, redact

SCANNED_SUFFIXES = frozenset({".txt", ".md", ".jsonl", ".json", ".csv", ".tsv"})


class ScanError(ValueError):
    """Input that cannot be scanned; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class LineFinding:
    path: Path
    line: int
    finding: Finding

    def as_json(self) -> dict[str, Any]:
        """The stable one-object-per-finding format of `sovereign scan --json`."""
        return {
            "type": self.finding.type.value,
            "line": self.line,
            "start": self.finding.start,
            "end": self.finding.end,
        }


@dataclass
class FileSummary:
    path: Path
    sha256: str = ""
    lines: int = 0
    bytes: int = 0
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class ScanReport:
    """What a scan found, and whether the policy allows training on it."""

    policy: str
    policy_sha256: str
    started_at: str
    files: list[FileSummary]
    counts_by_type: dict[str, int]
    counts_by_class: dict[str, int]
    training: list[tuple[str, Decision]]

    @property
    def training_allowed(self) -> bool:
        return all(decision.allowed for _, decision in self.training)

    def as_json(self) -> dict[str, Any]:
        return {
            "policy": {"name": self.policy, "sha256": self.policy_sha256},
            "startedAt": self.started_at,
            "trainingAllowed": self.training_allowed,
            "countsByType": self.counts_by_type,
            "countsByClass": self.counts_by_class,
            "training": [
                {
                    "dataClass": data_class,
                    "effect": decision.effect.value,
                    "rule": decision.rule,
                    "reason": decision.reason,
                }
                for data_class, decision in self.training
            ],
            "files": [
                {
                    "path": str(summary.path),
                    "sha256": summary.sha256,
                    "lines": summary.lines,
                    "bytes": summary.bytes,
                    "countsByType": dict(sorted(summary.counts.items())),
                }
                for summary in self.files
            ],
        }

    def as_markdown(self) -> str:
        verdict = "allowed" if self.training_allowed else "**forbidden**"
        lines = [
            "# Training-data scan",
            "",
            f"- Policy: `{self.policy}` (sha256 `{self.policy_sha256}`)",
            f"- Started: {self.started_at}",
            f"- Training on this data: {verdict}",
            "",
            "| identifier | count |",
            "| --- | ---: |",
            *(f"| {name} | {count} |" for name, count in self.counts_by_type.items()),
            "",
            "| data class | count | training | rule |",
            "| --- | ---: | --- | --- |",
            *(
                f"| {data_class} | {self.counts_by_class[data_class]} | {decision.effect.value} | `{decision.rule}` |"
                for data_class, decision in self.training
            ),
            "",
            "| file | sha256 | lines | bytes |",
            "| --- | --- | ---: | ---: |",
            *(f"| `{s.path}` | `{s.sha256}` | {s.lines} | {s.bytes} |" for s in self.files),
        ]
        return "\n".join(lines) + "\n"


def input_files(paths: list[Path]) -> list[tuple[Path, Path]]:
    """Each file to scan with the root it was found under; directories contribute their data files."""
    files: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            files += [
                (found, path)
                for found in sorted(path.rglob("*"))
                if found.is_file() and found.suffix.lower() in SCANNED_SUFFIXES
            ]
        elif path.is_file():
            files.append((path, path.parent))
        else:
            raise ScanError(f"`{path}` does not exist")
    return files


def scan(
    paths: list[Path],
    evaluator: PolicyEvaluator,
    redact_to: Path | None = None,
    on_finding: Callable[[LineFinding], None] = lambda _: None,
    on_progress: Callable[[int], None] = lambda _: None,
) -> ScanReport:
    """Scan files and directories, reporting findings and bytes read as they come."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    summaries = []
    for path, root in input_files(paths):
        target = redact_to / path.relative_to(root) if redact_to is not None else None
        summary = FileSummary(path)
        for line_finding in _scan_file(path, summary, target, on_progress):
            summary.counts[line_finding.finding.type.value] += 1
            on_finding(line_finding)
        summaries.append(summary)
    by_type: Counter[str] = Counter()
    for summary in summaries:
        by_type.update(summary.counts)
    by_class: Counter[str] = Counter()
    for name, count in by_type.items():
        by_class[evaluator.data_class_of(name).value] += count
    return ScanReport(
        policy=evaluator.policy.metadata.name,
        policy_sha256=evaluator.policy.digest(),
        started_at=started_at,
        files=summaries,
        counts_by_type=dict(sorted(by_type.items())),
        counts_by_class=dict(sorted(by_class.items())),
        training=[(data_class, evaluator.may_train_on(data_class)) for data_class in sorted(by_class)],
    )


def _scan_file(
    path: Path, summary: FileSummary, target: Path | None, on_progress: Callable[[int], None]
) -> Iterator[LineFinding]:
    digest = hashlib.sha256()
    with atomic_text_file(target) as copy, path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            digest.update(raw)
            summary.lines, summary.bytes = number, summary.bytes + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ScanError(
                    f"`{path}` line {number} is not UTF-8 (byte {error.start + 1}): convert it first"
                ) from None
            body = line.rstrip("\r\n")
            findings = detect(body)
            for finding in findings:
                yield LineFinding(path, number, finding)
            if copy is not None:
                copy.write(redact(body, findings) + line[len(body) :])
            on_progress(len(raw))
    summary.sha256 = digest.hexdigest()


@contextmanager
def atomic_text_file(target: Path | None) -> Iterator[TextIO | None]:
    """A text file that appears only once complete: written beside its target, then renamed into place."""
    if target is None:
        yield None
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as copy:
            yield copy
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
