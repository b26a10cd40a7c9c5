"""token_salience on every device of DEVICES vs the pure-PyTorch reference (docs/DESIGN.md
§2.1): correctness, opcheck, determinism, bad input (no gradient: the op is detached).

Inputs: ``op_registry.token_salience_sample_inputs`` (opcheck) and :func:`_mask` here, all
seeded by the ``rng`` fixture (fresh seed per run, printed; MTA_TEST_SEED replays). CUDA outputs
are NaN-poisoned: an element no kernel wrote shows up as NaN.
"""

from __future__ import annotations

import random

import pytest
import torch
from op_helpers import DEVICES, FLOATS, _finite, _random_mask, ops, tdev, value_checks_on
from op_registry import token_salience_sample_inputs

import mta_ext
from mta_ext import reference
from mta_ext.ops import token_salience

pytestmark = pytest.mark.usefixtures("poison_outputs")


def _mask(rng: random.Random, b: int, t: int, kind: str) -> torch.Tensor:
    """``[B, T]`` bool: "random" (right/left padding, empty, one token, holes: op_helpers), or
    "right" / "left" padding / "scattered" with example 0 full."""
    if kind == "random":
        return _random_mask(rng, b, t)
    m = torch.zeros(b, t, dtype=torch.bool)
    lengths = torch.randint(0, t + 1, (b,))
    lengths[0] = t  # one full example
    for i in range(b):
        n = int(lengths[i])
        if kind == "right":
            m[i, :n] = True
        elif kind == "left":
            m[i, t - n :] = True
        else:  # scattered
            m[i] = torch.rand(t) < 0.6
    return m


SHAPES = [  # (B, T, D)
    (1, 1, 4),
    (2, 2, 1),
    (3, 5, 3),
    (2, 63, 16),
    (2, 64, 64),
    (3, 65, 40),
    (2, 200, 257),
    (1, 300, 1024),
]
SHAPES_FP64 = [(1, 1, 4), (2, 2, 3), (3, 17, 1), (3, 17, 7), (2, 70, 576), (4, 130, 16)]
# (dtype, shape, mask kind, key_block, mask as int64): every dtype on random masks with the
# automatic path; float64 on every padding kind with the automatic and the streaming paths.
CASES = [(dtype, shape, "random", 0, False) for dtype in FLOATS for shape in SHAPES] + [
    (torch.float64, shape, kind, key_block, True)
    for shape in SHAPES_FP64
    for kind in ("right", "left", "scattered")
    for key_block in (0, 5, 64)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c).replace("torch.", ""))
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(rng, case, device):
    dtype, (b, t, d), kind, key_block, as_long = case
    h = (torch.randn(b, t, d, dtype=torch.float64) * 2 + 0.3).to(dtype)
    mask = _mask(rng, b, t, kind)
    m = mask.long() if as_long else mask
    out = token_salience(h.to(tdev(device)), m.to(tdev(device)), key_block=key_block)
    ref = reference.token_salience(h, m)
    assert out.shape == (b, t) and out.dtype == torch.float32
    _finite(out)
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype != torch.float64 else {"rtol": 1e-6, "atol": 1e-8}
    torch.testing.assert_close(out.cpu(), ref, **tol)
    # Bit-identical on a second run.
    again = token_salience(h.to(tdev(device)), m.to(tdev(device)), key_block=key_block)
    assert torch.equal(again, out)
    # Valid weights sum to 1 for examples with >= 2 valid tokens, pads and examples with < 2
    # valid tokens are exactly 0.
    out = out.cpu()
    n = mask.sum(1)
    sums = out.sum(1)
    assert torch.allclose(sums[n >= 2], torch.ones_like(sums[n >= 2]), atol=1e-5)
    assert (out[~mask] == 0).all()
    assert (out[n < 2] == 0).all()


@pytest.mark.parametrize("key_block", [0, 16])
@pytest.mark.parametrize("device", DEVICES)
def test_fp32_bool_mask(rng, key_block, device):
    h = torch.randn(3, 90, 33)
    m = _mask(rng, 3, 90, "right")
    out = token_salience(h.to(tdev(device)), m.to(tdev(device)), key_block=key_block)
    torch.testing.assert_close(out.cpu(), reference.token_salience(h, m), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-5), (torch.float16, 2e-5)])
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_accumulates_in_fp32(rng, dtype, tol, device):
    # Same (rounded) inputs: the only difference to the fp64 reference is fp32 accumulation.
    h = (torch.randn(2, 64, 48) * 3).to(dtype)
    m = _mask(rng, 2, 64, "left")
    out = token_salience(h.to(tdev(device)), m.to(tdev(device))).cpu()
    exp = reference.token_salience(h.double(), m)
    torch.testing.assert_close(out, exp, rtol=tol * 50, atol=tol)


