"""The residency guard's detectors against Presidio's, side by side on one synthetic corpus.

    python -m tests.benchmarks.guard            (or: make bench)

Presidio runs in regex-only mode: a NoOpNlpEngine with its Korean recognizers, a PhoneRecognizer
for region KR, and its credit-card and e-mail recognizers, at its default score threshold. The
corpus is generated with a fixed seed: Korean and English sentences carrying every identifier type
in several written forms (with and without context words, full-width digits, zero-width
characters), and look-alikes (dates, order numbers, ISBNs, versions, tracking numbers, prices).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from policies import PolicyEvaluator, load_default_policy
from policies.guard import Guard
from policies.pii import PiiType, detect
from tests.benchmarks.startup import machine
from tests.pii_samples import business_number, luhn_complete, registration_number

console = Console()
Span = tuple[str, int, int]


@dataclass
class Document:
    text: str
    truth: list[Span]


class _Builder:
    def __init__(self) -> None:
        self.text = ""
        self.truth: list[Span] = []

    def add(self, text: str, kind: str | None = None) -> None:
        if kind is not None:
            self.truth.append((kind, len(self.text), len(self.text) + len(text)))
        self.text += text


FULL_WIDTH = {ord(c): chr(ord(c) + 0xFEE0) for c in "0123456789-"}
NEGATIVES = [
    "회의는 2024-11-23 10:30 에 시작합니다.",
    "주문번호 20241123-000123 이 접수되었습니다.",
    "ISBN 978-89-12345-67-8 도서를 반납했습니다.",
    "release v2.3.14 (build 2024.11.23.1) notes",
    "운송장 번호 6091 2345 6789 로 조회하세요.",
    "총액 1,234,567원, 부가세 123,456원",
    "timestamp 1732345678901 and IP 192.168.10.24",
    "사무실 호수 1203호, 좌석 17-42",
]


def _identifier(kind: PiiType, rng: random.Random) -> tuple[str, str]:
    """A written identifier of `kind` and a context phrase that usually accompanies it."""
    year, month, day = rng.randint(50, 99), rng.randint(1, 12), rng.randint(1, 28)
    birth = f"{year:02d}{month:02d}{day:02d}"
    tail = "".join(rng.choice("0123456789") for _ in range(5))
    if kind is PiiType.KR_RRN:
        number = registration_number(birth + rng.choice("12") + tail)
        return rng.choice([f"{number[:6]}-{number[6:]}", number]), "주민등록번호"
    if kind is PiiType.KR_FRN:
        number = registration_number(birth + rng.choice("56") + tail, foreigner=True)
        return f"{number[:6]}-{number[6:]}", "외국인등록번호"
    if kind is PiiType.KR_BRN:
        number = business_number(f"{rng.randint(101, 899)}{rng.randint(1, 99):02d}{rng.randint(0, 9999):04d}")
        return f"{number[:3]}-{number[3:5]}-{number[5:]}", "사업자등록번호"
    if kind is PiiType.KR_PHONE:
        middle, last = rng.randint(1000, 9999), rng.randint(1000, 9999)
        forms = [
            f"010-{middle}-{last}",
            f"010{middle}{last}",
            f"+82 10 {middle} {last}",
            f"02-{middle}-{last}",
            f"031-{middle % 900 + 100}-{last}",
        ]
        return rng.choice(forms), "연락처"
    if kind is PiiType.KR_PASSPORT:
        letter = rng.choice("MS")
        return rng.choice(
            [
                f"{letter}{rng.randint(0, 99999999):08d}",
                f"{letter}{rng.randint(100, 999)}{rng.choice('ABCDEFGH')}{rng.randint(1000, 9999)}",
            ]
        ), "여권번호"
    if kind is PiiType.KR_DRIVER_LICENSE:
        serial = f"{rng.randint(0, 999999):06d}-{rng.randint(0, 99):02d}"
        return rng.choice(
            [f"{rng.randint(11, 26)}-{rng.randint(0, 99):02d}-{serial}", f"서울 {rng.randint(0, 99):02d}-{serial}"]
        ), "운전면허번호"
    if kind is PiiType.CREDIT_CARD:
        card = luhn_complete(rng.choice(["4", "5", "9"]) + "".join(rng.choice("0123456789") for _ in range(14)))
        return " ".join(card[i : i + 4] for i in range(0, 16, 4)).replace(" ", rng.choice([" ", "-"])), "카드번호"
    if kind is PiiType.KR_BANK_ACCOUNT:
        return f"{rng.randint(100, 999)}-{rng.randint(10, 999999):06d}-{rng.randint(10, 99)}-{rng.randint(100, 999)}", (
            "신한은행 계좌"
        )
    user = rng.choice(["hong", "kim.minji", "lee_97", "park+work"])
    return f"{user}@{rng.choice(['example.kr', 'mail.example.com', 'corp.co.kr'])}", "이메일"


def build_corpus(documents: int, seed: int = 2026) -> list[Document]:
    rng = random.Random(seed)
    corpus = []
    for _ in range(documents):
        builder = _Builder()
        builder.add(
            rng.choice(["고객 문의 내용입니다. ", "Customer note: ", "상담 기록: ", "요청 사항을 정리합니다. "])
        )
        for kind in rng.sample(list(PiiType), k=3):
            written, context = _identifier(kind, rng)
            needs_context = kind in {PiiType.KR_BANK_ACCOUNT} or (kind is PiiType.KR_PASSPORT and written[1:].isdigit())
            if needs_context or rng.random() < 0.5:
                builder.add(f"{context}: ")
            if rng.random() < 0.1:
                written = written.translate(FULL_WIDTH)
            elif rng.random() < 0.05:
                written = "\u200b".join(written)
            builder.add(written, kind.value)
            builder.add(rng.choice([" 입니다. ", " 로 확인했습니다. ", ". ", " 을 남겨 주셨습니다. "]))
        builder.add(rng.choice(NEGATIVES) + " ")
        corpus.append(Document(builder.text, builder.truth))
    return corpus


PROSE = [
    "오늘 회의에서는 다음 분기 서비스 개선 방향을 논의했습니다. ",
    "고객 만족도 조사 결과를 바탕으로 상담 절차를 간소화하기로 했습니다. ",
    "The team reviewed the rollout plan and agreed on the next milestones. ",
    "데이터는 국내 데이터센터에만 저장되며 외부로 전송되지 않습니다. ",
    "Please summarise the attached notes in three short sentences. ",
]


def sparse_prompts(count: int, seed: int = 7) -> list[str]:
    """About 1 KB of prose carrying one identifier each: what a typical prompt looks like."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        text = ""
        while len(text.encode()) < 900:
            text += rng.choice(PROSE)
        written, context = _identifier(rng.choice(list(PiiType)), rng)
        prompts.append(f"{text}{context}: {written} 입니다.".encode()[:1024].decode(errors="ignore"))
    return prompts


