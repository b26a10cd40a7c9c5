"""Logit distillation losses: ULD across tokenizers at shared token boundaries (plus an optional
exact term), and the plain KL for one shared tokenizer. The maths and the gradients:
docs/DESIGN.md §2.8; the plain-loop twins: ``mta_ext.reference.logit_kd``.

Two tokenizations of one text agree on some token *boundaries*: char positions where a teacher
token and a student token both end. At such a position both models predict "what comes after
this char", so their next-token distributions are comparable, even though the vocabularies
differ. :func:`boundary_pairs` finds these positions from the aligner's offsets;
:func:`uld_kd` builds a ``logit_kd`` hook (:data:`LogitKD`) for
:func:`mta_ext.integrations.distillation_loss`:

* ULD (Universal Logit Distillation, Boizard et al. 2024): the L1 distance between the two
  distributions' probabilities sorted in descending order, truncated to the top ``k`` ranks
  (zero-padded when a vocabulary is smaller than ``k``), averaged over the matched positions;
* optionally ``exact_weight · KL(p_T || p_S)`` over the tokens whose strings exist in both
  vocabularies (:func:`shared_vocab`), each side renormalised over those tokens.

Memory: the logits are processed in chunks of positions, so beyond the models' own logits the
extra memory is ``O(chunk · V)`` fp32 plus ``O(N · k)``, never ``O(B · T · V_teacher)`` in fp32
(Gemma-3's vocabulary is 262k). The student's gradient is recomputed chunk by chunk in the
backward pass (a custom autograd function) instead of keeping the chunks' softmax alive.

Boundary rule (per side, per example): a token is *usable* when it is a non-pad token with a
non-empty char span (specials such as BOS have empty offsets); a usable token is a boundary
when the next usable token starts at or after its end (so the first byte piece of a character
split into several byte tokens, whose spans overlap, is not a boundary). A teacher boundary
and a student boundary of the same example match when their end chars are equal.

With one tokenizer on both sides (same ``T``, same vocabulary) :func:`same_vocab_kl` is the
hook: the token-level forward KL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._layout import AlignmentLike

__all__ = [
    "LogitKD",
    "boundary_pairs",
    "same_vocab_kl",
    "shared_vocab",
    "shared_vocab_kl",
    "sorted_top_probs",
    "uld_distance",
    "uld_distance_to_probs",
    "uld_kd",
]

# A logit-KD hook: ``fn(student_out, teacher_out, batch) -> 0-dim tensor``, the KD term of
# ``mta_ext.integrations.distillation_loss`` (the outputs carry ``.logits``).
LogitKD = Callable[[Any, Any, Mapping[str, Any]], torch.Tensor]

# Default chunk budget: elements of one [chunk, V] fp32 block (2**24 floats = 64 MiB).
_CHUNK_ELEMS = 1 << 24


def _side(alignment: AlignmentLike, side: str) -> Mapping[str, torch.Tensor]:
    d = alignment.get(side) if isinstance(alignment, Mapping) else getattr(alignment, side, None)
    if d is None or "offsets" not in d or "attention_mask" not in d:
        raise ValueError(
            f"logit KD needs the alignment's {side} 'offsets' and 'attention_mask' (the batch of "
            "MTACollator carries them)"
        )
    return d


def _boundaries(offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: boundary tokens (see the module docstring)."""
    start, end = offsets[..., 0], offsets[..., 1]
    usable = mask.bool() & (end > start)
    big = torch.iinfo(torch.int64).max
    s = torch.where(usable, start, torch.full_like(start, big))
    # suffix minimum of the next positions' starts (offsets are monotone, so it is the next one)
    suffix = torch.flip(torch.cummin(torch.flip(s, [1]), 1).values, [1])
    next_start = torch.cat([suffix[:, 1:], torch.full_like(suffix[:, :1], big)], 1)
    return usable & (next_start >= end)


