"""ROUGE-L (longest common subsequence F-measure) without a dependency, for the study.

Tokens are lowercased runs of letters/digits (``\\w+``), as in the usual ROUGE tokenisation
without stemming. ``rouge_l`` returns the F1 (``β = 1``) of one candidate against one
reference; ``rouge_l_corpus`` averages it over pairs (the "average ROUGE-L" of the MTA paper's
tables, on a 0-100 scale there; here on 0-1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["lcs_length", "rouge_l", "rouge_l_corpus", "rouge_tokens"]

_TOKEN = re.compile(r"\w+", re.UNICODE)


def rouge_tokens(text: str) -> list[str]:
    """Lowercased ``\\w+`` tokens of ``text``."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a)·len(b)) time,
    O(min) memory)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1]: ``2·P·R / (P + R)`` with ``P = LCS/|cand|``, ``R = LCS/|ref|``.

    0 when either side has no tokens.
    """
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    if not c or not r:
        return 0.0
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def rouge_l_corpus(candidates: Sequence[str], references: Sequence[str]) -> float:
    """Mean :func:`rouge_l` over aligned (candidate, reference) pairs."""
    if len(candidates) != len(references):
        raise ValueError(
            f"rouge_l_corpus: {len(candidates)} candidates for {len(references)} references"
        )
    if not candidates:
        raise ValueError("rouge_l_corpus: no pairs")
    return sum(rouge_l(c, r) for c, r in zip(candidates, references, strict=True)) / len(candidates)


def _self_check() -> None:
    """Known values (hand-computed); run by benchmarks.study.quality before it trusts the metric."""
    assert lcs_length("a b c d e".split(), "a c e".split()) == 3
    assert lcs_length([], ["a"]) == 0
    # cand 'the cat sat on the mat' (6), ref 'the cat is on the mat' (6): LCS 5 -> F1 5/6
    assert abs(rouge_l("The cat sat on the mat.", "the cat is on the mat") - 5 / 6) < 1e-12
    # cand 2 tokens, ref 4 tokens, LCS 2: P=1, R=0.5 -> F1 2/3
    assert abs(rouge_l("police killed", "police killed the gunman") - 2 / 3) < 1e-12
    assert rouge_l("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0
    assert rouge_l("same words here", "Same, words; here!") == 1.0
