"""The audit log: hash chain, MACs, checkpoints, rotation, durability and `sovereign audit verify`."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policies.audit import GENESIS, AuditLog, LocalKey, verify
from sovereign.cli import app

runner = CliRunner()


@pytest.fixture
def key(tmp_path: Path) -> LocalKey:
    return LocalKey.load_or_create(tmp_path / "audit.key")


def write_log(directory: Path, key: LocalKey, count: int, **options: int) -> AuditLog:
    log = AuditLog(directory, key, **options)
    for index in range(count):
        log.append(
            "request",
            tenant="local",
            principal="anonymous",
            source="127.0.0.1",
            model="axk1-tiny",
            decision="allow" if index % 3 else "deny",
            rule="spec.dataClasses.unique-identifier",
            pii={"KR_RRN": 1} if index % 3 == 0 else {},
            promptHmac=log.prompt_hmac(f"prompt {index}"),
        )
    return log


def segment_lines(directory: Path) -> list[str]:
    return (directory / "audit-000001.jsonl").read_text().splitlines()


def rewrite(directory: Path, lines: list[str]) -> None:
    (directory / "audit-000001.jsonl").write_text("\n".join(lines) + "\n")


def test_intact_log_verifies_with_and_without_the_key(tmp_path: Path, key: LocalKey) -> None:
    write_log(tmp_path / "log", key, 12, checkpoint_every=5)
    result = verify(tmp_path / "log", key)
    assert (result.intact, result.records, result.checkpoints, result.from_genesis) == (True, 14, 2, True)
    assert verify(tmp_path / "log").intact
    first = json.loads(segment_lines(tmp_path / "log")[0])
    assert first["prev"] == GENESIS
    assert first["seq"] == 0


def test_records_hold_no_raw_prompt(tmp_path: Path, key: LocalKey) -> None:
    log = AuditLog(tmp_path / "log", key)
    log.append("request", promptHmac=log.prompt_hmac("주민번호 900101-1234568"), pii={"KR_RRN": 1})
    text = (tmp_path / "log" / "audit-000001.jsonl").read_text()
    assert "900101" not in text
    assert log.prompt_hmac("주민번호 900101-1234568") in text


def test_edited_record_is_named(tmp_path: Path, key: LocalKey) -> None:
    write_log(tmp_path / "log", key, 6)
    lines = segment_lines(tmp_path / "log")
    lines[2] = lines[2].replace('"decision":"allow"', '"decision":"deny"')
    rewrite(tmp_path / "log", lines)
    result = verify(tmp_path / "log")
    assert (
        result.problem
        == "record 2: its content does not match the hash in record 3 (audit-000001.jsonl line 4); it was edited"
    )
    assert result.records == 2


def test_edited_last_record_needs_the_key(tmp_path: Path, key: LocalKey) -> None:
    write_log(tmp_path / "log", key, 4)
    lines = segment_lines(tmp_path / "log")
    lines[-1] = lines[-1].replace('"tenant":"local"', '"tenant":"other"')
    rewrite(tmp_path / "log", lines)
    assert verify(tmp_path / "log").intact
    assert verify(tmp_path / "log", key).problem == (
        "record 3 (audit-000001.jsonl line 4): its MAC does not match its content; it was edited"
    )


def delete_fourth(lines: list[str]) -> None:
    del lines[3]


def insert_copy_of_second(lines: list[str]) -> None:
    lines.insert(3, lines[1])


def swap_third_and_fourth(lines: list[str]) -> None:
    lines[2], lines[3] = lines[3], lines[2]


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (delete_fourth, "record 4 (audit-000001.jsonl line 4): expected record 3; missing records before it"),
        (insert_copy_of_second, "record 1 (audit-000001.jsonl line 4): expected record 3; out of order or inserted"),
        (swap_third_and_fourth, "record 3 (audit-000001.jsonl line 3): expected record 2; missing records before it"),
    ],
    ids=["deleted", "inserted", "reordered"],
)
def test_removed_added_or_moved_records_are_named(
    tmp_path: Path, key: LocalKey, tamper: Callable[[list[str]], None], problem: str
) -> None:
    write_log(tmp_path / "log", key, 6)
    lines = segment_lines(tmp_path / "log")
    tamper(lines)
    rewrite(tmp_path / "log", lines)
    assert verify(tmp_path / "log").problem == problem


def test_truncated_last_line_is_tolerated_reported_and_repaired(tmp_path: Path, key: LocalKey) -> None:
    log = write_log(tmp_path / "log", key, 5)
    segment = tmp_path / "log" / "audit-000001.jsonl"
    segment.write_bytes(segment.read_bytes() + b'{"seq":5,"time":"2026-11')  # a crash mid-write
    result = verify(tmp_path / "log", key)
    assert result.intact
    assert result.records == 5
    assert (
        result.truncated_tail == "audit-000001.jsonl line 6 is incomplete (a write was cut short) and was not verified"
    )
    log.append("request", decision="allow")
    repaired = verify(tmp_path / "log", key)
    assert (repaired.intact, repaired.records, repaired.truncated_tail) == (True, 6, None)


def test_rotation_keeps_one_chain(tmp_path: Path, key: LocalKey) -> None:
    write_log(tmp_path / "log", key, 40, max_segment_bytes=2000)
    segments = sorted((tmp_path / "log").glob("audit-*.jsonl"))
    assert len(segments) > 3
    result = verify(tmp_path / "log", key)
    assert result.intact
    assert result.segments == len(segments)
    assert result.checkpoints == len(segments) - 1  # one sealing each full segment
    first_of_second = json.loads(segments[1].read_text().splitlines()[0])
    last_of_first = segments[0].read_bytes().rstrip(b"\n").split(b"\n")[-1]
    assert first_of_second["prev"] == hashlib.sha256(last_of_first).hexdigest()
    # Retention may drop the oldest segments; the rest still verifies, anchored after the gap.
    segments[0].unlink()
    kept = verify(tmp_path / "log", key)
    assert kept.intact
    assert not kept.from_genesis
    assert kept.first_seq == first_of_second["seq"]


def test_removing_a_middle_segment_is_detected(tmp_path: Path, key: LocalKey) -> None:
    write_log(tmp_path / "log", key, 40, max_segment_bytes=2000)
    sorted((tmp_path / "log").glob("audit-*.jsonl"))[1].unlink()
    assert "missing records before it" in verify(tmp_path / "log", key).problem


def test_checkpoint_signatures_are_checked(tmp_path: Path, key: LocalKey) -> None:
    write_log(tmp_path / "log", key, 6, checkpoint_every=3)
    other = LocalKey.load_or_create(tmp_path / "other.key")
    assert "its MAC does not match" in verify(tmp_path / "log", other).problem


def _append_many(directory: str, key_path: str, count: int) -> None:
    log = AuditLog(Path(directory), LocalKey.load(Path(key_path)), max_segment_bytes=4000)
    for index in range(count):
        log.append("request", decision="allow", n=index)


def test_concurrent_writers_keep_one_valid_chain(tmp_path: Path, key: LocalKey) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_append_many, args=(str(tmp_path / "log"), str(tmp_path / "audit.key"), 30))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    result = verify(tmp_path / "log", key)
    assert result.intact, result.problem
    assert result.records - result.checkpoints == 90


def test_cli_verify(tmp_path: Path, key: LocalKey) -> None:
    write_log(tmp_path / "log", key, 6, checkpoint_every=4)
    ok = runner.invoke(app, ["audit", "verify", str(tmp_path / "log"), "--key", str(tmp_path / "audit.key")])
    assert ok.exit_code == 0
    assert ok.stdout.strip() == (
        "✓ intact: 7 records in 1 segment(s) from genesis, 1 checkpoint(s); chain, MACs and signatures"
    )
    lines = segment_lines(tmp_path / "log")
    del lines[1]
    rewrite(tmp_path / "log", lines)
    bad = runner.invoke(app, ["audit", "verify", str(tmp_path / "log")])
    assert bad.exit_code == 1
    assert bad.stderr.strip() == (
        "error: tampering detected at record 2 (audit-000001.jsonl line 2): "
        "expected record 1; missing records before it"
    )
    missing = runner.invoke(app, ["audit", "verify", str(tmp_path / "empty")])
    assert missing.exit_code == 2


class UnreachableSigner:
    name = "openbao-transit:audit-checkpoints"

    def sign(self, data: bytes) -> str:
        raise ConnectionError("OpenBao is unreachable")

    def verify(self, data: bytes, signature: str) -> bool:
        raise AssertionError("nothing was signed")


def test_a_signer_outage_skips_the_checkpoint_but_keeps_every_record(tmp_path: Path, key: LocalKey) -> None:
    log = AuditLog(tmp_path, key, UnreachableSigner(), checkpoint_every=2)
    for number in range(5):
        log.append("request", n=number)
    records = [json.loads(line) for line in (tmp_path / "audit-000001.jsonl").read_text().splitlines()]
    assert [record["n"] for record in records] == [0, 1, 2, 3, 4]
    result = verify(tmp_path, key)
    assert (result.intact, result.records, result.checkpoints) == (True, 5, 0)
