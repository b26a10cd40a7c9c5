"""Span annotation throughput: spaCy per step vs cached with ``datasets`` (num_proc 1 and 2).

    python -m benchmarks.training.bench_data [--quick] [--n 256] [--batch 8]

Texts: the bundled IFBench responses cut into ~256-char passages. Rows:
* ``annotate_spans``: spaCy phrases + words in one process (what the collator runs per batch
  when no spans are cached).
* ``datasets.map num_proc=1 / 2``: ``Dataset.map(SpanAnnotator(), batched=True, num_proc=N)``
  (pool start-up and Arrow writes included).
* ``collate on the fly / cached``: ``MTACollator`` on batches of ``--batch`` texts (tokenizing
  both sides, spaCy or not, the C++ merge), teacher Qwen2 BPE / student Mistral SentencePiece.

Wall times on a shared machine include waiting for a core: the JSON records the load average
before and after. Writes ``benchmarks/results/data_cpu[_quick].json``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python_tests"))

from benchmarks.common import machine_info, markdown_table, write_results  # noqa: E402

COLUMNS = ["what", "texts", "seconds", "texts_per_s", "sentences_per_s", "kchars_per_s"]


def _row(what: str, texts: list[str], seconds: float) -> dict:
    sentences = sum(max(1, len(re.findall(r"[.!?](?:\s|$)", t))) for t in texts)
    chars = sum(len(t) for t in texts)
    return {
        "what": what,
        "texts": len(texts),
        "seconds": seconds,
        "texts_per_s": len(texts) / seconds,
        "sentences_per_s": sentences / seconds,
        "kchars_per_s": chars / seconds / 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke: 48 texts")
    ap.add_argument("--n", type=int, default=256, help="texts")
    ap.add_argument("--batch", type=int, default=8, help="collator batch size")
    ap.add_argument("--device", default="cpu", help="ignored: this runs on the CPU")
    args = ap.parse_args(argv)
    try:
        import datasets
    except ImportError:
        print("[skip] bench_data: `datasets` is not installed (pip install 'mta_ext[data]')")
        return
    from tokenizers_util import mistral, qwen

    import mta_ext
    from mta_ext.data import SpanAnnotator, chunk_texts, load_texts
    from mta_ext.integrations import MTACollator
    from mta_ext.phrases import load_spacy

    n = 48 if args.quick else args.n
    texts = chunk_texts(load_texts(), 256)[:n]
    load_before = os.getloadavg()
    load_spacy()  # model load is not part of the throughput
    mta_ext.annotate_spans(texts[:4])
    rows = []

    t0 = time.perf_counter()
    spans = mta_ext.annotate_spans(texts)
    rows.append(_row("annotate_spans (1 process)", texts, time.perf_counter() - t0))

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"text": texts})
    ann = SpanAnnotator()
    for num_proc in (1, 2):
        t0 = time.perf_counter()
        cached = ds.map(
            ann,
            batched=True,
            batch_size=32,
            num_proc=num_proc if num_proc > 1 else None,
            features=ann.features(ds.features),
            load_from_cache_file=False,
        )
        rows.append(_row(f"datasets.map num_proc={num_proc}", texts, time.perf_counter() - t0))
    assert [dict(s) for s in cached["spans"]] == spans

    collator = MTACollator(mta_ext.Aligner(qwen(), mistral()), max_length=128)
    collator(texts[:2])  # warm-up
    for what, examples in (
        ("collate on the fly (spaCy per batch)", [{"text": t} for t in texts]),
        ("collate with cached spans", list(cached)),
    ):
        t0 = time.perf_counter()
        for i in range(0, len(examples), args.batch):
            collator(examples[i : i + args.batch])
        rows.append(_row(what, texts, time.perf_counter() - t0))

    print(markdown_table(rows, COLUMNS))
    info = machine_info("cpu")
    info["loadavg_before"], info["loadavg_after"] = load_before, os.getloadavg()
    print(f"load average before {load_before}, after {info['loadavg_after']}")
    name = "data_cpu" + ("_quick" if args.quick else "")
    print("wrote", write_results(name, {"machine": info, "rows": rows}))


if __name__ == "__main__":
    main()
