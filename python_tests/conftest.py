"""Fixtures of the mta_ext test-suite (fixtures only: shared helpers live in op_helpers.py)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
import torch
from op_helpers import SIMT, simt_seed
from tiny_fixtures import tiny_gpt2, tiny_llama

from mta_ext import _simt


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


@pytest.fixture
def rng() -> random.Random:
    """The one seeding scheme of the op tests: fresh random inputs on every run (the kernels must
    compute the same function on any valid input). Seeds Python's ``random`` and torch's global
    RNG (the builders of op_helpers / op_registry draw from them); the seed is printed, replay it
    with MTA_TEST_SEED."""
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
    pytest.importorskip("transformers")
    teacher = tiny_llama(
        97,
        layers=3,
        width=48,
        heads=4,
        kv_heads=2,
        intermediate=64,
        seed=0,
        max_position_embeddings=64,
    ).eval()
    return teacher, tiny_gpt2(131)


@pytest.fixture(scope="module")
def shared_student():
    """A student with the ``models`` teacher's vocabulary (one tokenizer, as in the paper):
    a 2-layer Llama, vocab 97, seeded; shared by test_structural_loss and test_paper."""
    pytest.importorskip("transformers")
    return tiny_llama(
        97, layers=2, width=32, intermediate=48, seed=1, max_position_embeddings=64
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
