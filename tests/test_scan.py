"""`sovereign scan`: the training-data guard, with its stable JSON findings, reports and redacted copies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policies import default_policy_path
from sovereign.cli import app

runner = CliRunner()
RRN = "900101-1234568"  # valid checksum


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "nested").mkdir(parents=True)
    (root / "chat.jsonl").write_text(
        json.dumps({"text": f"주민번호 {RRN} 고객"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"text": "연락처 010-1234-5678, 메일 hong@example.kr"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"text": "깨끗한 문장"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    (root / "nested" / "notes.csv").write_bytes("id,note\r\n1,전화 02-123-4567\r\n2,none\r\n".encode())
    (root / "nested" / "image.png").write_bytes(b"\x89PNG not scanned")
    return root


def test_json_findings_point_at_the_raw_lines(corpus: Path) -> None:
    path = corpus / "chat.jsonl"
    result = runner.invoke(app, ["scan", str(path), "--json"])
    assert result.exit_code == 1
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    assert [set(f) for f in findings] == [{"type", "line", "start", "end"}] * 3
    raw_lines = path.read_text(encoding="utf-8").splitlines()
    assert [(f["type"], raw_lines[f["line"] - 1][f["start"] : f["end"]]) for f in findings] == [
        ("KR_RRN", RRN),
        ("KR_PHONE", "010-1234-5678"),
        ("EMAIL", "hong@example.kr"),
    ]
    assert "training forbidden" in result.stderr


def test_directory_scan_with_report_and_redacted_copy(corpus: Path, tmp_path: Path) -> None:
    report, clean = tmp_path / "scan.json", tmp_path / "clean"
    result = runner.invoke(app, ["scan", str(corpus), "--report", str(report), "--redact-to", str(clean)])
    assert result.exit_code == 1
    assert "✗ training forbidden: found personal" in result.stdout
    data = json.loads(report.read_text())
    assert data["trainingAllowed"] is False
    assert data["countsByType"] == {"EMAIL": 1, "KR_PHONE": 2, "KR_RRN": 1}
    assert data["countsByClass"] == {"personal": 3, "unique-identifier": 1}
    assert {t["dataClass"]: t["rule"] for t in data["training"]} == {
        "personal": "spec.dataClasses.personal.trainingAllowed",
        "unique-identifier": "spec.dataClasses.unique-identifier.trainingAllowed",
    }
    assert [Path(f["path"]).name for f in data["files"]] == ["chat.jsonl", "notes.csv"]
    for entry in data["files"]:
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
    assert data["policy"]["name"] == "kr-default"
    # The redacted copy mirrors the tree, keeps line endings and JSON validity, and holds no identifier.
    assert sorted(p.relative_to(clean).as_posix() for p in clean.rglob("*") if p.is_file()) == [
        "chat.jsonl",
        "nested/notes.csv",
    ]
    assert (clean / "nested" / "notes.csv").read_bytes() == "id,note\r\n1,전화 [KR_PHONE]\r\n2,none\r\n".encode()
    rows = [json.loads(line)["text"] for line in (clean / "chat.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == ["주민번호 [KR_RRN] 고객", "연락처 [KR_PHONE], 메일 [EMAIL]", "깨끗한 문장"]


def test_markdown_report(corpus: Path, tmp_path: Path) -> None:
    report = tmp_path / "scan.md"
    runner.invoke(app, ["scan", str(corpus / "chat.jsonl"), "--report", str(report)])
    text = report.read_text()
    assert text.startswith("# Training-data scan\n")
    assert "- Training on this data: **forbidden**" in text
    assert "| unique-identifier | 1 | deny | `spec.dataClasses.unique-identifier.trainingAllowed` |" in text


def test_clean_data_may_be_used_for_training(tmp_path: Path) -> None:
    path = tmp_path / "clean.txt"
    path.write_text("안녕하세요\n2024-11-23 회의록\nversion 1.2.3\n", encoding="utf-8")
    result = runner.invoke(app, ["scan", str(path)])
    assert result.exit_code == 0
    assert "✓ training allowed by policy kr-default" in result.stdout


def test_the_policy_decides_not_the_scanner(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    text = default_policy_path().read_text(encoding="utf-8")
    policy.write_text(text.replace("    EMAIL: personal", "    EMAIL: internal"), encoding="utf-8")
    data = tmp_path / "emails.txt"
    data.write_text("contact hong@example.kr\n", encoding="utf-8")
    assert runner.invoke(app, ["scan", str(data)]).exit_code == 1
    assert runner.invoke(app, ["scan", str(data), "--policy", str(policy)]).exit_code == 0


def test_non_utf8_input_names_file_and_line_and_leaves_no_partial_copy(tmp_path: Path) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes("첫 줄\n".encode() + "둘째 줄".encode("euc-kr") + b"\n")
    clean = tmp_path / "clean"
    result = runner.invoke(app, ["scan", str(path), "--redact-to", str(clean)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: `{path}` line 2 is not UTF-8 (byte 1): convert it first")
    assert list(clean.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["scan", "/nonexistent/data.txt"], "error: `/nonexistent/data.txt` does not exist"),
        (["scan", ".", "--json"], "error: --json takes exactly one file"),
        (["scan", "README.md", "--report", "scan.pdf"], "error: --report `scan.pdf` must end in .json or .md"),
    ],
)
def test_usage_errors(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