def test_all_three_paths_agree(rng):
    # The CPU kernel's paths: n <= 2048: symmetric full S; 2048 < n <= 8192: row tiles over all
    # keys; key_block > 0: online-softmax streaming. Example 0 has 2100 valid tokens, 1: 1500.
    h = torch.randn(2, 2100, 16, dtype=torch.float64)
    m = torch.ones(2, 2100, dtype=torch.long)
    m[1, 1500:] = 0
    exp = reference.token_salience(h, m)
    for kb in (0, 700):
        torch.testing.assert_close(token_salience(h, m, key_block=kb), exp, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_large_logits(rng, device):
    # Strongly correlated tokens: logits far from 0, the online max must keep exp() finite.
    b, t, d = 2, 150, 512
    base = torch.randn(1, 1, d) * 5
    h = base + 0.05 * torch.randn(b, t, d)
    h[:, :, 3] += 50.0  # a massive activation
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 100:] = False
    out = ops.token_salience(h.to(tdev(device)), mask.to(tdev(device)), 0).cpu()
    _finite(out)
    torch.testing.assert_close(out, reference.token_salience(h, mask), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(out.sum(1), torch.ones(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_with_different_logit_scales(device):
    # Token 0 has a near-duplicate (token 5): its row's largest logit is ~sqrt(D) = 128, while
    # token 1's row stays near 0. Each query row needs its OWN running max: a max shared with
    # another row (e.g. a warp reduction over too many lanes on CUDA, where rows 0 and 1 share a
    # warp) shifts row 1 by ~128 and exp() underflows in fp32: its attention would vanish.
    g = torch.Generator().manual_seed(0)
    d = 16384
    h = torch.randn(1, 40, d, generator=g)
    h[0, 5] = h[0, 0] + 1e-3 * torch.randn(d, generator=g)
    mask = torch.ones(1, 40, dtype=torch.bool)
    out = ops.token_salience(h.to(tdev(device)), mask.to(tdev(device)), 0).cpu()
    _finite(out)
    torch.testing.assert_close(out, reference.token_salience(h, mask), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("device", DEVICES)
def test_two_tokens_width_one(dtype, device):
    # D = 1, std = 0: logits ~4e10. Both kernels must round the logit identically (no FMA
    # contraction in one of them), so the row maximum gives exp(0): [0.5, 0.5], not inf or 0.
    for pair in ((1.7, 2.3), (0.5, 3.0)):
        h = torch.tensor([[[pair[0]], [pair[1]]]]).to(dtype)
        out = ops.token_salience(
            h.to(tdev(device)), torch.ones(1, 2, dtype=torch.bool, device=tdev(device)), 0
        )
        assert out.cpu().tolist() == [[0.5, 0.5]], (dtype, pair, out)


@pytest.mark.parametrize("device", DEVICES)
def test_no_gradient_flows(device):
    h = torch.randn(2, 5, 4, requires_grad=True, device=tdev(device))
    out = token_salience(h, torch.ones(2, 5, dtype=torch.long, device=tdev(device)))
    assert not out.requires_grad


# ------------------------------------------------------------------ opcheck, determinism


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(rng, device):
    for dtype in (torch.float32, torch.float64):
        for s in token_salience_sample_inputs(device, dtype):
            torch.library.opcheck(ops.token_salience.default, s.args)


@pytest.mark.parametrize("device", DEVICES)
def test_bit_identical_repeats(rng, device):
    """The same bits on a repeat, and (CPU kernels) with 1 thread as with all of them."""
    h = torch.randn(3, 300, 40).to(tdev(device))
    m = _mask(rng, 3, 300, "scattered").to(tdev(device))
    a = token_salience(h, m)
    assert torch.equal(token_salience(h, m), a)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = token_salience(h, m)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(a, c)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    h = torch.randn(2, 5, 4, device=tdev(device))
    m = torch.ones(2, 5, dtype=torch.long, device=tdev(device))
    with value_checks_on(device):
        with pytest.raises(TypeError, match="hidden"):
            token_salience(h.long(), m)
        with pytest.raises(ValueError, match=r"hidden must have shape \[B, T, D\]"):
            token_salience(h[0], m)
        with pytest.raises(TypeError, match="attention_mask"):
            token_salience(h, m.float())
        with pytest.raises(ValueError, match="attention_mask must have shape"):
            token_salience(h, m[:, :4])
        with pytest.raises(ValueError, match="same device"):
            token_salience(h, m.to("meta"))
        with pytest.raises(ValueError, match="key_block"):
            token_salience(h, m, key_block=-1)
        # the kernel's own checks (bypassing the Python wrapper)
        with pytest.raises(ValueError, match="attention_mask"):
            ops.token_salience(h, m[:, :4])


def test_public_name():
    assert mta_ext.token_salience is token_salience
