"""Text corpora for the demo and examples: the ifbench responses, or a user's JSONL/text file.

Each example is a dict ``{"text": str}`` (optionally ``"spans"``, the cached output of
``mta_ext.annotate_spans`` for that text), which is what :class:`mta_ext.integrations.MTACollator`
consumes.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

_CORPUS = Path(__file__).resolve().parent / "corpora" / "ifbench_responses.jsonl"


def ifbench_path() -> Path:
    """Path of the bundled demo corpus: the 294 IFBench sample responses (Apache-2.0).

    One ``{"text": ...}`` object per line; see ``mta_ext/corpora/README.md`` for the source.
    """
    if not _CORPUS.is_file():
        raise FileNotFoundError(
            f"{_CORPUS} is missing: the mta_ext installation is incomplete (reinstall it), "
            "or pass --data FILE.jsonl|FILE.txt"
        )
    return _CORPUS


def _row_text(row: Any, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        # "text" wins; instruction data keeps only the response (what the student should write).
        for key in ("text", "response"):
            value = row.get(key)
            if isinstance(value, str):
                return value
    raise ValueError(f"{where}: expected a string or an object with a 'text' or 'response' field")


def load_texts(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Read a corpus as a list of non-empty texts.

    ``path=None``: the ifbench responses. ``*.jsonl``: one JSON value per line, a string or an
    object with ``"text"`` (or ``"response"``; a ``"prompt"`` is ignored). ``*.json``: a list of
    the same. Any other file: plain text, one example per paragraph (blank-line separated).
    """
    p = ifbench_path() if path is None else Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data: no such file {str(p)!r}")
    raw = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"data {p}: line {n} is not valid JSON ({exc})") from exc
                texts.append(_row_text(row, f"data {p}: line {n}"))
    elif p.suffix == ".json":
        rows = json.loads(raw)
        if not isinstance(rows, list):
            raise ValueError(f"data {p}: expected a JSON list")
        texts = [_row_text(r, f"data {p}: item {i}") for i, r in enumerate(rows)]
    else:
        texts = re.split(r"\n\s*\n", raw)
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"data {p}: no non-empty texts")
    return texts


# Cut points: line breaks, and whitespace after a sentence end. Captured, so they are kept.
_CUT = re.compile(r"(\s*\n\s*|(?<=[.!?])\s+)")


def chunk_texts(texts: Sequence[str], max_chars: int) -> list[str]:
    """Cut long texts into passages of at most ~``max_chars`` characters.

    Cuts at line breaks and sentence ends (keeping the original separators inside a passage);
    a single longer sentence stays whole (the tokenizer truncates it). Short training
    sequences then hold whole sentences instead of the first words of every document, and few
    units are cut by truncation.
    """
    if max_chars <= 0:
        raise ValueError(f"chunk_texts: max_chars must be > 0, got {max_chars}")
    out: list[str] = []
    for text in texts:
        parts = _CUT.split(text.strip())
        current = parts[0]
        for sep, piece in zip(parts[1::2], parts[2::2], strict=True):
            if current and len(current) + len(sep) + len(piece) > max_chars:
                out.append(current)
                current = piece
            else:
                current = current + sep + piece if current else piece
        if current.strip():
            out.append(current)
    return [c.strip() for c in out if c.strip()]


def train_eval_split(
    texts: Sequence[str], eval_fraction: float = 0.1, *, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministically shuffle (``seed``) and split off ``eval_fraction`` as held-out texts.

    Split the *documents* before chunking them, so that no held-out passage shares a document
    with a training passage.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if len(texts) < 2:
        raise ValueError(f"train_eval_split: need at least 2 texts, got {len(texts)}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(texts) * eval_fraction)), len(texts) - 1)
    return [texts[i] for i in order[n_eval:]], [texts[i] for i in order[:n_eval]]


def shuffled_batches(n_items: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """``steps`` batches of ``batch_size`` indices into ``n_items`` examples: seeded shuffles of
    the data, epoch after epoch (the same seed gives the same batches)."""
    if n_items < 1:
        raise ValueError(f"shuffled_batches: n_items must be >= 1, got {n_items}")
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n_items))
        rng.shuffle(epoch)
        order += epoch
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


class TextDataset(Dataset):
    """A map-style dataset of ``{"text": ..., ["spans": ...]}`` examples for ``MTACollator``.

    ``spans``: optional per-text unit spans from ``mta_ext.annotate_spans`` (computed once,
    e.g. at pre-processing time), so the collator skips spaCy at every step.
    """

    def __init__(self, texts: Sequence[str], spans: Sequence[Any] | None = None) -> None:
        if spans is not None and len(spans) != len(texts):
            raise ValueError(f"spans: got {len(spans)} entries for {len(texts)} texts")
        self.texts = list(texts)
        self.spans = None if spans is None else list(spans)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"text": self.texts[i]}
        if self.spans is not None:
            item["spans"] = self.spans[i]
        return item


class SpanAnnotator:
    """A batched ``datasets`` map function adding a ``"spans"`` column (``annotate_spans``).

    Cache the spans once, in parallel, and let ``MTACollator`` skip spaCy at every step::

        ann = SpanAnnotator()                      # same phrases / words as your Aligner
        ds = ds.map(ann, batched=True, num_proc=2, features=ann.features(ds.features))
        loader = DataLoader(ds, batch_size=8, collate_fn=MTACollator(aligner))

    Args:
        phrases, words: as for :func:`mta_ext.annotate_spans` / ``mta_ext.Aligner`` (the
            cached spans must come from the aligner's own settings).
        text_key: the text column.
        batch_size: spaCy ``nlp.pipe`` batch size.

    Pass ``features=ann.features(ds.features)`` to ``map``: it fixes the column's Arrow type
    (``{"word": [[int64, int64]], "phrase": [...]}``), which ``datasets`` cannot infer from a
    shard whose span lists are all empty (e.g. ``phrases=None``).
    """

    def __init__(
        self,
        *,
        phrases: Any = "spacy",
        words: str = "in_phrases",
        text_key: str = "text",
        batch_size: int = 64,
    ) -> None:
        from .phrases import _check_words

        _check_words(words)
        self.phrases, self.words, self.text_key, self.batch_size = (
            phrases,
            words,
            text_key,
            batch_size,
        )

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        from .phrases import annotate_spans

        if self.text_key not in batch:
            raise ValueError(
                f"SpanAnnotator: no '{self.text_key}' column (columns: {sorted(batch)}); "
                "use map(..., batched=True) and set text_key="
            )
        spans = annotate_spans(
            batch[self.text_key],
            phrases=self.phrases,
            words=self.words,
            batch_size=self.batch_size,
        )
        return {"spans": spans}

    @staticmethod
    def features(base: Any) -> Any:
        """``base`` (the dataset's ``Features``) plus the ``"spans"`` column's type."""
        import datasets

        pairs = datasets.List(datasets.List(datasets.Value("int64")))
        out = datasets.Features(dict(base))
        out["spans"] = {"word": pairs, "phrase": pairs}
        return out
