"""One distillation step's loss, shared by the HF Trainer, the examples, the CLI and the DDP test.

``loss = (1 - kd_weight) · CE + kd_weight · KD + mta_weight · L_MTA``

* CE: the student's next-token cross-entropy on its own tokens (HF ``labels``).
* KD: an optional logit-distillation term from a pluggable ``logit_kd(student_out, teacher_out,
  batch)``; the default is ``kd_weight=0``. Ready hooks (losses, in :mod:`mta_ext.logit_kd`):
  ``same_vocab_kl`` for a shared tokenizer, ``uld_kd`` across tokenizers (ULD at shared token
  boundaries).
* L_MTA: ``MTALoss`` on the hidden states (DSA + λ_hid · Hid, already scaled by ``w_span``).

Distributed semantics: every term is a mean over the *local* micro-batch (CE over its tokens,
DSA/Hid normalised by its units' salience weights). DDP averages gradients over ranks, so a DDP
step optimises the mean of per-rank losses, which equals the full-batch loss only when every
rank has the same normalisers; nothing is gathered across ranks. The same holds under FSDP and
DeepSpeed: the loss is computed per rank on full (unsharded) activations. Attach the MTALoss to
the student (``student.mta_loss``) so the wrapper syncs the projectors; they are called through
their own ``forward`` (see examples/README.md for FSDP/ZeRO-3 notes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._layout import AlignmentContract
from ..logit_kd import LogitKD

__all__ = [
    "LogitKD",
    "distillation_loss",
    "teacher_forward",
    "tokens_in_units",
    "unit_coverage",
]


def teacher_forward(
    teacher: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    need_logits: bool = False,
) -> Any:
    """The frozen teacher's forward: eval mode, ``torch.no_grad``, hidden states returned.

    Without ``need_logits`` it runs the HF backbone (``teacher.base_model``) and skips the LM
    head, the largest matmul of a big-vocabulary teacher (Gemma-3: 262k x 640).
    """
    if teacher.training:
        teacher.eval()
    model = teacher
    if not need_logits:
        base = getattr(teacher, "base_model", None)
        if isinstance(base, nn.Module) and base is not teacher:
            model = base
    with torch.no_grad():
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            use_cache=False,
        )


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.float() for v in values]).mean()


def distillation_loss(
    student: nn.Module,
    teacher: nn.Module | None,
    batch: Mapping[str, Any],
    mta_loss: nn.Module | None,
    *,
    mta_weight: float = 1.0,
    kd_weight: float = 0.0,
    logit_kd: LogitKD | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """Compute the distillation loss of one batch from :class:`MTACollator`.

    Args:
        student: the student (an HF causal LM, possibly wrapped by DDP/accelerate).
        teacher: the frozen teacher; may be ``None`` when ``mta_weight == kd_weight == 0``
            (plain fine-tuning, e.g. the baseline of ``mta-ext demo --compare``).
        batch: the collator's dict; its tensors and alignment may be on any device, they are
            moved to the student's.
        mta_loss: an ``mta_ext.MTALoss`` (owns the Hid projectors), or ``None`` with
            ``mta_weight=0``.
        mta_weight: weight of ``L_MTA`` (which already includes ``w_span``).
        kd_weight: weight of the logit-KD term; CE gets ``1 - kd_weight``.
        logit_kd: ``fn(student_out, teacher_out, batch) -> 0-dim tensor``; required when
            ``kd_weight > 0``.

    Returns:
        ``(loss, components, student_out)``: the scalar loss to backpropagate; detached 0-dim
        components ``ce``, ``loss`` and, when on, ``mta``, ``dsa``, ``hid`` (means over layer
        pairs), ``dsa/i``, ``hid/i`` (per pair), ``kd``; the student's model output.
    """
    if not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
    if kd_weight > 0 and logit_kd is None:
        raise ValueError(
            "kd_weight > 0 needs a logit_kd hook: uld_kd() for different tokenizers (ULD at "
            "shared token boundaries), same_vocab_kl() when both share a tokenizer"
        )
    use_mta = mta_weight != 0.0
    if use_mta and mta_loss is None:
        raise ValueError("mta_weight != 0 needs an mta_loss (an mta_ext.MTALoss)")
    if (use_mta or kd_weight > 0) and teacher is None:
        raise ValueError("the MTA and KD terms need a teacher")
    device = batch["input_ids"].device
    for p in student.parameters():
        device = p.device
        break

    def dev(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True)

    student_out = student(
        input_ids=dev(batch["input_ids"]),
        attention_mask=dev(batch["attention_mask"]),
        labels=dev(batch["labels"]),
        output_hidden_states=use_mta,
        use_cache=False,
    )
    ce = student_out.loss
    comps: dict[str, torch.Tensor] = {"ce": ce.detach()}
    loss = (1.0 - kd_weight) * ce if kd_weight > 0 else ce
    teacher_out = None
    if use_mta or kd_weight > 0:
        assert teacher is not None
        teacher_out = teacher_forward(
            teacher,
            dev(batch["teacher_input_ids"]),
            dev(batch["teacher_attention_mask"]),
            need_logits=kd_weight > 0 or getattr(mta_loss, "weighting", None) == "entropy",
        )
    if use_mta:
        assert mta_loss is not None and teacher_out is not None
        alignment = batch["alignment"]
        if hasattr(alignment, "to"):  # an Alignment; a plain dict of layouts must be on device
            alignment = alignment.to(device)
        mta, per_pair = mta_loss(student_out, teacher_out, alignment, return_components=True)
        loss = loss + mta_weight * mta
        comps["mta"] = mta.detach()
        for kind in ("dsa", "hid"):
            vals = [v for k, v in per_pair.items() if k.startswith(kind + "/")]
            if vals:
                comps[kind] = _mean(vals)
        # tensors only ("hid_level" is a string naming the Hid level; not a loggable number)
        comps.update({k: v.detach() for k, v in per_pair.items() if isinstance(v, torch.Tensor)})
    if kd_weight > 0:
        assert logit_kd is not None
        kd = logit_kd(student_out, teacher_out, batch)
        loss = loss + kd_weight * kd
        comps["kd"] = kd.detach()
    comps["loss"] = loss.detach()
    return loss, comps, student_out


def unit_coverage(alignment: AlignmentContract) -> dict[str, float]:
    """Share of each side's non-pad tokens that lie in at least one shared unit (any granularity).

    Returns ``{"teacher": float, "student": float}`` in [0, 1]; special tokens count as
    uncovered, so a BOS-adding tokenizer can never reach 1.
    """
    out: dict[str, float] = {}
    for side in ("teacher", "student"):
        valid = getattr(alignment, side)["attention_mask"].to("cpu").bool()
        n = int(valid.sum())
        out[side] = float((tokens_in_units(alignment, side) & valid).sum()) / n if n else 0.0
    return out


def tokens_in_units(alignment: AlignmentContract, side: str) -> torch.Tensor:
    """bool ``[B, T]`` (CPU): which tokens of ``side`` ("teacher" / "student") lie in at least
    one shared unit of any granularity. Units never contain pads; AND it with the attention
    mask to count per non-pad token."""
    mask = getattr(alignment, side)["attention_mask"]
    depth = torch.zeros(mask.numel() + 1, dtype=torch.int32)
    for layout in alignment.units.values():
        r = getattr(layout, f"{side}_ranges").to("cpu", torch.long)
        if r.numel():
            # difference array over the flattened [B*T] rows: +1 at each start, -1 at each
            # end; the prefix sum is the number of units covering a token
            depth.index_add_(0, r[:, 0], torch.ones(len(r), dtype=torch.int32))
            depth.index_add_(0, r[:, 1], -torch.ones(len(r), dtype=torch.int32))
    return (depth.cumsum(0)[:-1] > 0).reshape(mask.shape)
