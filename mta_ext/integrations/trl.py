"""Add ``L_MTA`` to TRL's distillation trainers: ``GKDTrainer`` (one tokenizer), the
experimental ``GOLDTrainer`` (different tokenizers, ULD) and the stable ``DistillationTrainer``
(one tokenizer, always on-policy: ``MTATRLDistillationTrainer``), off-policy and on-policy.

    from mta_ext import MTALoss
    from mta_ext.integrations.trl import MTAGOLDTrainer

    trainer = MTAGOLDTrainer(
        model=student, teacher_model=teacher, args=GOLDConfig(..., lmbda=0.5, use_uld_loss=True),
        processing_class=student_tok, train_dataset=ds,          # everything as for GOLDTrainer
        mta_loss=MTALoss.from_configs(student.config, teacher.config),   # + these two lines
        mta_weight=1.0,
    )
    trainer.train(); trainer.save_model(out_dir)   # student dir + mta_projectors.safetensors

The loss is TRL's own objective (GKD's generalized JSD, GOLD's ULD or JSD, the
DistillationTrainer's chunked JSD) plus ``mta_weight · L_MTA``. How it plugs in, without
re-implementing TRL's ``compute_loss`` or its generation:

* **Hidden states.** During ``compute_loss`` a forward pre-hook on the student and on the
  teacher (their HF backbone for the ``DistillationTrainer``, which calls only that) adds
  ``output_hidden_states=True`` to TRL's own forward calls and a forward hook keeps their
  outputs and inputs: no extra forward pass. The hooks live only inside ``compute_loss``, so
  generation is untouched.
* **Batch types.** TRL decides per batch: off-policy (dataset completions), on-policy (the
  student sampled the completion through TRL's own generation path: HF ``generate``, or vLLM
  where configured), or ``seq_kd`` (GKD: the teacher sampled it). ``lmbda`` and ``seq_kd``
  are TRL's own settings.
* **Alignment.** MTA compares units (words, phrases) of the *completion* text, as TRL's
  losses do (the prompt carries chat markup; each model may see its own template).
  Off-policy, the completion text is the batch's ``original_completion_text`` (GOLD's collator
  emits it) or the decoded label tokens, each side tokenizes it and the tokens are located in
  the row the model saw. On a *sampled* batch the sampler's ids are not re-encoded: their char
  offsets come from :func:`mta_ext.offsets.offsets_for_ids` on the ids at the completion
  positions (the loss is on those ids, which need not be the canonical encoding), the
  completion text is their decode (what TRL decodes); the other tokenizer (GOLD's teacher)
  re-encodes that text, located in its row as TRL built it. A sampled completion that stopped
  on the length limit drops the units reaching into its last, possibly cut, word; tokens that
  are not valid UTF-8 (a character cut by the limit) get no offsets. ``mta_matched`` (share of
  completion tokens with offsets) is logged overall and per batch type
  (``mta_matched/off_policy``, ``/on_policy``, ``/seq_kd``).
* **Spans.** ``annotate_spans`` (spaCy phrases by default) with an in-memory cache per text;
  sampled text is new every step, so ``on_policy_phrases`` (default: the same as
  ``phrases``) can name a cheaper source for sampled batches (``None``: regex words only).
  With ``span_workers=N`` the spans of a sampled batch are parsed in N worker processes while
  TRL's forwards run (:class:`mta_ext.phrases.SpanPool`).
* **Scaling.** ``L_MTA`` is a per-micro-batch mean; it is divided by the accumulation steps
  exactly when the Trainer does not divide TRL's loss (when that loss is normalised by
  ``num_items_in_batch``), so both terms keep their relative weight under accumulation.
* **Logging.** ``trl_loss`` (TRL's own objective), ``mta``, ``dsa``, ``hid`` and
  ``mta_matched`` are appended to TRL's ``_metrics`` and logged next to TRL's metrics.
* **Saving.** The ``MTALoss`` is attached to the student as ``student.mta_loss`` (so the
  optimizer trains the projectors and DDP/FSDP wrap them); saved checkpoints strip those keys
  and write ``mta_projectors.safetensors`` + ``mta_config.json`` next to the student
  (:func:`mta_ext.integrations.load_mta_loss` rebuilds the loss).

TRL's experimental API moves: this module checks the installed ``trl`` against the tested
range (``TESTED_TRL``) and refuses other versions with a clear message (set
``MTA_EXT_ALLOW_UNTESTED_TRL=1`` to try anyway).
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

# The trainer classes are built on first access (module __getattr__), so importing this module
# does not import TRL's trainers.
__all__ = [  # noqa: F822
    "TESTED_TRL",
    "MTAGKDTrainer",
    "MTAGOLDTrainer",
    "MTATRLDistillationTrainer",
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
        on_policy_phrases: span source for sampled batches ("same": ``phrases``; ``None``:
            regex words, no spaCy on the critical path).
        span_workers: worker processes that parse a sampled batch's spans while TRL's
            forwards run (0: parse inline); started on the first sampled batch, stopped when
            ``train()`` returns.
        span_cache_size: texts whose spans are kept in memory (0: no cache; off-policy only:
            sampled text is new every step).
    """

    def __init__(
        self,
        *args: Any,
        mta_loss: nn.Module,
        mta_weight: float = 1.0,
        phrases: SpanSource = "spacy",
        words: str = "in_phrases",
        on_policy_phrases: SpanSource | str = "same",
        span_workers: int = 0,
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
        if self._mta_backbone_hooks and getattr(mta_loss, "weighting", None) == "entropy":
            raise ValueError(
                f"{type(self).__name__}: weighting='entropy' needs the teacher's logits, which "
                "TRL's DistillationTrainer never materialises (it runs the backbone and a "
                "chunked head); use weighting='salience' or 'uniform'"
            )
        model.add_module(MTA_PREFIX.rstrip("."), mta_loss)
        super().__init__(*args, **kwargs)
        self.mta_loss = mta_loss
        self.mta_weight = float(mta_weight)
        self.mta_phrases = phrases
        self.mta_words = words
        self.mta_on_policy_phrases = phrases if on_policy_phrases == "same" else on_policy_phrases
        self._span_cache: OrderedDict[str, Any] = OrderedDict()
        self._span_cache_size = int(span_cache_size)
        self._span_workers = int(span_workers)
        self._span_pool: Any = None  # started on the first sampled batch, stopped after train()
        self._mta_sampled_by: str | None = None  # GKD: who generated the current batch

    # ------------------------------------------------------------------ batch types

    _mta_backbone_hooks = False  # the DistillationTrainer calls only the HF backbone

    def generate_on_policy_outputs(self, model: Any, inputs: Any, generation_config: Any) -> Any:
        """TRL's own generation (GKD, GOLD), recording who sampled the batch."""
        teacher = _inner(self.teacher_model) if hasattr(self, "teacher_model") else None
        self._mta_sampled_by = "seq_kd" if _inner(model) is teacher else "on_policy"
        return super().generate_on_policy_outputs(model, inputs, generation_config)

    def training_step(self, model: nn.Module, inputs: Any, num_items_in_batch: Any = None) -> Any:
        self._mta_sampled_by = None
        return super().training_step(model, inputs, num_items_in_batch)

    def _mta_batch_kind(self, model: nn.Module) -> str:
        """ "off_policy", "on_policy" (the student sampled the completions) or "seq_kd" (the
        teacher did) for the batch in ``compute_loss``."""
        if not model.training:
            return "off_policy"  # TRL evaluates on the dataset's completions
        flags = getattr(self, "_buffered_on_policy", None)
        if flags is not None and hasattr(self, "_step"):  # GOLD: one flag per buffered slice
            i = (self._step - 1) % max(1, int(self.args.gradient_accumulation_steps))
            return "on_policy" if i < len(flags) and flags[i] else "off_policy"
        return self._mta_sampled_by or "off_policy"

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

    def _teacher_side(
        self,
        texts: list[str],
        t_ids: torch.Tensor,
        t_mask: torch.Tensor,
        student_side: tuple[np.ndarray, int, int],
        same: bool,
    ) -> tuple[np.ndarray, int, int]:
        """The teacher's ``(offsets, located, total)``: the student's when both sides saw the
        same rows with one tokenizer (``same``), else the completion text re-encoded by the
        teacher's tokenizer and located in the teacher's rows (the start searched)."""
        if same:
            return student_side
        return self._side_offsets(
            self._teacher_tokenizer(), texts, t_ids, t_mask, [None] * len(texts)
        )

    @staticmethod
    def _align(
        texts: list[str],
        teacher: tuple[torch.Tensor, np.ndarray, torch.Tensor, int, int],
        student: tuple[torch.Tensor, np.ndarray, torch.Tensor, int, int],
        spans: list[Any],
        **kwargs: Any,
    ) -> tuple[Any, float]:
        """``(alignment, matched)`` from each side's ``(ids, offsets, mask, located, total)``:
        ``align_encoded`` on the CPU copies; ``matched`` is the share of both sides' completion
        tokens that were located (the ``mta_matched`` metric)."""
        from ..alignment import align_encoded

        sides = [
            {"input_ids": ids.cpu(), "offset_mapping": offs, "attention_mask": mask.cpu()}
            for ids, offs, mask, _, _ in (teacher, student)
        ]
        alignment = align_encoded(texts, sides[0], sides[1], spans, **kwargs)
        located, total = teacher[3] + student[3], teacher[4] + student[4]
        return alignment, located / max(total, 1)

    def _mta_alignment(
        self,
        inputs: dict[str, Any],
        s_ids: torch.Tensor,
        s_mask: torch.Tensor,
        t_ids: torch.Tensor,
        t_mask: torch.Tensor,
    ) -> tuple[Any, float]:
        """Off-policy batches: the completion text re-encoded by each side, located in its row."""
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
        t_offs, t_hit, t_tot = self._teacher_side(
            texts, t_ids, t_mask, (s_offs, s_hit, s_tot), same
        )
        return self._align(
            texts,
            (t_ids, t_offs, t_mask, t_hit, t_tot),
            (s_ids, s_offs, s_mask, s_hit, s_tot),
            self._spans(texts),
        )

    # ------------------------------------------------------------------ sampled batches

    def _sampled_rows(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampler's rows ``[B, T]`` and the completion positions (bool) in them."""
        if "input_ids" in inputs and "labels" in inputs:  # GKD, GOLD
            ids = inputs["input_ids"]
            comp = inputs["labels"] != -100
            if "attention_mask" in inputs:
                comp = comp & inputs["attention_mask"].bool()
            return ids, comp
        # DistillationTrainer: [prompt (left-padded) | completion (right-padded)]
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        comp = torch.cat(
            [torch.zeros_like(inputs["prompt_mask"]), inputs["completion_mask"]], dim=1
        ).bool()
        return ids, comp

    def _prepare_sampled(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Before TRL's forwards: the sampled ids' offsets (no re-encoding) and the spans
        (submitted to the worker pool, if any, so they parse while the forwards run)."""
        from ..onpolicy import completion_offsets

        ids, comp = self._sampled_rows(inputs)
        # GKD's seq_kd samples with the teacher, which shares the student's tokenizer there
        texts, offs, truncated, n_tok, n_broken = completion_offsets(
            self._student_tokenizer(), ids, comp
        )
        prep = {
            "ids": ids.detach().cpu(),
            "texts": texts,
            "offsets": offs,
            "truncated": truncated,
            "n_tok": n_tok,
            "n_broken": n_broken,
            "future": None,
        }
        if self._span_workers and self.mta_on_policy_phrases is not None:
            if self._span_pool is None:
                from ..phrases import SpanPool

                self._span_pool = SpanPool(
                    self._span_workers, phrases=self.mta_on_policy_phrases, words=self.mta_words
                )
            prep["future"] = self._span_pool.submit(texts)
        return prep

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:  # stop the span workers (a later train() starts new ones)
            if self._span_pool is not None:
                self._span_pool.close()
                self._span_pool = None

    def _sampled_alignment(
        self,
        inputs: dict[str, Any],
        prep: dict[str, Any],
        s_ids: torch.Tensor,
        s_mask: torch.Tensor,
        t_ids: torch.Tensor,
        t_mask: torch.Tensor,
    ) -> tuple[Any, float]:
        """Sampled batches: the sampled ids' own offsets on the student side; the teacher
        shares them (one tokenizer, same rows) or re-encodes the completion text (GOLD)."""
        from ..onpolicy import cut_windows

        if s_ids.shape != prep["ids"].shape or not torch.equal(s_ids.detach().cpu(), prep["ids"]):
            raise RuntimeError(
                "MTA with TRL: the student forward did not see the sampled rows of this batch; "
                "this TRL version's compute_loss is not supported"
            )
        texts = prep["texts"]
        s_offs = prep["offsets"]
        s_hit, s_tot = prep["n_tok"] - prep["n_broken"], prep["n_tok"]
        s_tok, t_tok = self._student_tokenizer(), self._teacher_tokenizer()
        same = t_ids.shape == s_ids.shape and bool(torch.equal(t_ids, s_ids))
        t_offs, t_hit, t_tot = self._teacher_side(
            texts, t_ids, t_mask, (s_offs, s_hit, s_tot), same
        )
        if not same:
            # The teacher saw TRL's decode of the completion; a row where that differs from the
            # decode of the sampled ids gets no teacher offsets (no unit kept, counted below).
            trl_texts = inputs.get("original_completion_text")
            if trl_texts is not None:
                for b, (ours, theirs) in enumerate(zip(texts, trl_texts, strict=True)):
                    if ours != theirs:
                        t_hit -= int((t_offs[b, :, 1] > t_offs[b, :, 0]).sum())
                        t_offs[b] = 0
        if prep["future"] is not None:
            spans = prep["future"].result()
        else:
            spans = annotate_spans(texts, phrases=self.mta_on_policy_phrases, words=self.mta_words)
        win = cut_windows(texts, prep["truncated"])
        return self._align(
            texts,
            (t_ids, t_offs, t_mask, t_hit, t_tot),
            (s_ids, s_offs, s_mask, s_hit, s_tot),
            spans,
            shared_tokenizer=same and s_tok is t_tok,
            windows=(win, win),
        )

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
        kind = self._mta_batch_kind(model)
        prep = self._prepare_sampled(inputs) if kind != "off_policy" else None

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
        if self._mta_backbone_hooks:  # TRL calls the backbone (no LM head) of both models
            student, teacher = student.base_model, teacher.base_model
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
        if prep is None:
            alignment, matched = self._mta_alignment(inputs, s_ids, s_mask, t_ids, t_mask)
        else:
            alignment, matched = self._sampled_alignment(inputs, prep, s_ids, s_mask, t_ids, t_mask)
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
            for part in ("dsa", "hid"):
                vals = [float(v) for k, v in per_pair.items() if k.startswith(part + "/")]
                if vals:
                    m[part].append(sum(vals) / len(vals))
            m["mta_matched"].append(matched)
            m[f"mta_matched/{kind}"].append(matched)
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


class _DistillationMixin(MTATRLMixin):
    """TRL's ``DistillationTrainer`` runs the HF backbone of both models (no LM head) and is
    always on-policy (train and eval generate)."""

    _mta_backbone_hooks = True

    def _mta_batch_kind(self, model: nn.Module) -> str:
        return "on_policy"


_BASES = {
    "MTAGKDTrainer": (
        "trl.experimental.gkd",
        "GKDTrainer",
        "TRL's ``GKDTrainer`` (one tokenizer) + ``mta_weight · L_MTA``.",
    ),
    "MTAGOLDTrainer": (
        "trl.experimental.gold",
        "GOLDTrainer",
        "TRL's ``GOLDTrainer`` (cross-tokenizer) + ``mta_weight · L_MTA``.",
    ),
    "MTATRLDistillationTrainer": (
        "trl",
        "DistillationTrainer",
        "TRL's stable ``DistillationTrainer`` (one tokenizer, on-policy) + ``mta_weight · L_MTA``.",
    ),
}


def _make(name: str) -> type:
    import importlib

    check_trl_version()
    module, base_name, doc = _BASES[name]
    base = getattr(importlib.import_module(module), base_name)
    mixin = _DistillationMixin if name == "MTATRLDistillationTrainer" else MTATRLMixin
    cls = type(name, (mixin, base), {"__doc__": doc + "\n\n" + (MTATRLMixin.__doc__ or "")})
    cls.__module__ = __name__
    return cls


_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name in _BASES:
        if name not in _CLASSES:
            _CLASSES[name] = _make(name)
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