def latency_ms(guard: Guard, prompts: list[str], samples: int) -> list[float]:
    """p50 and p99 of `guard.inspect` on one prompt, in milliseconds."""
    timings = []
    for index in range(samples):
        prompt = prompts[index % len(prompts)]
        started = time.perf_counter_ns()
        guard.inspect([prompt])
        timings.append((time.perf_counter_ns() - started) / 1e6)
    quantiles = statistics.quantiles(timings, n=100)
    return [quantiles[49], quantiles[98]]


PRESIDIO_TYPES = {"PHONE_NUMBER": "KR_PHONE", "EMAIL_ADDRESS": "EMAIL"}


def presidio_analyzer() -> Callable[[str], list[Span]]:
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        KrBrnRecognizer,
        KrDriverLicenseRecognizer,
        KrFrnRecognizer,
        KrPassportRecognizer,
        KrRrnRecognizer,
        PhoneRecognizer,
    )

    # Presidio's e-mail check asks tldextract, which would download the public-suffix list: use its snapshot.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
    registry = RecognizerRegistry(supported_languages=["ko"])
    for recognizer in (
        KrRrnRecognizer,
        KrFrnRecognizer,
        KrBrnRecognizer,
        KrDriverLicenseRecognizer,
        KrPassportRecognizer,
        CreditCardRecognizer,
        EmailRecognizer,
    ):
        registry.add_recognizer(recognizer(supported_language="ko"))
    registry.add_recognizer(PhoneRecognizer(supported_regions=("KR",), supported_language="ko"))
    engine = AnalyzerEngine(
        registry=registry,
        nlp_engine=NoOpNlpEngine(models=[{"lang_code": "ko", "model_name": "none"}]),
        supported_languages=["ko"],
    )

    def analyze(text: str) -> list[Span]:
        return [(PRESIDIO_TYPES.get(r.entity_type, r.entity_type), r.start, r.end) for r in engine.analyze(text, "ko")]

    return analyze


def ours(text: str) -> list[Span]:
    return [(finding.type.value, finding.start, finding.end) for finding in detect(text)]


