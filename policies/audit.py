"""A tamper-evident audit log: append-only JSONL segments, hash-chained, with signed checkpoints.

Every record carries the SHA-256 of the previous record's line (`prev`) and an HMAC of its own
content (`mac`), so an edited, deleted, inserted or reordered record breaks verification at that
record. Segments rotate by size; the first record of a new segment chains to the last record of
the one before, so rotation keeps one chain. Writes are appended under an exclusive file lock and
fsync'ed: several processes may write, and a crash mid-write leaves at most a truncated last line,
which the next writer repairs and `verify` tolerates and reports. Prompts are never stored: only
an HMAC of them, which lets an auditor check whether a given text was sent without revealing any.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

GENESIS = "0" * 64
logger = logging.getLogger(__name__)
SEGMENT_PATTERN = "audit-*.jsonl"


class Signer(Protocol):
    """Signs checkpoints; the local key below, or OpenBao transit in a cluster."""

    name: str

    def sign(self, data: bytes) -> str: ...

    def verify(self, data: bytes, signature: str) -> bool: ...


@dataclass(frozen=True)
class LocalKey:
    """An HMAC-SHA256 key kept in a file readable only by its owner."""

    secret: bytes
    name: str = "local-hmac-sha256"

    @classmethod
    def load(cls, path: Path) -> LocalKey:
        return cls(bytes.fromhex(path.read_text().strip()))

    @classmethod
    def load_or_create(cls, path: Path) -> LocalKey:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))
        return cls.load(path)

    def mac(self, purpose: str, data: bytes) -> str:
        return hmac.new(self.secret, purpose.encode() + b"\0" + data, hashlib.sha256).hexdigest()

    def sign(self, data: bytes) -> str:
        return self.mac("checkpoint", data)

    def verify(self, data: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(data), signature)


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@dataclass
class AuditLog:
    """Appends records to `directory`; safe to share between processes."""

    directory: Path
    key: LocalKey
    signer: Signer | None = None
    max_segment_bytes: int = 64 * 2**20
    checkpoint_every: int = 1000
    _signer: Signer = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._signer = self.signer or self.key
        self._lock_path = self.directory / ".lock"

    def prompt_hmac(self, text: str) -> str:
        return self.key.mac("prompt", text.encode())

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one record durably and return it."""
        with self._locked():
            segment, seq, prev = self._tail()
            if segment.exists() and segment.stat().st_size >= self.max_segment_bytes:
                if (checkpoint := self._checkpoint(seq, prev)) is not None:
                    prev, seq = self._write(segment, checkpoint), seq + 1
                segment = self._segment(int(segment.stem.split("-")[1]) + 1)
            record = {"seq": seq, "time": _now(), "kind": kind, **fields, "prev": prev}
            record["mac"] = self.key.mac("record", _canonical(record))
            prev = self._write(segment, record)
            if (seq + 1) % self.checkpoint_every == 0 and (checkpoint := self._checkpoint(seq + 1, prev)) is not None:
                self._write(segment, checkpoint)
            return record

    def _checkpoint(self, seq: int, prev: str) -> dict[str, Any] | None:
        """A signed checkpoint, or None when the signer is unavailable: the record is kept, the checkpoint
        skipped, and the next one covers the chain so far."""
        try:
            signature = self._signer.sign(prev.encode())
        except Exception as error:  # any signer (OpenBao transit) outage: never lose the record itself
            logger.error("audit checkpoint %d not signed: %s", seq, error)
            return None
        record = {"seq": seq, "time": _now(), "kind": "checkpoint", "signer": self._signer.name, "prev": prev}
        record["signature"] = signature
        record["mac"] = self.key.mac("record", _canonical(record))
        return record

    def _write(self, segment: Path, record: dict[str, Any]) -> str:
        line = _canonical(record)
        with segment.open("ab") as file:
            file.write(line + b"\n")
            file.flush()
            os.fsync(file.fileno())
        return _line_hash(line)

    def _tail(self) -> tuple[Path, int, str]:
        """The segment to append to, the next sequence number and the hash to chain to."""
        segments = sorted(self.directory.glob(SEGMENT_PATTERN))
        if not segments:
            return self._segment(1), 0, GENESIS
        last = segments[-1]
        _repair_truncated_tail(last)
        line = _last_line(last) or (_last_line(segments[-2]) if len(segments) > 1 else None)
        if line is None:
            return last, 0, GENESIS
        return last, json.loads(line)["seq"] + 1, _line_hash(line)

    def _segment(self, number: int) -> Path:
        return self.directory / f"audit-{number:06d}.jsonl"

    def _locked(self) -> _FileLock:
        return _FileLock(self._lock_path)


def open_log(state_dir: Path, signer: Signer | None = None) -> AuditLog:
    """The audit log of an installation: segments in `state_dir/audit`, its key in `state_dir/audit.key`.

    Checkpoints are signed by `signer` (OpenBao transit) when given, else by the local key.
    """
    return AuditLog(state_dir / "audit", LocalKey.load_or_create(state_dir / "audit.key"), signer)


