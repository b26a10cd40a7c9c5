"""Char offsets for the token ids a model actually produced (sampled), without re-encoding.

A sampled sequence need not be what the tokenizer would give on re-encoding its text
(non-canonical splits, the byte pieces of one character spread over tokens, a character cut at
the end), and a student's loss is on the ids it sampled, so on-policy distillation needs the
offsets of *those* ids:

    text, offsets = offsets_for_ids(student_tokenizer, sampled_ids)   # str, int64 [n, 2]
    texts, offsets = offsets_for_ids(student_tokenizer, [ids_a, ids_b])  # a batch

The ids are decoded piece by piece in C++ (``mta_ext._align.PieceTable``, linear in tokens and
bytes) from a per-id byte table built once per tokenizer from its ``tokenizers`` pipeline
(decoder, else pre-tokenizer / model): byte-level BPE (the GPT-2 byte map), SentencePiece-style
pieces (``▁`` -> space, ``<0xHH>`` byte-fallback pieces, the decoder's strip of the first space)
and WordPiece (``##`` continuations). Contract:

* **Unit**: offsets count Unicode code points of the returned ``text`` (Python ``str``
  indices), the unit of the tokenizers' ``offset_mapping`` and of the aligner. ``text`` is
  what ``tokenizer.decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)``
  returns for a tokenizer with one of the decoders above.
* **Canonical ids** (``ids == tokenizer(text).input_ids`` without special tokens): the offsets
  equal the tokenizer's own ``offset_mapping`` (``python_tests/test_offsets.py`` checks it on
  byte-level BPE, SentencePiece with byte fallback, Unigram/Metaspace and WordPiece).
* **Any other ids**: each token spans the chars its bytes fall in (the byte pieces of one
  character all span that character). Invalid UTF-8 (a sample cut inside a character, byte
  pieces that never form one) decodes to U+FFFD as ``tokenizers`` does, and the tokens whose
  bytes all land in a replacement get the empty span ``(p, p)``: no offsets, so they belong to
  no unit, and a unit whose token range holds one is dropped. Special tokens get ``(p, p)``
  too (their text is kept unless ``skip_special_tokens``).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from . import _align

__all__ = ["PieceDecoder", "offsets_for_ids"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable char map (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_CHAR_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}

# WordPiece decoder's cleanup (tokenizers' `cleanup`), applied to each token string.
_CLEANUP = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
]


def _backend(tok: Any) -> Any:
    if hasattr(tok, "backend_tokenizer"):
        return tok.backend_tokenizer
    if hasattr(tok, "to_str") and hasattr(tok, "get_vocab"):
        return tok
    raise TypeError(
        f"offsets_for_ids: needs a Hugging Face fast tokenizer or a tokenizers.Tokenizer, got "
        f"{type(tok).__name__}"
    )


def _flatten(spec: dict | None) -> list[dict]:
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        out = []
        for s in spec.get("decoders") or spec.get("pretokenizers") or []:
            out.extend(_flatten(s))
        return out
    return [spec]


def _steps(cfg: dict) -> list[dict]:
    """The decoder steps; without a decoder, the decoding the pre-tokenizer / model implies."""
    steps = _flatten(cfg.get("decoder"))
    if steps:
        return steps
    for p in _flatten(cfg.get("pre_tokenizer")):
        if p.get("type") == "ByteLevel":
            return [{"type": "ByteLevel"}]
        if p.get("type") == "Metaspace":
            return [{**p, "type": "Metaspace"}]
    model = cfg.get("model") or {}
    if model.get("type") == "WordPiece":
        prefix = model.get("continuing_subword_prefix", "##")
        return [{"type": "WordPiece", "prefix": prefix, "cleanup": False}]
    if model.get("byte_fallback"):
        return [{"type": "ByteFallback"}]
    raise ValueError(
        "offsets_for_ids: this tokenizer has no decoder and neither a ByteLevel / Metaspace "
        "pre-tokenizer nor a WordPiece model; supported: byte-level BPE, SentencePiece-style "
        "(▁, byte fallback), WordPiece"
    )


def _piece(steps: list[dict], token: str, first: bool) -> tuple[bytes, int, bool]:
    """(bytes, leading separator bytes, is a byte-fallback piece) of one token."""
    val: str | bytes = token
    sep = 0
    bf = False
    fused = False
    for st in steps:
        kind = st["type"]
        if kind == "Replace":
            pat = st["pattern"].get("String")
            if pat is None:
                raise ValueError(f"offsets_for_ids: unsupported Replace decoder pattern {st}")
            if isinstance(val, str):
                val = val.replace(pat, st["content"])
        elif kind == "ByteFallback":
            if isinstance(val, str):
                m = _BYTE_TOKEN.fullmatch(val)
                if m:
                    val, bf = bytes([int(m.group(1), 16)]), True
        elif kind == "Fuse":
            fused = True
        elif kind == "Strip":
            if st.get("stop", 0):
                raise ValueError("offsets_for_ids: a Strip decoder with stop > 0 is not supported")
            if first or not fused:
                c = st["content"]
                cb = c.encode() if isinstance(val, bytes) else c
                for _ in range(st.get("start", 0)):
                    if val[: len(cb)] == cb:
                        val = val[len(cb) :]
                    else:
                        break
        elif kind == "ByteLevel":
            if isinstance(val, str):
                try:
                    val = bytes(_CHAR_TO_BYTE[c] for c in val)
                except KeyError:  # a char outside the byte map: the token's own UTF-8
                    val = val.encode()
        elif kind == "Metaspace":
            if isinstance(val, str):
                rep = st.get("replacement", "▁")
                legacy = "always" if st.get("add_prefix_space") else "never"
                scheme = st.get("prepend_scheme", legacy)
                val = val.replace(rep, "" if first and scheme != "never" else " ")
        elif kind == "WordPiece":
            if isinstance(val, str):
                prefix = st.get("prefix", "##")
                if not first:
                    if val.startswith(prefix):
                        val = val[len(prefix) :]
                    else:
                        val = " " + val
                        sep = 1
                if st.get("cleanup", True):
                    for a, b in _CLEANUP:
                        val = val.replace(a, b)
                    if sep and not val.startswith(" "):
                        sep = 0
        else:
            raise ValueError(
                f"offsets_for_ids: unsupported decoder step {kind!r}; supported: ByteLevel, "
                "Metaspace, Replace, ByteFallback, Fuse, Strip, WordPiece"
            )
    out = val if isinstance(val, bytes) else val.encode()
    return out, sep, bf


class PieceDecoder:
    """The per-id piece table of one tokenizer, in C++; decodes id sequences to (text, offsets).

    Build it with :meth:`for_tokenizer` (cached per tokenizer object); the table costs one pass
    over the vocabulary (~0.5 s for 262k pieces), every decode after that is linear in tokens.
    """

    def __init__(self, tokenizer: Any) -> None:
        bt = _backend(tokenizer)
        cfg = json.loads(bt.to_str())
        steps = _steps(cfg)
        vocab = bt.get_vocab(with_added_tokens=True)
        specials = {a["id"] for a in cfg.get("added_tokens", []) if a.get("special")}
        V = max(vocab.values(), default=-1) + 1
        flags = np.full(V, 4, dtype=np.uint8)  # unknown until seen
        sep = np.zeros(V, dtype=np.uint8)
        rest: list[bytes] = [b""] * V
        first: list[bytes] = [b""] * V
        for token, i in vocab.items():
            r, s, bf = _piece(steps, token, False)
            f, _, _ = _piece(steps, token, True)
            rest[i], first[i], sep[i] = r, f, s
            flags[i] = (1 if i in specials else 0) | (2 if bf else 0)

        def pack(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
            off = np.zeros(V + 1, dtype=np.int64)
            np.cumsum([len(p) for p in parts], out=off[1:])
            return np.frombuffer(b"".join(parts), dtype=np.uint8), off

        rb, ro = pack(rest)
        fb, fo = pack(first)
        self._table = _align.PieceTable(rb, ro, fb, fo, flags, sep)
        self.vocab_size = V
        self.special_ids = frozenset(specials)
        self.steps = [s["type"] for s in steps]

    def __call__(
        self, ids: Sequence[Any], *, skip_special_tokens: bool = False
    ) -> tuple[list[str], list[np.ndarray], list[int]]:
        """``(texts, offsets, broken)`` for a batch of id sequences: per sequence the decoded
        text, int64 ``[n, 2]`` code-point offsets into it, and the number of tokens that got no
        offsets because of invalid UTF-8."""
        rows = [_as_ids(r) for r in ids]
        res = self._table.decode(rows, skip_special_tokens)
        return [r[0] for r in res], [r[1] for r in res], [int(r[2]) for r in res]

    _cache: ClassVar[OrderedDict[int, tuple[Any, PieceDecoder]]] = OrderedDict()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PieceDecoder:
        """The decoder of ``tokenizer``, built on first use and kept for the 8 most recent."""
        key = id(tokenizer)
        with cls._lock:
            hit = cls._cache.get(key)
            if hit is not None and hit[0] is tokenizer:
                cls._cache.move_to_end(key)
                return hit[1]
        dec = cls(tokenizer)
        with cls._lock:
            cls._cache[key] = (tokenizer, dec)  # the reference keeps id() from being reused
            while len(cls._cache) > 8:
                cls._cache.popitem(last=False)
        return dec


def _as_ids(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"offsets_for_ids: each id sequence must be 1-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def offsets_for_ids(
    tokenizer: Any, ids: Any, *, skip_special_tokens: bool = False
) -> tuple[str, np.ndarray] | tuple[list[str], list[np.ndarray]]:
    """Decode ``ids`` with ``tokenizer`` and give every token its char span in the text.

    Args:
        tokenizer: an HF fast tokenizer or a ``tokenizers.Tokenizer`` (byte-level BPE,
            SentencePiece-style with ``▁`` / byte fallback, or WordPiece).
        ids: one sequence (list of ints, 1-D tensor / array) or a batch (list of those, or a
            2-D tensor without padding).
        skip_special_tokens: drop the special tokens' text (they get ``(p, p)`` either way).

    Returns:
        For one sequence ``(text, offsets)``, offsets int64 ``[n, 2]`` in code points of
        ``text``; for a batch ``(texts, offsets)`` lists. See the module docstring for the
        contract (canonical ids give the tokenizer's own ``offset_mapping``; invalid UTF-8
        pieces get the empty span).
    """
    dec = PieceDecoder.for_tokenizer(tokenizer)
    single = isinstance(ids, torch.Tensor | np.ndarray) and np.ndim(ids) == 1
    if not single and not isinstance(ids, torch.Tensor | np.ndarray):
        single = len(ids) == 0 or not isinstance(ids[0], Sequence | np.ndarray | torch.Tensor)
    if single:
        texts, offs, _ = dec([ids], skip_special_tokens=skip_special_tokens)
        return texts[0], offs[0]
    texts, offs, _ = dec(list(ids), skip_special_tokens=skip_special_tokens)
    return texts, offs