def boundary_pairs(
    teacher_offsets: torch.Tensor,
    teacher_mask: torch.Tensor,
    student_offsets: torch.Tensor,
    student_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions where both tokenizations end a token at the same char.

    Args:
        teacher_offsets / student_offsets: int64 ``[B, T, 2]`` char offsets (the aligner's).
        teacher_mask / student_mask: ``[B, T]`` attention masks.

    Returns:
        ``(teacher_rows, student_rows)``: int64 ``[N]`` indices into the flattened ``[B*T_t]``
        and ``[B*T_s]`` axes, matched pairwise, in (example, char) order.
    """
    to, so = teacher_offsets.to("cpu", torch.int64), student_offsets.to("cpu", torch.int64)
    tm, sm = teacher_mask.to("cpu"), student_mask.to("cpu")
    if to.dim() != 3 or so.dim() != 3 or to.shape[0] != so.shape[0]:
        raise ValueError(
            f"boundary_pairs: offsets must be [B, T, 2] with one B, got teacher "
            f"{tuple(to.shape)} and student {tuple(so.shape)}"
        )
    bt, bs = _boundaries(to, tm), _boundaries(so, sm)
    span = 1 + max(int(x[..., 1].max()) if x.numel() else 0 for x in (to, so))
    base = torch.arange(to.shape[0]).unsqueeze(1) * span
    kt = (base + to[..., 1])[bt]  # strictly increasing: row-major, ends increase in a row
    ks = (base + so[..., 1])[bs]
    ft = torch.nonzero(bt.reshape(-1)).squeeze(1)
    fs = torch.nonzero(bs.reshape(-1)).squeeze(1)
    if kt.numel() == 0 or ks.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    hit = torch.isin(kt, ks)
    pos = torch.searchsorted(ks, kt[hit])
    return ft[hit], fs[pos]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for half / bf16 / fp32 logits, fp64 for fp64 (the tests' gradcheck)."""
    return torch.promote_types(t.dtype, torch.float32)


class _SortedTopProbs(torch.autograd.Function):
    """``softmax(logits[rows] / τ).topk(k)`` values (sorted, descending), chunked.

    Forward keeps only the top-k indices and the log-normalisers; backward recomputes each
    chunk's softmax: ``d p_r / d z_v = p_r (δ_rv − p_v)`` (divided by τ).
    """

    @staticmethod
    def forward(ctx, logits2d, rows, k, temperature, chunk):
        N = rows.numel()
        cdt = _compute_dtype(logits2d)
        out = torch.empty(N, k, dtype=cdt, device=logits2d.device)
        idx = torch.empty(N, k, dtype=torch.int64, device=logits2d.device)
        lse = torch.empty(N, dtype=cdt, device=logits2d.device)
        for c in range(0, N, chunk):
            z = logits2d.index_select(0, rows[c : c + chunk]).to(cdt)
            if temperature != 1.0:
                z = z / temperature
            lse_c = torch.logsumexp(z, -1)
            v, i = z.topk(k, -1)
            out[c : c + chunk] = torch.exp(v - lse_c.unsqueeze(-1))
            idx[c : c + chunk] = i
            lse[c : c + chunk] = lse_c
        ctx.save_for_backward(logits2d, rows, idx, lse, out)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits2d, rows, idx, lse, out = ctx.saved_tensors
        tau, chunk = ctx.temperature, ctx.chunk
        grad = torch.zeros_like(logits2d)
        g_all = grad_out.to(out.dtype)
        for c in range(0, rows.numel(), chunk):
            r = rows[c : c + chunk]
            z = logits2d.index_select(0, r).to(out.dtype)
            if tau != 1.0:
                z = z / tau
            p = torch.exp(z - lse[c : c + chunk].unsqueeze(-1))
            gp = g_all[c : c + chunk] * out[c : c + chunk]
            gz = p.mul_(-gp.sum(-1, keepdim=True))
            gz.scatter_add_(1, idx[c : c + chunk], gp)
            if tau != 1.0:
                gz = gz / tau
            grad.index_add_(0, r, gz.to(grad.dtype))
        return grad, None, None, None, None


def _chunk_for(V: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, _CHUNK_ELEMS // max(V, 1))


def _top_probs(logits: torch.Tensor, rows: torch.Tensor, k: int, tau: float, chunk: int | None):
    logits2d = logits.reshape(-1, logits.shape[-1])
    kk = min(k, logits2d.shape[-1])
    ch = _chunk_for(logits2d.shape[-1], chunk)
    if logits2d.requires_grad:
        p = _SortedTopProbs.apply(logits2d, rows, kk, tau, ch)
    else:
        with torch.no_grad():
            p = _SortedTopProbs.forward(_NoCtx(), logits2d, rows, kk, tau, ch)
    if kk < k:
        p = torch.nn.functional.pad(p, (0, k - kk))
    return p


class _NoCtx:
    """Stand-in ``ctx`` for calling the forward without autograd (teacher side)."""

    def save_for_backward(self, *args: Any) -> None:
        pass


def _check_knobs(top_k: int, temperature: float) -> None:
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def sorted_top_probs(
    logits: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    top_k: int = 128,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The ``top_k`` largest next-token probabilities of some positions, sorted descending.

    This is one side of ULD. Use it to cache a teacher once (offline distillation: run the
    large teacher over the corpus, keep ``[tokens, k]`` instead of ``[tokens, V]``) and train
    against the cache with :func:`uld_distance_to_probs`; the result is the same as
    :func:`uld_distance` on the live teacher logits, bit for bit, on one machine.

    Args:
        logits: ``[..., V]`` float logits (any float dtype). Differentiable: the backward
            recomputes each chunk's softmax instead of keeping it.
        rows: int64 ``[N]`` rows of the flattened ``[-1, V]`` logits; ``None`` = every row.
        top_k: ranks kept; when ``V < top_k`` the missing ranks are zero (probability 0).
        temperature: softmax temperature.
        chunk_size: rows per chunk (default: a 64 MiB fp32 block per chunk).

    Returns:
        ``[N, top_k]`` probabilities in the compute dtype (fp32, or fp64 for fp64 logits).
    """
    _check_knobs(top_k, temperature)
    if rows is None:
        n = logits.numel() // max(logits.shape[-1], 1) if logits.dim() else 0
        rows = torch.arange(n, device=logits.device)
    elif rows.dim() != 1 or rows.dtype != torch.int64:
        raise ValueError(
            f"sorted_top_probs: rows must be a 1-D int64 tensor, got {rows.dtype} "
            f"{tuple(rows.shape)}"
        )
    return _top_probs(logits, rows.to(logits.device), top_k, temperature, chunk_size)


def uld_distance_to_probs(
    student_logits: torch.Tensor,
    student_rows: torch.Tensor,
    teacher_probs: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """ULD against precomputed teacher probabilities (a cached teacher).

    Args:
        student_logits: ``[B, T_s, V_s]`` (any float dtype; gradients flow into it).
        student_rows: int64 ``[N]`` rows of the flattened ``[B*T_s]`` axis.
        teacher_probs: ``[N, k]`` sorted top-k teacher probabilities of the matched teacher
            positions, row ``n`` paired with ``student_rows[n]`` (:func:`sorted_top_probs`
            with the teacher rows of :func:`boundary_pairs`, the same ``temperature``).
        temperature: the student's softmax temperature.
        chunk_size: positions per chunk.

    Returns:
        0-dim fp32 tensor: mean over ``N`` of ``Σ_r |p_S,r − p_T,r|`` over the ``k`` ranks
        (``0`` with a zero gradient when ``N == 0``).
    """
    if teacher_probs.dim() != 2 or student_rows.dim() != 1:
        raise ValueError(
            f"uld_distance_to_probs: teacher_probs must be [N, k] and student_rows [N], got "
            f"{tuple(teacher_probs.shape)} and {tuple(student_rows.shape)}"
        )
    if teacher_probs.shape[0] != student_rows.shape[0]:
        raise ValueError(
            f"uld_distance_to_probs: teacher_probs has {teacher_probs.shape[0]} rows but "
            f"student_rows has {student_rows.shape[0]}"
        )
    k = teacher_probs.shape[1]
    if k < 1:
        raise ValueError("uld_distance_to_probs: teacher_probs needs at least one rank (k >= 1)")
    _check_knobs(k, temperature)
    if student_rows.numel() == 0:
        return student_logits.sum().float() * 0.0
    dev = student_logits.device
    ps = _top_probs(student_logits, student_rows.to(dev), k, temperature, chunk_size)
    pt = teacher_probs.detach().to(dev, ps.dtype)
    return (ps - pt).abs().sum(-1).mean()


def uld_distance(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    *,
    top_k: int = 128,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean over matched positions of ``Σ_r |sort(p_S)_r − sort(p_T)_r|`` over the top ``k`` ranks.

    Args:
        student_logits: ``[B, T_s, V_s]`` (any float dtype; gradients flow into it).
        teacher_logits: ``[B, T_t, V_t]`` (no gradient is taken).
        student_rows / teacher_rows: int64 ``[N]`` matched rows of the flattened ``[B*T]`` axes
            (:func:`boundary_pairs`).
        top_k: ranks compared (a side with fewer tokens is zero-padded).
        temperature: softmax temperature for both sides.
        chunk_size: positions per chunk (default: ``2**24 // V`` rows, 64 MiB of fp32).

    Returns:
        0-dim fp32 tensor (``0`` with a zero gradient when ``N == 0``).
    """
    _check_knobs(top_k, temperature)
    if student_rows.shape != teacher_rows.shape or student_rows.dim() != 1:
        raise ValueError(
            f"student_rows {tuple(student_rows.shape)} and teacher_rows "
            f"{tuple(teacher_rows.shape)} must be matching 1-D index tensors"
        )
    if student_rows.numel() == 0:
        return student_logits.sum().float() * 0.0
    pt = _top_probs(
        teacher_logits.detach(),
        teacher_rows.to(teacher_logits.device),
        top_k,
        temperature,
        chunk_size,
    )
    return uld_distance_to_probs(
        student_logits, student_rows, pt, temperature=temperature, chunk_size=chunk_size
    )


# ----------------------------------------------------------------------------- exact term


def _token_strings(tok: Any) -> dict[str, int]:
    """Decoded string -> id for every token that decodes to clean text (no partial UTF-8)."""
    n = len(tok)
    special = set(getattr(tok, "all_special_ids", []) or [])
    out: dict[str, int] = {}
    for i in range(n):
        if i in special:
            continue
        s = tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if s and "\ufffd" not in s and s not in out:
            out[s] = i
    return out


def shared_vocab(
    teacher_tokenizer: Any, student_tokenizer: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens whose decoded strings exist in both vocabularies.

    Each token id is decoded on its own (``' world'`` for byte-level ``Ġworld`` and for
    SentencePiece ``▁world`` alike); special tokens and pieces of a multi-byte character are
    left out. Takes a few seconds for a 262k vocabulary (cache the result).

    Returns:
        ``(teacher_ids, student_ids)``: int64 ``[M]``, matched pairwise.
    """
    t = _token_strings(teacher_tokenizer)
    s = _token_strings(student_tokenizer)
    common = sorted(set(t) & set(s), key=lambda x: t[x])
    if not common:
        raise ValueError("shared_vocab: the two tokenizers share no token string")
    return (
        torch.tensor([t[x] for x in common], dtype=torch.int64),
        torch.tensor([s[x] for x in common], dtype=torch.int64),
    )


def _shared_kl_chunk(
    s_logits2d: torch.Tensor,
    t_logits2d: torch.Tensor,
    s_rows: torch.Tensor,
    t_rows: torch.Tensor,
    s_ids: torch.Tensor,
    t_ids: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    zs = s_logits2d.index_select(0, s_rows).index_select(1, s_ids)
    zt = t_logits2d.index_select(0, t_rows).index_select(1, t_ids)
    zs, zt = zs.to(_compute_dtype(zs)) / tau, zt.to(_compute_dtype(zt)) / tau
    ls, lt = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    return (lt.exp() * (lt - ls)).sum()


def shared_vocab_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    vocab: tuple[torch.Tensor, torch.Tensor],
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean over matched positions of ``KL(p_T || p_S)`` restricted (and renormalised) to the
    shared tokens ``vocab = (teacher_ids, student_ids)`` from :func:`shared_vocab`; chunked and
    recomputed in backward (activation checkpointing), so memory is ``O(chunk · M)``."""
    if student_rows.numel() == 0:
        return student_logits.sum().float() * 0.0
    dev, tdev = student_logits.device, teacher_logits.device
    t_ids, s_ids = vocab[0].to(tdev), vocab[1].to(dev)
    s2 = student_logits.reshape(-1, student_logits.shape[-1])
    t2 = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    if int(s_ids.max()) >= s2.shape[-1] or int(t_ids.max()) >= t2.shape[-1]:
        raise ValueError("shared_vocab ids exceed the logits' vocabulary size")
    sr, tr = student_rows.to(dev), teacher_rows.to(tdev)
    ch = _chunk_for(int(s_ids.numel()), chunk_size)
    total = student_logits.new_zeros((), dtype=_compute_dtype(student_logits))
    for c in range(0, sr.numel(), ch):
        args = (s2, t2, sr[c : c + ch], tr[c : c + ch], s_ids, t_ids, float(temperature))
        if s2.requires_grad:
            part = checkpoint(_shared_kl_chunk, *args, use_reentrant=False)
        else:
            part = _shared_kl_chunk(*args)
        total = total + part.to(dev)
    return total / sr.numel()


# ----------------------------------------------------------------------------- the hook


def uld_kd(
    top_k: int = 128,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab: tuple[torch.Tensor, torch.Tensor] | None = None,
    exact_weight: float = 0.0,
) -> LogitKD:
    """A cross-tokenizer ``logit_kd`` hook: ULD at shared token boundaries (+ an exact term).

    ``distillation_loss(..., kd_weight=w, logit_kd=uld_kd(top_k=128))`` gives
    ``(1 - w)·CE + w·KD + mta_weight·L_MTA`` with
    ``KD = ULD_k + exact_weight · KL_shared``.

    Args:
        top_k: sorted probability ranks compared by ULD.
        temperature: softmax temperature (both sides, both terms).
        chunk_size: positions per chunk (default: a 64 MiB fp32 block per chunk).
        vocab: ``shared_vocab(teacher_tok, student_tok)``; needed when ``exact_weight > 0``.
        exact_weight: weight of the exact KL over tokens present in both vocabularies.

    The hook reads ``batch["alignment"]``'s ``teacher`` / ``student`` offsets and attention
    masks (an ``Alignment`` or the plain-dict form) and both models' ``logits``.
    """
    _check_knobs(top_k, temperature)
    if exact_weight < 0:
        raise ValueError(f"exact_weight must be >= 0, got {exact_weight}")
    if exact_weight > 0 and vocab is None:
        raise ValueError("exact_weight > 0 needs vocab=shared_vocab(teacher_tok, student_tok)")

    def kd(student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        s_logits = getattr(student_out, "logits", None)
        t_logits = getattr(teacher_out, "logits", None)
        if s_logits is None or t_logits is None:
            raise ValueError("uld_kd: both model outputs need logits")
        al = batch["alignment"]
        t, s = _side(al, "teacher"), _side(al, "student")
        t_rows, s_rows = boundary_pairs(
            t["offsets"], t["attention_mask"], s["offsets"], s["attention_mask"]
        )
        if t_logits.shape[:2] != t["attention_mask"].shape or (
            s_logits.shape[:2] != s["attention_mask"].shape
        ):
            raise ValueError(
                f"uld_kd: logits {tuple(t_logits.shape[:2])} / {tuple(s_logits.shape[:2])} do not "
                f"match the alignment's [B, T] {tuple(t['attention_mask'].shape)} / "
                f"{tuple(s['attention_mask'].shape)}"
            )
        loss = uld_distance(
            s_logits,
            t_logits,
            s_rows,
            t_rows,
            top_k=top_k,
            temperature=temperature,
            chunk_size=chunk_size,
        )
        if exact_weight > 0:
            assert vocab is not None
            loss = loss + exact_weight * shared_vocab_kl(
                s_logits,
                t_logits,
                s_rows,
                t_rows,
                vocab,
                temperature=temperature,
                chunk_size=chunk_size,
            )
        return loss

    return kd


# ----------------------------------------------------------------------------- one tokenizer


def same_vocab_kl(temperature: float = 1.0) -> LogitKD:
    """A ``logit_kd`` hook for teacher and student sharing one tokenizer (same ``T`` and vocab).

    Forward KL ``KL(p_T || p_S)`` at temperature ``τ`` (times ``τ²``), averaged over the
    student's non-pad tokens. Raises ValueError when the shapes differ (different tokenizers).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def kd(student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        s, t = student_out.logits, teacher_out.logits
        if s.shape != t.shape:
            raise ValueError(
                f"same_vocab_kl: student logits {tuple(s.shape)} and teacher logits "
                f"{tuple(t.shape)} differ; token-level logit KD needs a shared tokenizer"
            )
        mask = batch["attention_mask"].to(s.device).bool()
        ls = F.log_softmax(s[mask].float() / temperature, -1)
        lt = F.log_softmax(t[mask].float() / temperature, -1)
        return F.kl_div(ls, lt, log_target=True, reduction="batchmean") * temperature**2

    return kd