def score(corpus: list[Document], analyze: Callable[[str], list[Span]]) -> tuple[dict[str, Counter[str]], float]:
    """Per type: true positives, false positives, false negatives (same type, overlapping span); and seconds."""
    tally: dict[str, Counter[str]] = {kind.value: Counter() for kind in PiiType}
    started = time.perf_counter()
    predictions = [analyze(document.text) for document in corpus]
    elapsed = time.perf_counter() - started
    for document, predicted in zip(corpus, predictions, strict=True):
        matched: set[int] = set()
        for kind, start, end in predicted:
            hit = next(
                (
                    i
                    for i, (k, s, e) in enumerate(document.truth)
                    if k == kind and s < end and start < e and i not in matched
                ),
                None,
            )
            if hit is None:
                tally.setdefault(kind, Counter())["fp"] += 1
            else:
                matched.add(hit)
                tally[kind]["tp"] += 1
        for index, (kind, _, _) in enumerate(document.truth):
            if index not in matched:
                tally[kind]["fn"] += 1
    return tally, elapsed


def ratio(numerator: int, denominator: int) -> str:
    return f"{numerator / denominator:.3f}" if denominator else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=3000, help="corpus size (default 3000)")
    parser.add_argument("--latency-samples", type=int, default=3000)
    arguments = parser.parse_args()
    corpus = build_corpus(arguments.documents)
    megabytes = sum(len(d.text.encode()) for d in corpus) / 1e6
    ours_tally, ours_seconds = score(corpus, ours)
    presidio_tally, presidio_seconds = score(corpus, presidio_analyzer())

    table = Table(title=f"Recall / precision on {len(corpus)} documents ({megabytes:.2f} MB)")
    for column in ("type", "truth", "ours recall", "ours precision", "Presidio recall", "Presidio precision"):
        table.add_column(column, justify="left" if column == "type" else "right")
    totals: dict[str, Counter[str]] = {"ours": Counter(), "presidio": Counter()}
    for kind in PiiType:
        mine, theirs = ours_tally[kind.value], presidio_tally.get(kind.value, Counter())
        totals["ours"].update(mine)
        totals["presidio"].update(theirs)
        truth = mine["tp"] + mine["fn"]
        table.add_row(
            kind.value,
            str(truth),
            ratio(mine["tp"], truth),
            ratio(mine["tp"], mine["tp"] + mine["fp"]),
            ratio(theirs["tp"], truth),
            ratio(theirs["tp"], theirs["tp"] + theirs["fp"]),
        )
    extra_presidio_fp = sum(c["fp"] for k, c in presidio_tally.items() if k not in {t.value for t in PiiType})
    for name, total in totals.items():
        total["fp"] += extra_presidio_fp if name == "presidio" else 0
    truth_total = totals["ours"]["tp"] + totals["ours"]["fn"]
    table.add_row(
        "all identifiers",
        str(truth_total),
        ratio(totals["ours"]["tp"], truth_total),
        ratio(totals["ours"]["tp"], totals["ours"]["tp"] + totals["ours"]["fp"]),
        ratio(totals["presidio"]["tp"], truth_total),
        ratio(totals["presidio"]["tp"], totals["presidio"]["tp"] + totals["presidio"]["fp"]),
    )
    console.print(table)

    guard = Guard(PolicyEvaluator(load_default_policy()))
    dense, current = [], ""
    for document in corpus:
        current += document.text
        if len(current.encode()) >= 1024:
            dense.append(current.encode()[:1024].decode(errors="ignore"))
            current = ""
    dense_p50, dense_p99 = latency_ms(guard, dense, arguments.latency_samples)
    sparse_p50, sparse_p99 = latency_ms(guard, sparse_prompts(500), arguments.latency_samples)
    speed = Table(title=f"Throughput and latency, one core: {machine()}")
    for column in ("measure", "ours", "Presidio", "ratio"):
        speed.add_column(column, justify="left" if column == "measure" else "right")
    ours_rate, presidio_rate = megabytes / ours_seconds, megabytes / presidio_seconds
    speed.add_row("throughput (MB/s)", f"{ours_rate:.2f}", f"{presidio_rate:.3f}", f"{ours_rate / presidio_rate:.0f}×")
    speed.add_row(
        "guard, 1 KB prompt with ~15 identifiers: p50 / p99 (ms)", f"{dense_p50:.3f} / {dense_p99:.3f}", "", ""
    )
    speed.add_row("guard, 1 KB prose with 1 identifier: p50 / p99 (ms)", f"{sparse_p50:.3f} / {sparse_p99:.3f}", "", "")
    console.print(speed)


if __name__ == "__main__":
    main()
