"""Add ``L_MTA`` to TRL's distillation trainers: ``GKDTrainer`` (one tokenizer) and the
experimental ``GOLDTrainer`` (different tokenizers, ULD), in their off-policy setting.

    from mta_ext import MTALoss
    from mta_ext.integrations.trl import MTAGOLDTrainer

    trainer = MTAGOLDTrainer(
        model=student, teacher_model=teacher, args=GOLDConfig(..., lmbda=0.0, use_uld_loss=True),
        processing_class=student_tok, train_dataset=ds,          # everything as for GOLDTrainer
        mta_loss=MTALoss.from_configs(student.config, teacher.config),   # + these two lines
        mta_weight=1.0,
    )
    trainer.train(); trainer.save_model(out_dir)   # student dir + mta_projectors.safetensors

The loss is TRL's own objective (GKD's generalized JSD, GOLD's ULD or JSD) plus
``mta_weight · L_MTA``. How it plugs in, without re-implementing TRL's ``compute_loss``:

* **Hidden states.** During ``compute_loss`` a forward pre-hook on the student and on the
  teacher adds ``output_hidden_states=True`` to TRL's own forward calls and a forward hook keeps
  their outputs and inputs: no extra forward pass. The hooks live only inside ``compute_loss``,
  so generation is untouched.
* **Alignment.** MTA compares units (words, phrases) of the *completion* text, as TRL's
  losses do (the prompt carries chat markup). The completion text is the batch's
  ``original_completion_text`` (GOLD's collator emits it) or, failing that, the decoded student
  label tokens. Each side tokenizes it with its own tokenizer (char offsets), and the tokens are
  located in the row the model actually saw (student: from the first label; teacher: searched).
  Tokens that do not match (a re-tokenisation that differs at the prompt/completion seam) get
  no offsets and belong to no unit; ``mta_matched`` logs the share that matched. Spans come from
  ``annotate_spans`` (spaCy phrases by default) with an in-memory cache per text.
* **Scaling.** ``L_MTA`` is a per-micro-batch mean; it is divided by the accumulation steps
  exactly when the Trainer does not divide TRL's loss (when that loss is normalised by
  ``num_items_in_batch``), so both terms keep their relative weight under accumulation.
* **Logging.** ``trl_loss`` (TRL's own objective), ``mta``, ``dsa``, ``hid`` and
  ``mta_matched`` are appended to TRL's ``_metrics`` and logged next to TRL's metrics.
* **Saving.** The ``MTALoss`` is attached to the student as ``student.mta_loss`` (so the
  optimizer trains the projectors and DDP/FSDP wrap them); saved checkpoints strip those keys
  and write ``mta_projectors.safetensors`` + ``mta_config.json`` next to the student
  (:func:`mta_ext.integrations.load_mta_loss` rebuilds the loss).

Only the off-policy setting (``lmbda=0``, ``seq_kd=False``) is supported: on-policy batches
are generated inside the trainer and were not tested with MTA. TRL's experimental API moves:
this module checks the installed ``trl`` against the tested range (``TESTED_TRL``) and refuses
other versions with a clear message (set ``MTA_EXT_ALLOW_UNTESTED_TRL=1`` to try anyway).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..phrases import SpanSource, annotate_spans
from .checkpoint import MTA_PREFIX, save_mta_loss, split_state_dict

# MTAGKDTrainer / MTAGOLDTrainer are built on first access (module __getattr__), so importing
# this module does not import both experimental TRL trainers.
__all__ = [  # noqa: F822
    "TESTED_TRL",
    "MTAGKDTrainer",
    "MTAGOLDTrainer",
    "MTATRLMixin",
    "check_trl_version",
]

# The trl versions this module was tested with: >= first, < second.
TESTED_TRL = ("1.16.0", "1.17")
_ALLOW_ENV = "MTA_EXT_ALLOW_UNTESTED_TRL"


def check_trl_version(version: str | None = None) -> str:
    """Return the installed trl version; raise ImportError outside ``TESTED_TRL``.

    ``MTA_EXT_ALLOW_UNTESTED_TRL=1`` turns the error into a warning.
    """
    from packaging.version import Version

    if version is None:
        try:
            import trl
        except ImportError as exc:
            raise ImportError(
                "mta_ext.integrations.trl needs TRL: pip install 'mta_ext[trl]' "
                f"(tested: trl>={TESTED_TRL[0]},<{TESTED_TRL[1]})"
            ) from exc
        version = str(trl.__version__)
    lo, hi = TESTED_TRL
    if not Version(lo) <= Version(version) < Version(hi):
        msg = (
            f"mta_ext.integrations.trl was tested with trl>={lo},<{hi}, found trl {version}. "
            "TRL's GKD/GOLD trainers are experimental and their internals change between "
            f"releases: install a tested version (pip install 'trl>={lo},<{hi}') or set "
            f"{_ALLOW_ENV}=1 to try this one anyway."
        )
        if os.environ.get(_ALLOW_ENV) == "1":
            warnings.warn(msg, stacklevel=2)
        else:
            raise ImportError(msg)
    return version


def _inner(module: nn.Module) -> nn.Module:
    """The model under DDP / accelerate / DeepSpeed wrappers (they keep it as ``.module``)."""
    while isinstance(getattr(module, "module", None), nn.Module):
        module = module.module
    return module


def _locate(row: np.ndarray, ids: Sequence[int], start: int | None) -> tuple[int, int]:
    """``(start, n)``: ``ids[:n]`` equals ``row[start:start+n]``; ``start`` searched when None
    (the start with the longest match, the last one on ties)."""
    ids_np = np.asarray(ids, dtype=np.int64)
    if len(ids_np) == 0:
        return 0, 0

    def lcp(s: int) -> int:
        m = min(len(ids_np), len(row) - s)
        if m <= 0:
            return 0
        neq = np.nonzero(row[s : s + m] != ids_np[:m])[0]
        return int(neq[0]) if len(neq) else m

    if start is not None:
        return start, lcp(start)
    best, best_n = 0, 0
    for s in np.nonzero(row == ids_np[0])[0].tolist():
        n = lcp(s)
        if n >= best_n:
            best, best_n = s, n
    return best, best_n


class MTATRLMixin:
    """Adds ``mta_weight · L_MTA`` to a TRL distillation trainer (see the module docstring).

    Keyword args (besides the TRL trainer's own; ``model`` must be an instantiated student):
        mta_loss: an ``mta_ext.MTALoss`` (attached to the student as ``student.mta_loss``).
        mta_weight: weight of ``L_MTA``.
        phrases, words: span source, as for ``mta_ext.Aligner`` / ``annotate_spans``.
        span_cache_size: texts whose spans are kept in memory (0: no cache).
    """

    def __init__(
        self,
        *args: Any,
        mta_loss: nn.Module,
        mta_weight: float = 1.0,
        phrases: SpanSource = "spacy",
        words: str = "in_phrases",
        span_cache_size: int = 100_000,
        **kwargs: Any,
    ) -> None:
        check_trl_version()
        model = kwargs.get("model", args[0] if args else None)
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"{type(self).__name__}: pass the student as an instantiated model= (got "
                f"{type(model).__name__}): the MTALoss is attached to it before the optimizer "
                "exists"
            )
        if mta_loss is None:
            raise ValueError(f"{type(self).__name__}: mta_loss= (an mta_ext.MTALoss) is required")
        if kwargs.get("peft_config") is not None:
            raise ValueError(f"{type(self).__name__}: peft_config is not supported with MTA")
        targs = kwargs.get("args", args[2] if len(args) > 2 else None)  # (model, teacher, args)
        if targs is None:
            raise ValueError(f"{type(self).__name__}: pass the TRL config as args=")
        if getattr(targs, "lmbda", 0.0) != 0.0 or getattr(targs, "seq_kd", False):
            raise ValueError(
                f"{type(self).__name__}: MTA supports the off-policy setting only (set lmbda=0.0 "
                f"and seq_kd=False; got lmbda={targs.lmbda}, seq_kd={targs.seq_kd})"
            )
        model.add_module(MTA_PREFIX.rstrip("."), mta_loss)
        super().__init__(*args, **kwargs)
        self.mta_loss = mta_loss
        self.mta_weight = float(mta_weight)
        self.mta_phrases = phrases
        self.mta_words = words
        self._span_cache: OrderedDict[str, Any] = OrderedDict()
        self._span_cache_size = int(span_cache_size)

    # ------------------------------------------------------------------ tokenizers

    def _student_tokenizer(self) -> Any:
        tok = getattr(self, "_tokenizer", None) or self.processing_class
        return getattr(tok, "tokenizer", tok)  # a processor wraps it

    def _teacher_tokenizer(self) -> Any:
        return getattr(self, "teacher_tokenizer", None) or self._student_tokenizer()

    # ------------------------------------------------------------------ spans + alignment

    def _spans(self, texts: list[str]) -> list[Any]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._span_cache]
        got = dict(
            zip(
                missing,
                annotate_spans(missing, phrases=self.mta_phrases, words=self.mta_words)
                if missing
                else [],
                strict=True,
            )
        )
        out = []
        for t in texts:
            if t in got:
                out.append(got[t])
            else:
                out.append(self._span_cache[t])
                self._span_cache.move_to_end(t)
        if self._span_cache_size > 0:
            self._span_cache.update(got)
            while len(self._span_cache) > self._span_cache_size:
                self._span_cache.popitem(last=False)
        return out

    @staticmethod
    def _side_offsets(
        tok: Any,
        texts: list[str],
        ids: torch.Tensor,
        mask: torch.Tensor,
        starts: list[int | None],
    ) -> tuple[np.ndarray, int, int]:
        """Char offsets ``[B, T, 2]`` into ``texts`` for the completion tokens found in ``ids``."""
        enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        ids_np = ids.detach().cpu().numpy()
        mask_np = mask.detach().cpu().numpy().astype(bool)
        offs = np.zeros((*ids_np.shape, 2), dtype=np.int64)
        matched = total = 0
        for b, (c_ids, c_offs) in enumerate(
            zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ):
            row = np.where(mask_np[b], ids_np[b], -1)
            s, n = _locate(row, c_ids, starts[b])
            if n:
                offs[b, s : s + n] = np.asarray(c_offs[:n], dtype=np.int64).reshape(n, 2)
            matched += n
            total += len(c_ids)
        return offs, matched, total

    def _mta_alignment(
        self,
        inputs: dict[str, Any],
        s_ids: torch.Tensor,
        s_mask: torch.Tensor,
        t_ids: torch.Tensor,
        t_mask: torch.Tensor,
    ) -> tuple[Any, float]:
        from ..alignment import align_encoded

        labels = inputs.get("labels")
        if labels is None:
            raise ValueError("MTA with TRL: the batch has no 'labels' (the completion positions)")
        labels_cpu = labels.detach().cpu()
        valid = labels_cpu != -100
        s_tok, t_tok = self._student_tokenizer(), self._teacher_tokenizer()
        texts = inputs.get("original_completion_text")
        if texts is None:  # GKD: decode the completion (label) tokens
            texts = s_tok.batch_decode(
                [row[m].tolist() for row, m in zip(labels_cpu, valid, strict=True)],
                skip_special_tokens=False,
                clean_up_tokenization_spaces=False,
            )
        texts = list(texts)
        starts: list[int | None] = [
            int(m.nonzero()[0]) if bool(m.any()) else None for m in valid.unbind(0)
        ]
        s_offs, s_hit, s_tot = self._side_offsets(s_tok, texts, s_ids, s_mask, starts)
        same = t_tok is s_tok and t_ids.shape == s_ids.shape and bool(torch.equal(t_ids, s_ids))
        if same:
            t_offs, t_hit, t_tot = s_offs, s_hit, s_tot
        else:
            t_offs, t_hit, t_tot = self._side_offsets(
                t_tok, texts, t_ids, t_mask, [None] * len(texts)
            )
        alignment = align_encoded(
            texts,
            {"input_ids": t_ids.cpu(), "offset_mapping": t_offs, "attention_mask": t_mask.cpu()},
            {"input_ids": s_ids.cpu(), "offset_mapping": s_offs, "attention_mask": s_mask.cpu()},
            self._spans(texts),
        )
        matched = (s_hit + t_hit) / max(s_tot + t_tot, 1)
        return alignment, matched

    # ------------------------------------------------------------------ loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        if self.mta_weight == 0.0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        captured: dict[str, Any] = {}

        def pre_hook(name: str):
            def hook(mod: nn.Module, args: tuple, kwargs: dict):
                if name + "_in" in captured:
                    return None
                if "input_ids" not in kwargs:
                    raise RuntimeError(
                        f"MTA with TRL: the {name} was called without input_ids=; this TRL "
                        "version's compute_loss is not supported"
                    )
                captured[name + "_in"] = (kwargs["input_ids"], kwargs.get("attention_mask"))
                return args, {**kwargs, "output_hidden_states": True}

            return hook

        def post_hook(name: str):
            def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any):
                captured.setdefault(name, output)

            return hook

        student, teacher = _inner(model), _inner(self.teacher_model)
        handles = []
        for name, mod in (("student", student), ("teacher", teacher)):
            handles.append(mod.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(mod.register_forward_hook(post_hook(name), with_kwargs=True))
        try:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        finally:
            for h in handles:
                h.remove()
        for name in ("student", "teacher"):
            if name not in captured:
                raise RuntimeError(
                    f"MTA with TRL: the {name} forward was not observed during compute_loss; "
                    "this TRL version's compute_loss is not supported"
                )
        s_ids, s_mask = captured["student_in"]
        t_ids, t_mask = captured["teacher_in"]
        s_mask = torch.ones_like(s_ids) if s_mask is None else s_mask
        t_mask = torch.ones_like(t_ids) if t_mask is None else t_mask
        alignment, matched = self._mta_alignment(inputs, s_ids, s_mask, t_ids, t_mask)
        device = loss.device
        mta, per_pair = self.mta_loss(
            captured["student"], captured["teacher"], alignment.to(device), return_components=True
        )
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (
                bool(self.model_accepts_loss_kwargs) and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        mta_term = self.mta_weight * mta
        if scaled and model.training:  # the Trainer will not divide by the accumulation steps
            mta_term = mta_term / getattr(self, "current_gradient_accumulation_steps", 1)
        total = loss + mta_term.to(loss.dtype)
        if model.training:
            m = self._metrics["train"]
            m["trl_loss"].append(float(loss.detach()))
            m["mta"].append(float(mta.detach()))
            for kind in ("dsa", "hid"):
                vals = [float(v) for k, v in per_pair.items() if k.startswith(kind + "/")]
                if vals:
                    m[kind].append(sum(vals) / len(vals))
            m["mta_matched"].append(matched)
        return (total, outputs) if return_outputs else total

    # ------------------------------------------------------------------ saving

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        student_sd, mta_sd = split_state_dict(state_dict)
        super()._save(output_dir, state_dict=student_sd)
        if self.args.should_save:
            save_mta_loss(self.mta_loss, output_dir, state_dict=mta_sd or None)


def _make(name: str) -> type:
    check_trl_version()
    if name == "MTAGKDTrainer":
        from trl.experimental.gkd import GKDTrainer

        base, doc = GKDTrainer, "TRL's ``GKDTrainer`` (one tokenizer) + ``mta_weight · L_MTA``."
    else:
        from trl.experimental.gold import GOLDTrainer

        base, doc = GOLDTrainer, "TRL's ``GOLDTrainer`` (cross-tokenizer) + ``mta_weight · L_MTA``."
    cls = type(name, (MTATRLMixin, base), {"__doc__": doc + "\n\n" + (MTATRLMixin.__doc__ or "")})
    cls.__module__ = __name__
    return cls


_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name in ("MTAGKDTrainer", "MTAGOLDTrainer"):
        if name not in _CLASSES:
            _CLASSES[name] = _make(name)
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
