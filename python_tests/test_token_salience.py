"""token_salience op vs the pure-PyTorch reference (docs/DESIGN.md §2.1)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, tdev
from op_helpers import FLOATS, _finite, _random_mask, ops

import mta_ext
from mta_ext import reference
from mta_ext import reference as ref
from mta_ext.ops import token_salience

# CUDA outputs NaN-poisoned: an element no kernel wrote shows up as NaN.
pytestmark = pytest.mark.usefixtures("poison_outputs")


def _mask(B: int, T: int, g: torch.Generator, kind: str) -> torch.Tensor:
    m = torch.zeros(B, T, dtype=torch.long)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T  # one full example
    for b in range(B):
        n = int(lengths[b])
        if kind == "right":
            m[b, :n] = 1
        elif kind == "left":
            m[b, T - n :] = 1
        else:  # scattered
            m[b] = (torch.rand(T, generator=g) < 0.6).long()
    return m


@pytest.mark.parametrize(
    "B,T,D", [(1, 1, 4), (2, 2, 3), (3, 17, 1), (3, 17, 7), (2, 70, 576), (4, 130, 16)]
)
@pytest.mark.parametrize("kind", ["right", "left", "scattered"])
@pytest.mark.parametrize("key_block", [0, 5, 64])
def test_matches_reference_fp64(B, T, D, kind, key_block):
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + D)
    h = torch.randn(B, T, D, generator=g, dtype=torch.float64) * 2.0
    m = _mask(B, T, g, kind)
    out = token_salience(h, m, key_block=key_block)
    exp = ref.token_salience(h, m)
    assert out.dtype == torch.float32 and out.shape == (B, T)
    torch.testing.assert_close(out, exp, rtol=1e-6, atol=1e-7)
    # valid weights sum to 1 for examples with >= 2 valid tokens, pads are exactly 0
    n = m.sum(1)
    sums = out.sum(1)
    assert torch.allclose(sums[n >= 2], torch.ones_like(sums[n >= 2]), atol=1e-5)
    assert (out[m == 0] == 0).all()
    assert (out[n < 2] == 0).all()


@pytest.mark.parametrize("key_block", [0, 16])
def test_fp32_bool_mask(key_block):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 90, 33, generator=g)
    m = _mask(3, 90, g, "right").bool()
    torch.testing.assert_close(
        token_salience(h, m, key_block=key_block), ref.token_salience(h, m), rtol=2e-5, atol=2e-6
    )


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-5), (torch.float16, 2e-5)])
def test_low_precision_accumulates_in_fp32(dtype, tol):
    # Same (rounded) inputs: the only difference to the fp64 reference is fp32 accumulation.
    g = torch.Generator().manual_seed(2)
    h = (torch.randn(2, 64, 48, generator=g) * 3).to(dtype)
    m = _mask(2, 64, g, "left")
    out = token_salience(h, m)
    exp = ref.token_salience(h.double(), m)
    torch.testing.assert_close(out, exp, rtol=tol * 50, atol=tol)


def test_no_gradient_flows():
    h = torch.randn(2, 5, 4, requires_grad=True)
    out = token_salience(h, torch.ones(2, 5, dtype=torch.long))
    assert not out.requires_grad


def test_deterministic_and_thread_independent():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 300, 40, generator=g)
    m = _mask(3, 300, g, "scattered")
    a = token_salience(h, m)
    b = token_salience(h, m)
    assert torch.equal(a, b)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = token_salience(h, m)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(a, c)


def test_opcheck():
    g = torch.Generator().manual_seed(4)
    for args in [
        (torch.randn(2, 9, 5, generator=g), _mask(2, 9, g, "right"), 0),
        (torch.randn(2, 9, 5, generator=g, dtype=torch.float64), _mask(2, 9, g, "left").bool(), 3),
        (torch.randn(0, 4, 5), torch.ones(0, 4, dtype=torch.long), 0),
    ]:
        torch.library.opcheck(torch.ops.mta_ext.token_salience.default, args)


def test_bad_inputs():
    h = torch.randn(2, 5, 4)
    m = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(TypeError, match="hidden"):
        token_salience(h.long(), m)
    with pytest.raises(ValueError, match=r"hidden must be \[B, T, D\]"):
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
        torch.ops.mta_ext.token_salience(h, m[:, :4])


def test_public_name():
    assert mta_ext.token_salience is token_salience


def test_all_three_paths_agree():
    # n <= 2048: symmetric full S; 2048 < n <= 8192: row tiles over all keys; key_block > 0:
    # online-softmax streaming. Example 0 has 2100 valid tokens, example 1 has 1500.
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 2100, 16, generator=g, dtype=torch.float64)
    m = torch.ones(2, 2100, dtype=torch.long)
    m[1, 1500:] = 0
    exp = ref.token_salience(h, m)
    for kb in (0, 700):
        torch.testing.assert_close(token_salience(h, m, key_block=kb), exp, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------ every device
# Fresh random inputs each run (seed printed; MTA_TEST_SEED replays), outputs NaN-poisoned on
# CUDA, on each device of DEVICES (CPU always, CUDA when present): reference comparison on
# ragged / empty / overlapping / unaligned inputs, gradcheck, bit-identical backward, opcheck,
# bad input.


TS_SHAPES = [
    (1, 1, 4),
    (2, 2, 1),
    (3, 5, 3),
    (2, 63, 16),
    (2, 64, 64),
    (3, 65, 40),
    (2, 200, 257),
    (1, 300, 1024),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", TS_SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_token_salience_matches_reference(rng, dtype, shape, device):
    b, t, d = shape
    h = (torch.randn(b, t, d, dtype=torch.float64) * 2 + 0.3).to(dtype)
    mask = _random_mask(rng, b, t)
    out = ops.token_salience(h.to(tdev(device)), mask.to(tdev(device)), 0)
    ref = reference.token_salience(h, mask)
    assert out.shape == (b, t) and out.dtype == torch.float32
    _finite(out)
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype != torch.float64 else {"rtol": 1e-6, "atol": 1e-8}
    torch.testing.assert_close(out.cpu(), ref, **tol)
    assert (out.cpu()[~mask] == 0).all()
    # Bit-identical on a second run.
    assert torch.equal(ops.token_salience(h.to(tdev(device)), mask.to(tdev(device)), 0), out)


@pytest.mark.parametrize("device", DEVICES)
def test_token_salience_large_logits(rng, device):
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
def test_token_salience_rows_with_different_logit_scales(device):
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


@pytest.mark.parametrize("device", DEVICES)
def test_token_salience_opcheck_on_device(rng, device):
    h = torch.randn(2, 17, 8, device=tdev(device))
    mask = _random_mask(rng, 2, 17).to(tdev(device))
    torch.library.opcheck(ops.token_salience.default, (h, mask, 0))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("device", DEVICES)
def test_token_salience_two_tokens_width_one(dtype, device):
    # D = 1, std = 0: logits ~4e10. Both kernels must round the logit identically (no FMA
    # contraction in one of them), so the row maximum gives exp(0): [0.5, 0.5], not inf or 0.
    for pair in ((1.7, 2.3), (0.5, 3.0)):
        h = torch.tensor([[[pair[0]], [pair[1]]]]).to(dtype)
        out = ops.token_salience(
            h.to(tdev(device)), torch.ones(1, 2, dtype=torch.bool, device=tdev(device)), 0
        )
        assert out.cpu().tolist() == [[0.5, 0.5]], (dtype, pair, out)
