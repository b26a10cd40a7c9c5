"""Fuzz suite of the aligner: seeded random texts of hostile character classes (multi-byte UTF-8,
emoji / ZWJ sequences, combining marks, CJK, RTL, whitespace runs, control characters,
special-token look-alikes, raw code points) through every available real and tiny tokenizer
pair, every kind of max_length, both padding sides, with and without special tokens.

Each case is checked against the alignment contract, independently of the engine's own logic:

* C++ engine == pure-Python reference (:func:`alignment_checks.check_alignment`), which also
  checks that every kept unit's token range holds only real (non-pad, non-special) tokens
  inside the unit on both sides;
* truncation: the truncated side's tokens are a prefix (right) / suffix (left) of the
  untruncated encoding's, and no token truncation removed overlaps a kept unit;
* cover: every non-whitespace char of a kept unit that any untruncated token covers is covered
  by a token of the unit's range, on both sides;
* nothing straddles: no token outside a unit's range overlaps the unit;
* a unit kept under truncation is kept untruncated too, with the same token ids on each side;
* the same tokenizer on both sides gives identical teacher and student ranges;
* left padding == right padding, ranges shifted by the pad count of the row;
* max_length below a side's special tokens (or negative) raises a ValueError naming the side.

CI-sized by default (a few hundred cases, seconds); ``MTA_FUZZ=long`` runs >= 10,000 cases
over every ordered tokenizer pair (``pytest -s`` prints the counts). ``MTA_FUZZ_SEED`` changes
the seed; a failure names the seed, pair and case so it can be replayed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from collections import Counter

import numpy as np
import pytest
from alignment_checks import check_alignment
from tokenizers_util import ALL

from mta_ext.alignment import Aligner, Alignment, _is_bare_tokenizer
from mta_ext.phrases import regex_words

LONG = os.environ.get("MTA_FUZZ", "") == "long"
SEED = int(os.environ.get("MTA_FUZZ_SEED", "0"))

# ----------------------------------------------------------------------------- text generator

_CLASSES: dict[str, list[str]] = {
    "ascii": ["the", "cat", "Sat", "on", "a", "MAT", "x", "don't", "it's", "e-mail", "12345", "0"],
    "punct": [".", ",", "!", "?", "'", '"', "-", "—", "…", "(", ")", "/", "_", "@", "#", "%"],
    "latin": ["café", "naïve", "ß", "Ångström", "ǅ", "ﬁ", "Œuvre", "ñ", "ø"],
    "combining": [
        "e\u0301",
        "a\u0308\u0301",
        "n\u0303",
        "o\u0327\u0306\u0301",
        "\u0301",
        "i\u20dd",
    ],
    "cjk": ["你好", "世界", "漢字", "쫕", "한국어", "日本語", "カタカナ", "，", "。", "\u3000"],
    "rtl": ["שלום", "مرحبا", "\u200f", "\u200e", "٣٤", "עברית ", "\u202e"],
    "emoji": [
        "😀",
        "🎉",
        "👩\u200d👩\u200d👧",
        "👍🏽",
        "🇫🇷",
        "❤\ufe0f",
        "🏳\ufe0f\u200d🌈",
        "🧑\u200d💻",
    ],
    "astral": ["𝔘𝔫𝔦", "𝒎𝒂𝒕𝒉", "𐍈", "𠀀", "\U0001f9ff"],
    "space": [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n\n", "\u00a0", "\u2028", "\x85", " \t "],
    "control": ["\x00", "\x01", "\x1b", "\x7f", "\u200b", "\ufeff", "\ufffd", "\x0c", "\x1f"],
    "specials": [
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "[CLS]",
        "[SEP]",
        "[PAD]",
        "[UNK]",
        "<s>",
        "</s>",
        "<unk>",
        "<|im_start",
        "[CLS",
    ],
    "long": ["x" * 40, "ab" * 25, "😀" * 12, "ज़" * 10],
}
_CLASS_NAMES = list(_CLASSES)


def _raw_codepoint(rng: random.Random) -> str:
    """Any code point but a surrogate (a Python str holding one cannot be UTF-8 encoded)."""
    while True:
        cp = rng.choice(
            [rng.randrange(0x20, 0x800), rng.randrange(0x800, 0x10000)] * 3
            + [rng.randrange(0x10000, 0x110000)]
        )
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def random_text(rng: random.Random) -> str:
    """A text of up to ~25 fragments; each text favours a few classes, so runs of one class
    (whitespace runs, emoji sequences, stacked marks) occur as well as mixtures."""
    if rng.random() < 0.05:
        return ""
    favoured = rng.sample(_CLASS_NAMES, rng.randint(1, 4))
    parts = []
    for _ in range(rng.randint(1, 25)):
        r = rng.random()
        if r < 0.08:
            parts.append(_raw_codepoint(rng))
        elif r < 0.75:
            parts.append(rng.choice(_CLASSES[rng.choice(favoured)]))
        else:
            parts.append(rng.choice(_CLASSES[rng.choice(_CLASS_NAMES)]))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


def random_spans(rng: random.Random, text: str) -> dict[str, list[list[int]]]:
    """Regex words as "word" units, arbitrary char ranges (any border, inside a grapheme too)
    and word pairs as "phrase" units."""
    words = [list(w) for w in regex_words(text)]
    phrase = [[words[i][0], words[i + 1][1]] for i in range(len(words) - 1) if rng.random() < 0.3]
    for _ in range(rng.randint(0, 6) if text else 0):
        a = rng.randrange(len(text))
        phrase.append([a, rng.randint(a + 1, min(len(text), a + 12))])
    return {"word": words, "phrase": phrase}


# ----------------------------------------------------------------------------- invariants


def _n_special(tok, add_special_tokens: bool) -> int:
    if not add_special_tokens:
        return 0
    if _is_bare_tokenizer(tok):
        return tok.num_special_tokens_to_add(False)
    return tok.num_special_tokens_to_add(pair=False)


def _truncation_side(tok) -> str:
    return "right" if _is_bare_tokenizer(tok) else tok.truncation_side


def _row_tokens(al: Alignment, side: str, b: int) -> list[tuple[int, int, int]]:
    """(position, start, end) of the real, non-empty tokens of row b."""
    enc = getattr(al, side)
    mask, off = enc["attention_mask"][b].numpy(), enc["offsets"][b].numpy()
    return [
        (t, int(off[t, 0]), int(off[t, 1])) for t in np.flatnonzero(mask) if off[t, 0] < off[t, 1]
    ]


def _stripped(text: str, a: int, e: int) -> int:
    while a < e and text[a].isspace():
        a += 1
    return a


def _check_contract(al: Alignment, full: Alignment, toks, same: bool) -> None:
    """The invariants above for one alignment, given the untruncated alignment of the batch."""
    check_alignment(al)
    for side, key, tok in (
        ("teacher", "teacher_ranges", toks[0]),
        ("student", "student_ranges", toks[1]),
    ):
        T = getattr(al, side)["attention_mask"].shape[1]
        for b, text in enumerate(al.texts):
            kept = _row_tokens(al, side, b)
            whole = _row_tokens(full, side, b)
            n = len(kept)
            spans_kept = [(a, e) for _, a, e in kept]
            spans_whole = [(a, e) for _, a, e in whole]
            if _truncation_side(tok) == "right":
                assert spans_kept == spans_whole[:n], f"{side} row {b}: not a prefix"
                removed = spans_whole[n:]
            else:
                assert spans_kept == spans_whole[len(whole) - n :], f"{side} row {b}: not a suffix"
                removed = spans_whole[: len(whole) - n]
            removed = [(_stripped(text, a, e), e) for a, e in removed]
            covered = np.zeros(len(text) + 1, bool)
            for a, e in spans_whole:
                covered[a:e] = True
            for g, lay in al.units.items():
                for k in range(int(lay.cu_units[b]), int(lay.cu_units[b + 1])):
                    ua, ub = (int(x) for x in lay.spans[k])
                    r0, r1 = (int(x) - b * T for x in getattr(lay, key)[k])
                    where = f"{g} unit [{ua},{ub}) {text[ua:ub]!r}, {side} row {b}"
                    for s, e in removed:
                        assert not (s < e and s < ub and e > ua), (
                            f"{where}: a removed token ({s},{e}) overlaps it"
                        )
                    inside = np.zeros(len(text) + 1, bool)
                    for t, a, e in kept:
                        s = _stripped(text, a, e)
                        if r0 <= t < r1:
                            inside[a:e] = True
                        else:
                            assert not (s < e and s < ub and e > ua), (
                                f"{where}: token {t} ({a},{e}) straddles"
                            )
                    for c in range(ua, ub):
                        if covered[c] and not text[c].isspace():
                            assert inside[c], (
                                f"{where}: char {c} {text[c]!r} not covered by its range"
                            )
    if same:
        for g, lay in al.units.items():
            np.testing.assert_array_equal(lay.teacher_ranges.numpy(), lay.student_ranges.numpy())
            assert set(al.candidates[g]["status"].tolist()) <= {0, 1, 3, 5, 7}, g


def _check_left_right(left: Alignment, right: Alignment) -> None:
    for side, key in (("teacher", "teacher_ranges"), ("student", "student_ranges")):
        T = getattr(left, side)["attention_mask"].shape[1]
        n = getattr(left, side)["attention_mask"].sum(1).numpy()
        for g in left.units:
            ll, rr = left.units[g], right.units[g]
            np.testing.assert_array_equal(ll.cu_units.numpy(), rr.cu_units.numpy())
            np.testing.assert_array_equal(ll.spans.numpy(), rr.spans.numpy())
            np.testing.assert_array_equal(
                left.candidates[g]["status"], right.candidates[g]["status"]
            )
            row = np.repeat(np.arange(len(left.texts)), np.diff(ll.cu_units.numpy()))
            np.testing.assert_array_equal(
                getattr(ll, key).numpy(), getattr(rr, key).numpy() + (T - n)[row][:, None]
            )


# ----------------------------------------------------------------------------- driver

_NAMES = list(ALL)  # qwen, mistral, cl100k, tiny_bpe, tiny_wordpiece, tiny_unigram
if LONG:
    PAIRS = [(t, s) for t in _NAMES for s in _NAMES]
    BATCHES_PER_COMBO = 10
else:
    PAIRS = [(n, n) for n in _NAMES] + [
        ("qwen", "mistral"),
        ("mistral", "cl100k"),
        ("cl100k", "tiny_wordpiece"),
        ("tiny_wordpiece", "qwen"),
        ("tiny_unigram", "tiny_bpe"),
        ("tiny_bpe", "tiny_unigram"),
    ]
    BATCHES_PER_COMBO = 1
# max_length kinds: none, the smallest valid, one more, small fixed values, a random cut
# anywhere in the longest row, and one below the smallest valid (must raise).
ML_KINDS = ["none", "min", "min+1", "2", "5", "16", "random", "random", "too_small"]
STATS: Counter = Counter()


def _max_length(kind: str, rng: random.Random, need: int, longest: int) -> int | None:
    if kind == "none":
        return None
    if kind == "min":
        return need
    if kind == "min+1":
        return need + 1
    if kind == "random":
        return rng.randint(need, max(need, longest + 1))
    if kind == "too_small":
        return need - 1 - rng.randrange(2)
    return max(int(kind), need)


@contextlib.contextmanager
def _truncation_side_set(toks, side: str):
    """Set truncation_side on the HF tokenizers of the pair (cached objects: restored after);
    the Aligner truncates a bare ``tokenizers.Tokenizer`` on the right."""
    hf = [t for t in toks if not _is_bare_tokenizer(t)]
    old = [t.truncation_side for t in hf]
    for t in hf:
        t.truncation_side = side
    try:
        yield
    finally:
        for t, o in zip(hf, old, strict=True):
            t.truncation_side = o


def _expected_side(toks, special: bool) -> str:
    return "student" if _n_special(toks[1], special) > _n_special(toks[0], special) else "teacher"


def _one_case(aligner, toks, same, texts, spans, special, ml, full) -> Alignment:
    """Align with both padding sides, check every invariant; the right-padded alignment."""
    got = {
        side: aligner(
            texts, max_length=ml, padding_side=side, spans=spans, add_special_tokens=special
        )
        for side in ("left", "right")
    }
    for al in got.values():
        if ml is not None:
            assert al.teacher["input_ids"].shape[1] <= ml
            assert al.student["input_ids"].shape[1] <= ml
        _check_contract(al, full, toks, same)
    _check_left_right(got["left"], got["right"])
    _check_same_tokens_as_untruncated(got["right"], full)
    return got["right"]


def _check_same_tokens_as_untruncated(al: Alignment, full: Alignment) -> None:
    """A unit kept under truncation is kept untruncated too, with the same token ids."""
    for g, lay in al.units.items():
        st, st_full = al.candidates[g]["status"], full.candidates[g]["status"]
        k_full = np.cumsum(st_full == 0) - 1  # candidate -> row of the full layout
        for k, j in enumerate(np.flatnonzero(st == 0)):
            assert st_full[j] == 0, f"{g} candidate {j} kept truncated, dropped untruncated"
            for side, key in (("teacher", "teacher_ranges"), ("student", "student_ranges")):
                ids = getattr(al, side)["input_ids"].reshape(-1)
                ids_full = getattr(full, side)["input_ids"].reshape(-1)
                a, b = getattr(lay, key)[k].tolist()
                c, d = getattr(full.units[g], key)[k_full[j]].tolist()
                assert ids[a:b].tolist() == ids_full[c:d].tolist(), f"{g} candidate {j} {side}"


def _longest(al: Alignment) -> int:
    return max(
        int(getattr(al, side)["attention_mask"].sum(1).max()) for side in ("teacher", "student")
    )


@pytest.mark.parametrize("pair", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_fuzz_alignment_contract(pair):
    toks = (ALL[pair[0]](), ALL[pair[1]]())
    same = pair[0] == pair[1]
    aligner = Aligner(*toks, phrases=None)
    rng = random.Random(f"{SEED}-{pair}")
    t0 = time.perf_counter()
    for trunc, special, kind in itertools.product(("right", "left"), (True, False), ML_KINDS):
        if trunc == "left" and all(_is_bare_tokenizer(t) for t in toks):
            continue  # bare Tokenizers are truncated on the right only
        need = max(_n_special(t, special) for t in toks)
        for rep in range(BATCHES_PER_COMBO):
            texts = [random_text(rng) for _ in range(rng.randint(1, 3))]
            spans = [random_spans(rng, x) for x in texts]
            full = aligner(texts, spans=spans, add_special_tokens=special)
            ml = _max_length(kind, rng, need, _longest(full))
            case = (
                f"seed={SEED} pair={pair} trunc={trunc} special={special} max_length={ml} "
                f"({kind}, rep {rep}) texts={texts!r}"
            )
            with _truncation_side_set(toks, trunc):
                if kind == "too_small":
                    side = _expected_side(toks, special)
                    with pytest.raises(
                        ValueError, match=rf"{side} tokenizer.*smallest valid max_length is {need}"
                    ):
                        aligner(texts, max_length=ml, spans=spans, add_special_tokens=special)
                    STATS["rejected"] += 1
                    continue
                try:
                    right = _one_case(aligner, toks, same, texts, spans, special, ml, full)
                except AssertionError as e:
                    raise AssertionError(f"{case}: {e}") from e
            STATS["cases"] += 1
            STATS["alignments"] += 3
            STATS["texts"] += len(texts)
            STATS["chars"] += sum(len(x) for x in texts)
            for g, lay in right.units.items():
                st = right.candidates[g]["status"]
                STATS["candidates"] += len(st)
                STATS["kept"] += lay.num_units
                STATS["truncated"] += int(((st == 1) | (st == 2)).sum())
    STATS["seconds"] += time.perf_counter() - t0
    print(f"\n{pair}: running totals {dict(STATS)}")


# ----------------------------------------------------------------------------- engine, synthetic


def _synthetic_side(rng: random.Random, text: str) -> list[tuple[int, int]]:
    """Random valid offsets: random cuts, repeated / overlapping byte pieces, (0,0) specials,
    uncovered gaps, a slice taken off either end."""
    n = len(text)
    cuts = sorted({0, n, *(rng.randint(0, n) for _ in range(rng.randint(0, n + 1)))})
    toks: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(cuts):
        kind = rng.randrange(8)
        if kind == 7:
            continue
        if kind == 0 and b - a == 1:
            toks += [(a, b)] * rng.randint(2, 3)
        elif kind == 1 and b - a >= 2:
            toks += [(a, b), (a + 1, b)]
        else:
            toks.append((a, b))
        if rng.randrange(5) == 0:
            toks.append((0, 0))
    lo = rng.randint(0, len(toks)) if rng.randrange(3) == 0 else 0
    hi = rng.randint(lo, len(toks)) if rng.randrange(3) == 0 else len(toks)
    return toks[lo:hi]


def test_fuzz_engine_windows_equal_reference():
    """Random truncation windows on random offsets: C++ == reference, 1 and 2 threads."""
    from mta_ext import _align
    from mta_ext.reference.alignment import align_reference

    rng = random.Random(f"{SEED}-windows")
    n_cases = 3000 if LONG else 300
    for case in range(n_cases):
        texts = [random_text(rng)[:40] for _ in range(rng.randint(0, 3))]
        arrays = []
        for _ in range(2):
            rows = [_synthetic_side(rng, x) for x in texts]
            T = max((len(r) for r in rows), default=0) + rng.randint(0, 2)
            off = np.zeros((len(texts), T, 2), np.int64)
            mask = np.zeros((len(texts), T), np.int64)
            for b, r in enumerate(rows):
                p = rng.randint(0, T - len(r))
                off[b, p : p + len(r)] = np.asarray(r, np.int64).reshape(-1, 2)
                mask[b, p : p + len(r)] = 1
            arrays += [off, mask]
        units = []
        for g in ("word", "phrase"):
            cu, spans = [0], []
            for x in texts:
                for _ in range(rng.randint(0, 6) if x else 0):
                    a = rng.randrange(len(x))
                    spans.append([a, rng.randint(a + 1, len(x))])
                cu.append(len(spans))
            units.append((g, np.array(cu), np.array(spans, np.int64).reshape(-1, 2)))
        windows = []
        for _ in range(2):
            if rng.randrange(4) == 0:
                windows.append(None)
                continue
            w = []
            for x in texts:
                lo = rng.randint(0, len(x)) if rng.randrange(2) else 0
                w.append([lo, rng.randint(lo, len(x)) if rng.randrange(2) else len(x)])
            windows.append(np.array(w, np.int64).reshape(-1, 2))
        ref = align_reference(texts, *arrays, units, 0, *windows)
        for threads in (1, 2):
            got = _align.align(texts, *arrays, units, threads, *windows)
            for g_got, g_ref in zip(got, ref, strict=True):
                for k in g_got:
                    np.testing.assert_array_equal(
                        g_got[k], g_ref[k], err_msg=f"seed={SEED} case={case} {k}"
                    )
        STATS["engine_cases"] += 1