def read_records(directory: Path, tenant: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` records, oldest first; with `tenant`, only records naming that tenant."""
    selected: list[dict[str, Any]] = []
    for segment in sorted(directory.glob(SEGMENT_PATTERN), reverse=True):
        for line in reversed(segment.read_bytes().splitlines()):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash; `verify` reports it
            if tenant is None or record.get("tenant") == tenant:
                selected.append(record)
                if len(selected) == limit:
                    return selected[::-1]
    return selected[::-1]


class _FileLock:
    def __init__(self, path: Path) -> None:
        self._path = path

    def __enter__(self) -> None:
        self._file = self._path.open("a")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _repair_truncated_tail(segment: Path) -> None:
    """Cut a partial last line left by a crash, so the next record starts on a line of its own."""
    size = segment.stat().st_size
    if size == 0:
        return
    with segment.open("rb+") as file:
        file.seek(max(0, size - 1))
        if file.read(1) == b"\n":
            return
        data = segment.read_bytes()
        file.truncate(data.rfind(b"\n") + 1)


def _last_line(segment: Path, block: int = 8192) -> bytes | None:
    """The last complete line, read backwards from the end so large segments cost one seek."""
    with segment.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        data = b""
        while end > 0:
            start = max(0, end - block)
            file.seek(start)
            data = file.read(end - start) + data
            end = start
            lines = [line for line in data.split(b"\n") if line]
            if len(lines) > 1 or (lines and end == 0):
                return lines[-1]
    return None


# --- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """The result of checking a log: intact up to `records`, or the first bad record and why."""

    records: int
    segments: int
    checkpoints: int
    first_seq: int | None
    from_genesis: bool
    problem: str | None = None
    truncated_tail: str | None = None
    unverified_signers: tuple[str, ...] = ()

    @property
    def intact(self) -> bool:
        return self.problem is None


def verify(path: Path, key: LocalKey | None = None, signer: Signer | None = None) -> Verification:
    """Check the chain of a log directory (or one segment); with the key, also every MAC and signature."""
    segments = sorted(path.glob(SEGMENT_PATTERN)) if path.is_dir() else [path]
    if not segments:
        raise FileNotFoundError(f"no audit segments ({SEGMENT_PATTERN}) in `{path}`")
    records = checkpoints = 0
    first_seq: int | None = None
    from_genesis = False
    prev_hash: str | None = None
    expected_seq: int | None = None
    truncated: str | None = None
    unverified: set[str] = set()

    def result(problem: str | None = None) -> Verification:
        return Verification(
            records, len(segments), checkpoints, first_seq, from_genesis, problem, truncated, tuple(sorted(unverified))
        )

    for segment, number, line, complete in _lines(segments):
        where = f"{segment.name} line {number}"
        if not complete:
            if segment == segments[-1]:
                truncated = f"{where} is incomplete (a write was cut short) and was not verified"
                continue
            return result(f"{where}: line is incomplete in the middle of the log")
        try:
            record = json.loads(line)
            seq = record["seq"]
        except (ValueError, KeyError, TypeError):
            return result(f"{where}: not a valid audit record")
        label = f"record {seq} ({where})"
        if expected_seq is not None and seq != expected_seq:
            how = "missing records before it" if seq > expected_seq else "out of order or inserted"
            return result(f"{label}: expected record {expected_seq}; {how}")
        if prev_hash is not None and record.get("prev") != prev_hash:
            records -= 1  # the previous record, counted as good, is the one that changed
            return result(f"record {seq - 1}: its content does not match the hash in {label}; it was edited")
        if first_seq is None:
            # A chain that does not start at genesis lost its first segments, e.g. to the retention period.
            first_seq, from_genesis = seq, record.get("prev") == GENESIS
        if key is not None:
            body = {name: value for name, value in record.items() if name != "mac"}
            if not hmac.compare_digest(key.mac("record", _canonical(body)), str(record.get("mac", ""))):
                return result(f"{label}: its MAC does not match its content; it was edited")
        if record.get("kind") == "checkpoint":
            checkpoints += 1
            checker = next((s for s in (signer, key) if s is not None and s.name == record.get("signer")), None)
            if checker is None:
                unverified.add(str(record.get("signer")))
            elif not checker.verify(str(record["prev"]).encode(), str(record.get("signature"))):
                return result(f"{label}: checkpoint signature is invalid")
        records += 1
        prev_hash = _line_hash(line)
        expected_seq = seq + 1
    return result()


def _lines(segments: list[Path]) -> Iterator[tuple[Path, int, bytes, bool]]:
    """Each line with its segment and number; `complete` is False for a last line without newline."""
    for segment in segments:
        data = segment.read_bytes()
        parts = data.split(b"\n")
        for number, line in enumerate(parts, start=1):
            if number == len(parts):
                if line:
                    yield segment, number, line, False
                break
            yield segment, number, line, True
