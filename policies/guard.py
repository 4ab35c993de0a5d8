"""Apply the policy's data-class rules to text on the request path: block, redact or allow.

Every rule comes from the policy document: which data class each identifier type belongs to
(`spec.identifiers`), and what happens to each class (`spec.dataClasses`). Nothing is hard-coded.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from policies.evaluation import Effect, PolicyEvaluator, in_country_rule
from policies.model import DataClass, RuleAction
from policies.pii import Finding, PiiType, detect, redact


@dataclass(frozen=True)
class Verdict:
    """What the guard decided for a request, with the evidence an audit record needs (never the values)."""

    effect: Effect
    rule: str
    counts: dict[str, int]
    data_classes: frozenset[DataClass]
    in_country_rule: str | None

    @property
    def in_country_only(self) -> bool:
        """Some data in the request must stay in the jurisdiction (`in_country_rule` says which rule)."""
        return self.in_country_rule is not None

    @property
    def blocked_types(self) -> list[str]:
        return sorted(self.counts) if self.effect is Effect.DENY else []


class Guard:
    def __init__(self, evaluator: PolicyEvaluator) -> None:
        self.evaluator = evaluator
        spec = evaluator.policy.spec
        self._action = {pii: spec.data_classes.rule_for(cls).action for pii, cls in spec.identifiers.items()}
        self._masked_in_output = frozenset(
            pii for pii, action in self._action.items() if action in {RuleAction.REDACT, RuleAction.BLOCK}
        )

    def inspect(self, texts: list[str]) -> tuple[Verdict, list[str]]:
        """Decide on a request's texts; return the verdict and the texts as the model may see them."""
        spec = self.evaluator.policy.spec
        findings = [detect(text) for text in texts]
        found = [finding for per_text in findings for finding in per_text]
        classes = frozenset(spec.identifiers[finding.type] for finding in found)
        staying_rule = next(
            (
                in_country_rule(data_class)
                for data_class in DataClass
                if data_class in classes and spec.data_classes.rule_for(data_class).in_country_only
            ),
            None,
        )

        def verdict(effect: Effect, deciding: list[Finding]) -> Verdict:
            # The rule cited is that of the first data class, in policy order, among the deciding findings.
            first = min((spec.identifiers[f.type] for f in deciding), key=list(DataClass).index, default=None)
            rule = f"spec.dataClasses.{first.value}" if first else "spec.dataClasses"
            counted = deciding if effect is Effect.DENY else found
            counts = dict(sorted(Counter(finding.type.value for finding in counted).items()))
            return Verdict(effect, rule, counts, classes, staying_rule)

        blocked = [f for f in found if self._action[f.type] is RuleAction.BLOCK]
        if blocked:
            return verdict(Effect.DENY, blocked), texts
        to_redact = [[f for f in per_text if self._action[f.type] is RuleAction.REDACT] for per_text in findings]
        if any(to_redact):
            redacted = [redact(text, spans) for text, spans in zip(texts, to_redact, strict=True)]
            return verdict(Effect.REDACT, [f for per_text in to_redact for f in per_text]), redacted
        return verdict(Effect.ALLOW, []), texts

    def mask_output(self, text: str) -> str:
        """A whole answer with identifiers of redacted or blocked classes masked."""
        return redact(text, detect(text, self._masked_in_output))

    def output_masker(self) -> OutputMasker:
        """A masker for one streamed answer channel: identifiers of redacted or blocked classes are masked."""
        return OutputMasker(self._masked_in_output)


# Characters that can continue an identifier: digits, Latin letters, e-mail punctuation, separators,
# their full-width forms and invisible characters. Text after anything else is safe to release.
_MAY_CONTINUE = re.compile(r"[0-9A-Za-z@._%+\-() \t\u200b-\u200d\u2060\ufeff\u00ad\uff01-\uff5e\u2010-\u2015\u2212]*\Z")


class OutputMasker:
    """Masks identifiers in streamed text, even when one is split across deltas.

    It holds back only the tail that could still grow into an identifier (at most `HOLD`
    characters), so prose streams with little delay, and keeps the released text's last
    `CONTEXT` characters so context words still count.
    """

    HOLD = 64
    CONTEXT = 40

    def __init__(self, masked: frozenset[PiiType]) -> None:
        self._masked = masked
        self._released = ""
        self._pending = ""

    def feed(self, text: str) -> str:
        self._pending += text
        tail = _MAY_CONTINUE.search(self._pending)
        held = min(len(tail.group()) if tail else 0, self.HOLD)
        # Release nothing while the whole buffer might still be one identifier.
        return self._release(len(self._pending) - held) if len(self._pending) > held else ""

    def flush(self) -> str:
        return self._release(len(self._pending))

    def _release(self, count: int) -> str:
        if not self._masked:
            released, self._pending = self._pending[:count], self._pending[count:]
            return released
        window = self._released + self._pending
        offset = len(self._released)
        cut = offset + count
        findings = [f for f in detect(window, self._masked) if f.end > offset]
        for finding in findings:
            if finding.start < cut < finding.end:
                cut = max(offset, finding.start)
        inside = [
            Finding(f.type, max(f.start, offset) - offset, f.end - offset, f.score) for f in findings if f.end <= cut
        ]
        raw = window[offset:cut]
        self._released = (self._released + raw)[-self.CONTEXT :]
        self._pending = window[cut:]
        return redact(raw, inside)
