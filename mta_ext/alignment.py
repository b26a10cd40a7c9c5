"""Cross-tokenizer alignment: texts + two tokenizers -> shared word / phrase units.

Each model maps its tokens to char spans through its own offset mapping (docs/DESIGN.md §3); the C++
engine ``mta_ext._align`` keeps a unit only when both sides own >= 1 token of it and no token
of either side crosses its border, and returns the ragged layout the pooling ops take.

    aligner = Aligner(teacher_tok, student_tok)               # spaCy phrases, words in phrases
    al = aligner(["The cat sat on the mat."], max_length=512)
    al.units["phrase"].teacher_ranges                         # int64 [N, 2] rows of [B*T_t]
    print(al.explain(0))

Rules (docs/DESIGN.md §3, as the engine and ``mta_ext.reference.align_reference`` implement them):

* A token's span is its offsets with the leading whitespace dropped (``' world'`` -> ``world``).
  Whitespace-only tokens belong to no unit by themselves (they may sit inside a phrase's range);
  tokens with empty offsets (specials such as BOS ``(0,0)``) and pads belong to no unit.
* A token belongs to unit ``[a, b)`` when its span lies inside it. Byte-fallback pieces of one
  character (overlapping / identical offsets) are all inside or all outside together.
* A unit is kept only when, on both sides: it lies within the chars the side's tokens cover
  and no token removed by truncation overlaps it (else "truncated"; this catches a cut between
  the byte-level pieces of one character, which the kept offsets still cover whole), no token
  crosses its border ("straddles"; stricter than only ignoring the crossing token: pooling a
  partial cover would compare different text), it owns >= 1 token ("no token"), and its token
  range holds no special token. Its range is ``[first owned, last owned + 1)`` on the
  flattened ``[B*T]`` axis (left or right padding).
* ``max_length`` counts special tokens and must be at least the number each side adds
  (``ValueError`` naming the side otherwise). A single ``str`` is one example (B = 1).

Already tokenized (e.g. chat-formatted strings, offsets into the full string)?
``aligner.align_encoded(texts, teacher_encoding, student_encoding)`` or the module-level
:func:`align_encoded`, which needs no tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _align
from ._layout import LayoutHostInfo, layout_host_info
from ._reasons import REASONS
from .phrases import SpanSource, _check_words, annotate_spans

GRANULARITIES = ("word", "phrase")
Spans = Sequence[Mapping[str, Sequence[Sequence[int]]]]


@dataclass
class UnitLayout:
    """Units of one granularity, ragged over the batch (like varlen attention).

    cu_units: int64 [B+1], prefix sums of kept units per example.
    spans: int64 [N, 2], char spans [a, b) of the kept units.
    teacher_ranges: int64 [N, 2], token ranges [s, e) into the flattened teacher [B*T_t] axis.
    student_ranges: int64 [N, 2], token ranges into the flattened student [B*T_s] axis.
    host: host-side ints the kernels need (:class:`mta_ext._layout.LayoutHostInfo`: the
        relational tile plan's sizes, the CSR sizes, the largest unit count per example, ...).
        Computed, after validating the layout, when it is built from CPU tensors; kept on the
        host by :meth:`to`, so the CUDA path never reads device memory to size its work
        (``None`` for a layout built from device tensors: the ops then sync once each).
    """

    cu_units: torch.Tensor
    spans: torch.Tensor
    teacher_ranges: torch.Tensor
    student_ranges: torch.Tensor
    host: LayoutHostInfo | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        tensors = (self.cu_units, self.teacher_ranges, self.student_ranges)
        if self.host is None and all(t.device.type == "cpu" for t in tensors):
            self.host = layout_host_info(*tensors)

    def to(self, device: torch.device | str) -> UnitLayout:
        return UnitLayout(
            self.cu_units.to(device),
            self.spans.to(device),
            self.teacher_ranges.to(device),
            self.student_ranges.to(device),
            host=self.host,
        )

    @property
    def num_units(self) -> int:
        return int(self.spans.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.cu_units.shape[0]) - 1


@dataclass
class Alignment:
    """A tokenized, aligned batch.

    texts: the B strings. teacher / student: ``input_ids`` and ``attention_mask`` int64 [B, T]
    (model-ready) and ``offsets`` int64 [B, T, 2]. units: "word" and "phrase" layouts.
    candidates: per granularity the candidate spans before filtering (``cu`` [B+1], ``spans``
    [M, 2], ``status`` int8 [M], 0 = kept, else a code of ``REASONS``), for :meth:`explain`,
    and the merge's truncation windows ``teacher_window`` / ``student_window`` int64 [B, 2]:
    per example the chars [lo, hi) that no token removed by truncation overlaps.
    shared_tokenizer: True when both sides come from one tokenizer (the ``Aligner`` was built
    from the same or an identical tokenizer, or ``align_encoded`` got identical encodings), so
    token ``t`` of the teacher is token ``t`` of the student and every unit's two ranges
    coincide; the losses' ``hid="auto"`` then uses the token-level Hid.
    """

    texts: list[str]
    teacher: dict[str, torch.Tensor]
    student: dict[str, torch.Tensor]
    units: dict[str, UnitLayout]
    candidates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    shared_tokenizer: bool = False

    def to(self, device: torch.device | str) -> Alignment:
        return Alignment(
            self.texts,
            {k: v.to(device) for k, v in self.teacher.items()},
            {k: v.to(device) for k, v in self.student.items()},
            {k: v.to(device) for k, v in self.units.items()},
            self.candidates,
            self.shared_tokenizer,
        )

    def explain(self, i: int) -> str:
        return explain(self, i)


# ----------------------------------------------------------------------------- tokenizing


def _is_bare_tokenizer(tok: Any) -> bool:
    try:  # optional dependency (the `align` extra); HF fast tokenizers bring it anyway
        import tokenizers
    except ImportError:
        return False
    return isinstance(tok, tokenizers.Tokenizer)


def _check_tokenizer(tok: Any, side: str) -> None:
    """Fail at construction (not at the first batch) on a tokenizer without offset mappings."""
    if _is_bare_tokenizer(tok) or getattr(tok, "is_fast", False):
        return
    name = type(tok).__name__
    if callable(tok) and hasattr(tok, "convert_ids_to_tokens"):  # an HF slow tokenizer
        raise TypeError(
            f"Aligner: {side}_tokenizer is {name}, a slow (Python) tokenizer; the alignment needs "
            "character offsets, which only fast tokenizers give. Load it with "
            "AutoTokenizer.from_pretrained(path) (use_fast=True is the default; the folder needs "
            "a tokenizer.json, or the `tokenizers` + `sentencepiece` packages to convert one) or "
            "pass a tokenizers.Tokenizer"
        )
    raise TypeError(
        f"Aligner: {side}_tokenizer must be a Hugging Face fast tokenizer "
        f"(PreTrainedTokenizerFast) or a tokenizers.Tokenizer, got {name}"
    )


def _encode(tok: Any, texts: list[str], max_length: int | None, add_special_tokens: bool):
    """Ragged (ids, offsets) per text from an HF fast tokenizer or a ``tokenizers.Tokenizer``,
    and per text the char window [lo, hi) that no token removed by truncation overlaps."""
    if _is_bare_tokenizer(tok):
        encs = tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        own = (getattr(tok, "truncation", None) or {}).get("direction", "right")
        directions = [own] * len(encs)  # the Tokenizer's own truncation, if enabled
        if max_length is not None:
            for b, e in enumerate(encs):
                if len(e) > max_length:  # replaces the overflowing tokens of its own
                    directions[b] = "right"
                    e.truncate(max_length)
        # A Tokenizer with padding enabled pads here; drop those slots, _pad re-pads.
        keep = [[m == 1 for m in e.attention_mask] for e in encs]
        ids = [
            [x for x, k in zip(e.ids, kk, strict=True) if k]
            for e, kk in zip(encs, keep, strict=True)
        ]
        offs = [
            [o for o, k in zip(e.offsets, kk, strict=True) if k]
            for e, kk in zip(encs, keep, strict=True)
        ]
        return ids, offs, _windows(texts, encs, directions)
    if not getattr(tok, "is_fast", False):
        raise TypeError(
            f"{type(tok).__name__} is not a fast tokenizer: offset mappings need "
            "a PreTrainedTokenizerFast or a tokenizers.Tokenizer"
        )
    enc = tok(
        texts,
        add_special_tokens=add_special_tokens,
        truncation=max_length is not None,
        max_length=max_length,
        return_offsets_mapping=True,
        padding=False,
    )
    # The backend's Encodings keep the tokens truncation removed (``overflowing``).
    directions = [getattr(tok, "truncation_side", "right")] * len(texts)
    windows = _windows(texts, enc.encodings, directions)
    return enc["input_ids"], enc["offset_mapping"], windows


def _windows(texts: list[str], encs: list[Any], directions: list[str]) -> list[tuple[int, int]]:
    """Per text the chars [lo, hi) that no token removed by truncation overlaps (a token's span
    without its leading whitespace, as for ownership; blank and special tokens overlap nothing).
    Right truncation removed tokens after the kept ones: hi = the first one's start; left
    truncation those before: lo = the last one's end. Within a chunk of removed tokens starts
    and ends do not decrease, so one non-blank token per chunk decides."""
    out = []
    for text, e, direction in zip(texts, encs, directions, strict=True):
        lo, hi = 0, len(text)
        for chunk in e.overflowing:
            offsets = chunk.offsets
            for a, b in offsets if direction != "left" else reversed(offsets):
                while a < b and text[a].isspace():
                    a += 1
                if a < b:
                    if direction == "left":
                        lo = max(lo, b)
                    else:
                        hi = min(hi, a)
                    break
        out.append((lo, hi))
    return out


def _check_max_length(toks: Sequence[Any], max_length: int, add_special_tokens: bool) -> None:
    """max_length must leave room for the special tokens each side adds (tokenizers skip
    truncation silently below that, and reject a negative value with an OverflowError)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int or None, got {max_length!r}")
    need = []
    for tok in toks:
        n = 0
        if add_special_tokens:
            if _is_bare_tokenizer(tok):
                n = tok.num_special_tokens_to_add(False)
            else:
                n = tok.num_special_tokens_to_add(pair=False)
        need.append(n)
    if max_length < max(need):
        name = "student" if need[1] > need[0] else "teacher"
        n = max(need)
        raise ValueError(
            f"max_length={max_length} is too small for the {name} tokenizer, which adds {n} "
            f"special token(s) per text: the smallest valid max_length is {n}"
        )


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers encode every text identically for the ``Aligner``: the same
    object, or the same type with the same serialised pipeline (``tokenizers`` JSON, which holds
    the model, normalizer, pre-tokenizer and special-token post-processor), pad id and padding
    side. False when that cannot be established."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        ja = (a if _is_bare_tokenizer(a) else a.backend_tokenizer).to_str()
        jb = (b if _is_bare_tokenizer(b) else b.backend_tokenizer).to_str()
    except Exception:
        return False
    return (
        ja == jb
        and _pad_id(a) == _pad_id(b)
        and getattr(a, "padding_side", None) == getattr(b, "padding_side", None)
    )


def _identical_sides(t: Mapping[str, np.ndarray], s: Mapping[str, np.ndarray]) -> bool:
    return all(
        t[k].shape == s[k].shape and bool((t[k] == s[k]).all())
        for k in ("input_ids", "attention_mask", "offsets")
    )


def _pad_id(tok: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tok, name, None)
        if isinstance(v, int):
            return v
    return 0


def _pad(ids, offsets, pad_id: int, side: str) -> dict[str, np.ndarray]:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    B = len(ids)
    T = max((len(x) for x in ids), default=0)
    out_ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    offs = np.zeros((B, T, 2), dtype=np.int64)
    for b, (i, o) in enumerate(zip(ids, offsets, strict=True)):
        n = len(i)
        if len(o) != n:
            raise ValueError(f"example {b}: {len(o)} offsets for {n} input_ids")
        lo = T - n if side == "left" else 0
        out_ids[b, lo : lo + n] = i
        mask[b, lo : lo + n] = 1
        if n:
            offs[b, lo : lo + n] = np.asarray(o, dtype=np.int64).reshape(n, 2)
    return {"input_ids": out_ids, "attention_mask": mask, "offsets": offs}


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _side_from_encoding(enc: Mapping[str, Any], name: str, B: int) -> dict[str, np.ndarray]:
    """Padded arrays from a (possibly ragged) encoding with input_ids + offset_mapping."""
    for key in ("input_ids", "offset_mapping"):
        if key not in enc:
            raise ValueError(
                f"{name} encoding lacks '{key}' (tokenize with return_offsets_mapping=True)"
            )
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    if len(ids) != B or len(offs) != B:
        raise ValueError(f"{name} encoding has {len(ids)} rows for {B} texts")
    if B == 0:
        return _pad([], [], 0, "right")
    ragged = not isinstance(ids, torch.Tensor | np.ndarray) and len({len(r) for r in ids}) > 1
    if ragged:
        if "attention_mask" in enc:
            ids = [
                [t for t, m in zip(r, mr, strict=True) if m]
                for r, mr in zip(ids, enc["attention_mask"], strict=True)
            ]
            offs = [
                [o for o, m in zip(r, mr, strict=True) if m]
                for r, mr in zip(offs, enc["attention_mask"], strict=True)
            ]
        return _pad(ids, offs, 0, "right")
    ids_np = _as_numpy(ids).astype(np.int64).reshape(B, -1)
    T = ids_np.shape[1]
    offs_np = _as_numpy(offs).astype(np.int64).reshape(B, T, 2)
    if "attention_mask" in enc:
        mask = _as_numpy(enc["attention_mask"]).astype(np.int64)
        if mask.shape != ids_np.shape:
            raise ValueError(
                f"{name} attention_mask has shape {mask.shape}, input_ids {ids_np.shape}"
            )
    else:
        mask = np.ones_like(ids_np)
    return {"input_ids": ids_np, "attention_mask": mask, "offsets": offs_np}


# ----------------------------------------------------------------------------- merging


def _pack_spans(spans: Spans, B: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if len(spans) != B:
        raise ValueError(f"spans has {len(spans)} entries for {B} texts")
    packed = []
    for g in GRANULARITIES:
        counts = [0]
        flat: list[Sequence[int]] = []
        for b, s in enumerate(spans):
            if not isinstance(s, Mapping):
                raise TypeError(f"spans[{b}] must be a dict with 'word' / 'phrase' lists")
            got = s.get(g, [])
            flat.extend(got)
            counts.append(len(got))
        arr = (
            np.asarray(flat, dtype=np.int64).reshape(-1, 2) if flat else np.zeros((0, 2), np.int64)
        )
        packed.append((g, np.cumsum(counts, dtype=np.int64), arr))
    return packed


def align_encoded(
    texts: Sequence[str],
    teacher: Mapping[str, Any],
    student: Mapping[str, Any],
    spans: Spans,
    *,
    num_threads: int = 0,
    shared_tokenizer: bool | None = None,
    windows: tuple[Any, Any] | None = None,
) -> Alignment:
    """Align an already tokenized batch.

    Args:
        texts: B strings; offsets index these strings (for chat-formatted input: the full
            rendered string, special tokens included).
        teacher / student: mappings with ``input_ids`` [B, T] and ``offset_mapping`` [B, T, 2]
            (tensors / arrays, padded, with ``attention_mask``), or ragged lists.
        spans: per text ``{"word": [[a, b], ...], "phrase": [...]}`` (see annotate_spans).
        num_threads: OpenMP threads for the merge (0 = default).
        shared_tokenizer: whether both encodings come from one tokenizer (recorded on the
            ``Alignment``; ``hid="auto"`` then uses the token-level Hid). ``None``: True
            exactly when the two encodings are identical (ids, mask and offsets).
        windows: ``(teacher_window, student_window)``, each None or int64 ``[B, 2]``: per
            example the chars ``[lo, hi)`` a unit must lie in on that side, else it is dropped
            as truncated (e.g. a sampled completion cut by the length limit inside its last
            word: :func:`mta_ext.onpolicy.cut_windows`). None: the whole text.
    """
    texts = list(texts)
    B = len(texts)
    t = _side_from_encoding(teacher, "teacher", B)
    s = _side_from_encoding(student, "student", B)
    if shared_tokenizer is None:
        shared_tokenizer = _identical_sides(t, s)
    return _merge(texts, t, s, spans, num_threads, bool(shared_tokenizer), windows or (None, None))


def _merge(
    texts, t, s, spans, num_threads, shared_tokenizer: bool = False, windows=(None, None)
) -> Alignment:
    B = len(texts)
    packed = _pack_spans(spans, B)
    windows = [
        np.asarray(w, dtype=np.int64).reshape(B, 2)
        if w is not None
        else np.asarray([[0, len(x)] for x in texts], dtype=np.int64).reshape(B, 2)
        for w in windows
    ]
    res = _align.align(
        texts,
        t["offsets"],
        t["attention_mask"],
        s["offsets"],
        s["attention_mask"],
        packed,
        num_threads,
        *windows,
    )
    units, cands = {}, {}
    for (g, cu, sp), r in zip(packed, res, strict=True):
        units[g] = UnitLayout(
            torch.from_numpy(r["cu_units"]),
            torch.from_numpy(r["spans"]),
            torch.from_numpy(r["teacher_ranges"]),
            torch.from_numpy(r["student_ranges"]),
        )
        cands[g] = {
            "cu": cu,
            "spans": sp,
            "status": r["status"],
            "teacher_window": windows[0],
            "student_window": windows[1],
        }
    return Alignment(
        texts,
        {k: torch.from_numpy(v) for k, v in t.items()},
        {k: torch.from_numpy(v) for k, v in s.items()},
        units,
        cands,
        shared_tokenizer,
    )


class Aligner:
    """Tokenize a batch with two tokenizers and align their word / phrase units.

    Args:
        teacher_tokenizer, student_tokenizer: HF fast tokenizers or ``tokenizers.Tokenizer``.
        phrases: "spacy" (noun chunks + verb phrases), a callable ``text -> [(a, b), ...]``,
            or None (regex words only, empty phrase layout).
        words: "in_phrases" (words inside kept phrases) or "all".
        num_threads: OpenMP threads for the merge (0 = default).
    """

    def __init__(
        self,
        teacher_tokenizer: Any,
        student_tokenizer: Any,
        *,
        phrases: SpanSource = "spacy",
        words: str = "in_phrases",
        num_threads: int = 0,
    ) -> None:
        _check_words(words)
        for side, tok in (("teacher", teacher_tokenizer), ("student", student_tokenizer)):
            _check_tokenizer(tok, side)
        if not (phrases is None or phrases == "spacy" or callable(phrases)):
            raise ValueError(f"phrases must be 'spacy', None or a callable, got {phrases!r}")
        self.teacher_tokenizer = teacher_tokenizer
        self.student_tokenizer = student_tokenizer
        # One tokenizer on both sides: the Alignment records it (hid="auto" -> token level).
        self.shared_tokenizer = same_tokenizer(teacher_tokenizer, student_tokenizer)
        self.phrases = phrases
        self.words = words
        self.num_threads = num_threads

    def spans(self, texts: Sequence[str]) -> list[dict[str, list[list[int]]]]:
        """Candidate units of ``texts`` with this aligner's span source."""
        return annotate_spans(texts, phrases=self.phrases, words=self.words)

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool = True,
        spans: Spans | Mapping[str, Sequence[Sequence[int]]] | None = None,
    ) -> Alignment:
        """Tokenize (padding each side to its longest row) and align.

        Args:
            texts: B strings; a single ``str`` is one example (as tokenizers take it), the
                result is still a batch (B = 1).
            max_length: truncate each side to this many tokens (tokenizer's truncation side),
                special tokens included; must be at least the number of special tokens each
                side adds (else ``ValueError``). A unit that any removed token overlaps
                (even one byte-level piece of its last character) is dropped as truncated.
            padding_side: "left" / "right" for both sides; default each tokenizer's own
                (right for a bare ``tokenizers.Tokenizer``).
            add_special_tokens: passed to both tokenizers.
            spans: cached candidate spans from :func:`annotate_spans` (skips parsing); one
                dict when ``texts`` is a single ``str``.
        """
        if isinstance(texts, str):
            texts = [texts]
            if isinstance(spans, Mapping):
                spans = [spans]
        texts = list(texts)
        if any(not isinstance(x, str) for x in texts):
            raise TypeError("texts must be a str or a list of str")
        toks = (self.teacher_tokenizer, self.student_tokenizer)
        if max_length is not None:
            _check_max_length(toks, max_length, add_special_tokens)
        sides, windows = [], []
        for tok in toks:
            ids, offs, win = (
                _encode(tok, texts, max_length, add_special_tokens) if texts else ([], [], [])
            )
            side = padding_side or getattr(tok, "padding_side", None) or "right"
            sides.append(_pad(ids, offs, _pad_id(tok), side))
            windows.append(win)
        if spans is None:
            spans = self.spans(texts)
        return _merge(
            texts, sides[0], sides[1], spans, self.num_threads, self.shared_tokenizer, windows
        )

    def align_encoded(
        self,
        texts: Sequence[str],
        teacher: Mapping[str, Any],
        student: Mapping[str, Any],
        *,
        spans: Spans | None = None,
    ) -> Alignment:
        """Align pre-tokenized input (see :func:`align_encoded`); parses spans if not given."""
        texts = list(texts)
        if spans is None:
            spans = self.spans(texts)
        return align_encoded(
            texts,
            teacher,
            student,
            spans,
            num_threads=self.num_threads,
            shared_tokenizer=None if self.shared_tokenizer else False,
        )


# ----------------------------------------------------------------------------- explain


def _tok_str(text: str, ids: torch.Tensor, offs: torch.Tensor, row: int, t0: int, t1: int) -> str:
    """Tokens t0..t1 of ``row`` as their text. Byte pieces of one character (a byte-level BPE
    or byte-fallback tokenizer splitting an emoji into several tokens) have overlapping
    offsets; they are shown once as ``'🦜' (4 byte pieces)`` instead of the character 4 times.
    """
    parts = []
    t = t0
    while t < t1:
        a, b = int(offs[row, t, 0]), int(offs[row, t, 1])
        if a >= b:
            parts.append(f"<special {int(ids[row, t])}>")
            t += 1
            continue
        n = 1  # extend over following tokens that overlap this group's span
        while t + n < t1:
            na, nb = int(offs[row, t + n, 0]), int(offs[row, t + n, 1])
            if not (na < nb and na < b):
                break
            b = max(b, nb)
            n += 1
        parts.append(repr(text[a:b]) + (f" ({n} byte pieces)" if n > 1 else ""))
        t += n
    return "[" + ", ".join(parts) + "]"


def explain(alignment: Alignment, i: int) -> str:
    """Readable view of example i: each unit's text and the teacher / student tokens it owns,
    then the dropped candidates with the reason."""
    al = alignment
    if not 0 <= i < len(al.texts):
        raise IndexError(f"example {i} out of range for a batch of {len(al.texts)}")
    text = al.texts[i]
    tm, sm = al.teacher["attention_mask"].cpu(), al.student["attention_mask"].cpu()
    lines = [
        f"example {i}: {text!r}",
        f"  teacher: {int(tm[i].sum())} tokens, student: {int(sm[i].sum())} tokens; "
        "[a:b] = character (code point) offsets into the text",
    ]
    T_t, T_s = tm.shape[1], sm.shape[1]
    t_ids, t_off = al.teacher["input_ids"].cpu(), al.teacher["offsets"].cpu()
    s_ids, s_off = al.student["input_ids"].cpu(), al.student["offsets"].cpu()
    for g, layout in al.units.items():
        lay = layout.to("cpu")
        k0, k1 = int(lay.cu_units[i]), int(lay.cu_units[i + 1])
        cand = al.candidates.get(g)
        n_drop = 0
        if cand is not None:
            st = cand["status"][int(cand["cu"][i]) : int(cand["cu"][i + 1])]
            n_drop = int((st != 0).sum())
        lines.append(f"{g} units: {k1 - k0} kept, {n_drop} dropped")
        for k in range(k0, k1):
            a, b = int(lay.spans[k, 0]), int(lay.spans[k, 1])
            tr, sr = lay.teacher_ranges[k].tolist(), lay.student_ranges[k].tolist()
            lines.append(f"  [{a}:{b}] {text[a:b]!r}")
            t_str = _tok_str(text, t_ids, t_off, i, tr[0] - i * T_t, tr[1] - i * T_t)
            s_str = _tok_str(text, s_ids, s_off, i, sr[0] - i * T_s, sr[1] - i * T_s)
            lines.append(f"      teacher {t_str}")
            lines.append(f"      student {s_str}")
        if cand is not None:
            lo, hi = int(cand["cu"][i]), int(cand["cu"][i + 1])
            for j in range(lo, hi):
                code = int(cand["status"][j])
                if code:
                    a, b = (int(x) for x in cand["spans"][j])
                    lines.append(f"  dropped [{a}:{b}] {text[a:b]!r}: {REASONS[code]}")
    return "\n".join(lines)
