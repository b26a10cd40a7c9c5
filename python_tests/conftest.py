"""Shared fixtures and helpers for the mta_ext test-suite."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import pytest
import torch

from mta_ext import _simt

# The ONE tolerance table of the op tests, per kind of comparison and dtype:
# * "vs_fp64": an op's output for low-precision inputs vs the float64 reference on the same
#   (rounded) inputs, fixed seeds. Outputs of bf16 have 8 mantissa bits (rel. step 2**-8 ~
#   3.9e-3); accumulation is fp32, so the error is dominated by the input/output rounding.
# * "kernel": a kernel (any device) vs the float64 reference on fresh random inputs (ragged,
#   empty, overlapping, misaligned), forward and backward; summation orders differ per device.
TOLERANCES = {
    "vs_fp64": {
        torch.float16: dict(atol=2e-3, rtol=2e-3),
        torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.float64: dict(atol=1e-12, rtol=1e-12),
    },
    "kernel": {
        torch.float64: dict(rtol=1e-10, atol=1e-12),
        torch.float32: dict(rtol=2e-5, atol=2e-6),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
        torch.float16: dict(rtol=2e-3, atol=1e-3),
    },
}
LOW_PRECISION_TOL = TOLERANCES["vs_fp64"]

CUDA = torch.cuda.is_available()
# The SIMT backend (a test build's CUDA kernels executed on the CPU): the device "simt", whose
# tensors live on the CPU while the test runs inside mta_ext._simt.enabled() (see _simt_device).
SIMT = _simt.available()
# Every op test runs on each available device: CPU always, the CUDA kernels on the SIMT backend
# when built, CUDA when present. GPU_DEVICES: where the CUDA kernels run.
DEVICES = ["cpu"] + (["simt"] if SIMT else []) + (["cuda"] if CUDA else [])
GPU_DEVICES = [d for d in DEVICES if d != "cpu"]


def tdev(device: str) -> str:
    """The torch device of a test device: "simt" tensors are CPU tensors."""
    return "cpu" if device == "simt" else device


def simt_seed(nodeid: str) -> int:
    """The SIMT device's shuffle seed for a test: fixed per test id (MTA_SIMT_SEED overrides)."""
    env = os.environ.get("MTA_SIMT_SEED")
    if env is not None:
        return int(env)
    h = 0
    for ch in nodeid.encode():
        h = (h * 131 + ch) % (2**31 - 1)
    return h


@pytest.fixture(autouse=True)
def _simt_device(request) -> Iterator[None]:
    """A test parametrized with device="simt" runs inside mta_ext._simt.enabled(), in the
    shuffled mode (threads of a block run in a seeded random order between barriers): every
    kernel test is also a race test. The seed is printed; MTA_SIMT_SEED replays it."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("device") != "simt":
        yield
        return
    seed = simt_seed(request.node.nodeid)
    print(f"simt shuffle seed={seed}")
    with _simt.enabled(shuffle_seed=seed):
        yield


@contextlib.contextmanager
def cpu_kernels() -> Iterator[None]:
    """Inside a "simt" test: run the ops' CPU kernels in the block (a CPU-kernel baseline to
    compare the CUDA kernels with). Elsewhere: nothing changes."""
    with _simt.suspended():
        yield


def random_ranges(
    num_rows: int,
    num_units: int,
    *,
    generator: torch.Generator,
    max_len: int = 6,
    allow_empty: bool = True,
) -> torch.Tensor:
    """``[num_units, 2]`` int64 ranges inside ``[0, num_rows]``: overlapping, some empty."""
    if num_units == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    starts = torch.randint(0, num_rows + 1, (num_units,), generator=generator)
    lens = torch.randint(0 if allow_empty else 1, max_len + 1, (num_units,), generator=generator)
    ends = torch.minimum(starts + lens, torch.tensor(num_rows))
    if not allow_empty:
        starts = torch.minimum(starts, ends - 1).clamp_min(0)
    return torch.stack([starts, ends], 1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def rng() -> random.Random:
    """Fresh random inputs on every run (the kernels must compute the same function on any valid
    input); the seed is printed, replay it with MTA_TEST_SEED."""
    s = int(os.environ.get("MTA_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={s}")
    random.seed(s)
    torch.manual_seed(s)
    return random.Random(s)


@pytest.fixture
def poison_outputs(monkeypatch):
    """CUDA ops allocate their outputs NaN-filled (MTA_CUDA_POISON=1), so an element no kernel
    wrote shows up as NaN (no effect on the CPU kernels)."""
    monkeypatch.setenv("MTA_CUDA_POISON", "1")


@pytest.fixture(scope="module")
def models():
    """Tiny random teacher (3-layer Llama, vocab 97) and a cross-tokenizer student (2-layer
    GPT-2, vocab 131), seeded: shared by test_structural_loss and test_paper."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=97,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ).eval()
    student = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=131, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    )
    return teacher, student


@pytest.fixture(scope="module")
def shared_student():
    """A student with the ``models`` teacher's vocabulary (one tokenizer, as in the paper):
    a 2-layer Llama, vocab 97, seeded; shared by test_structural_loss and test_paper."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ).eval()


def pytest_terminal_summary(terminalreporter) -> None:
    """One line that says how many tests ran the CUDA kernels on the SIMT backend (CI's log shows
    them executing, not skipped)."""
    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        reports = terminalreporter.stats.get(outcome, [])
        counts[outcome] = sum(
            1
            for r in reports
            if getattr(r, "when", "call") in ("call", "setup")
            and ("[simt" in r.nodeid or "-simt" in r.nodeid or "test_simt_" in r.nodeid)
            and (outcome != "passed" or r.when == "call")
        )
    if SIMT or any(counts.values()):
        terminalreporter.write_line(
            "simt device (CUDA kernels on the CPU): {passed} tests passed, {failed} failed, "
            "{skipped} skipped, {error} errors".format(**counts)
        )
    else:
        terminalreporter.write_line("simt device: not built (MTA_WITH_SIMT=OFF)")
