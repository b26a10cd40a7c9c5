"""MTA inside TRL's GKDTrainer (one tokenizer) and GOLDTrainer (different tokenizers, ULD):
3 off-policy steps each on tiny real-tokenizer models with the real ``trl`` package (on-policy:
test_trl_onpolicy.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _integ_models import require, tiny_models
from trl_helpers import (
    chat_dataset,
    completion_dataset,
    require_trl,
    shared_tokenizer_pair,
    trainer_args,
)

import mta_ext


@pytest.fixture(scope="module")
def parts():
    require_trl()
    return tiny_models()


def _args_kwargs(tmp_path):
    return trainer_args(tmp_path, 3, lmbda=0.0, max_length=64)


def _snapshot(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _check_run(trainer, student, mta_loss, s_before, p_before, trl_keys):
    logs = [h for h in trainer.state.log_history if "mta" in h]
    assert len(logs) == 3, trainer.state.log_history
    for h in logs:
        for k in ("loss", "trl_loss", "mta", "dsa", "hid", "mta_matched", *trl_keys):
            assert k in h and math.isfinite(h[k]), (k, h)
        assert h["mta"] > 0 and h["mta_matched"] > 0.9
    changed = [
        k
        for k, v in student.state_dict().items()
        if not k.startswith("mta_loss.") and not torch.equal(v, s_before[k])
    ]
    assert len(changed) > 0.5 * len(s_before)
    for k, v in mta_loss.state_dict().items():
        assert not torch.equal(v, p_before[k]), k


def _check_saved(trainer, mta_loss, out):
    from safetensors.torch import load_file

    from mta_ext.integrations import load_mta_loss

    trainer.save_model(str(out))
    weights = load_file(str(out / "model.safetensors"))
    assert weights and not any(k.startswith("mta_loss.") for k in weights)
    loaded = load_mta_loss(out)
    for k, v in mta_loss.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_gkd_trainer_with_mta(parts, tmp_path):
    from trl.experimental.gkd import GKDConfig

    from mta_ext.integrations.trl import MTAGKDTrainer

    # one small byte-level BPE (trained in < 1 s) for both: the 151k-vocab JSD would dominate
    tok, teacher, student = shared_tokenizer_pair()
    ds = chat_dataset()
    torch.manual_seed(0)
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    s_before, p_before = _snapshot(student), _snapshot(mta_loss)
    t_before = _snapshot(teacher)
    trainer = MTAGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=GKDConfig(**_args_kwargs(tmp_path)),
        processing_class=tok,
        train_dataset=ds,
        mta_loss=mta_loss,
        mta_weight=1.0,
    )
    trainer.train()
    _check_run(trainer, student, mta_loss, s_before, p_before, ())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    _check_saved(trainer, mta_loss, tmp_path / "saved")
    _check_accumulation_scaling(trainer)


def _check_accumulation_scaling(trainer):
    """GKD's JSD is normalised by ``num_items_in_batch`` (then the Trainer does not divide the
    loss by the accumulation steps): L_MTA, a per-micro-batch mean, must then be divided by
    them; without ``num_items_in_batch`` the Trainer divides everything and MTA is left alone."""
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 4
    m = trainer._metrics["train"]
    n_items = torch.tensor(int((inputs["labels"] != -100).sum()))
    with torch.no_grad():
        for num_items, div in ((n_items, 4.0), (None, 1.0)):
            total = trainer.compute_loss(trainer.model, inputs, num_items_in_batch=num_items)
            assert math.isclose(
                float(total), m["trl_loss"][-1] + m["mta"][-1] / div, rel_tol=1e-5
            ), (num_items, float(total), m["trl_loss"][-1], m["mta"][-1])


def test_gold_trainer_with_mta(parts, tmp_path):
    from trl.experimental.gold import GOLDConfig

    from mta_ext.integrations.trl import MTAGOLDTrainer

    teacher, t_tok, student0, s_tok = parts
    student = copy.deepcopy(student0)
    ds = completion_dataset()
    torch.manual_seed(0)
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    s_before, p_before = _snapshot(student), _snapshot(mta_loss)
    args = GOLDConfig(
        **_args_kwargs(tmp_path),
        max_completion_length=32,
        use_uld_loss=True,
        # the teacher's tokenizer is SentencePiece: GOLD's extended (byte-offset) ULD needs
        # byte-level BPE on both sides; MTA's char-offset alignment has no such restriction
        use_extended_uld=False,
        teacher_tokenizer_name_or_path=str(teacher.config._name_or_path),
    )
    trainer = MTAGOLDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        processing_class=s_tok,
        train_dataset=ds,
        mta_loss=mta_loss,
    )
    assert len(trainer.teacher_tokenizer) == len(t_tok) != len(s_tok)  # really cross-tokenizer
    trainer.train()
    _check_run(trainer, student, mta_loss, s_before, p_before, ("off_policy_loss",))
    _check_saved(trainer, mta_loss, tmp_path / "saved")


def test_version_gate(monkeypatch):
    require("trl")
    from mta_ext.integrations import trl as mta_trl

    with pytest.raises(ImportError, match=r"tested with trl>=1\.16\.0,<1\.17, found trl 9\.0"):
        mta_trl.check_trl_version("9.0")
    monkeypatch.setenv("MTA_EXT_ALLOW_UNTESTED_TRL", "1")
    with pytest.warns(UserWarning, match="found trl 9.0"):
        assert mta_trl.check_trl_version("9.0") == "9.0"
    monkeypatch.delenv("MTA_EXT_ALLOW_UNTESTED_TRL")
    monkeypatch.setattr(mta_trl, "TESTED_TRL", ("0.1", "0.2"))  # the installed trl is outside
    monkeypatch.setattr(mta_trl, "_CLASSES", {})  # not built yet in this process
    with pytest.raises(ImportError, match=r"tested with trl>=0\.1,<0\.2"):
        mta_trl.MTAGKDTrainer  # noqa: B018  (the classes are built behind the gate)


def test_locate():
    import numpy as np

    from mta_ext.integrations.trl import _locate

    row = np.array([-1, -1, 5, 7, 8, 9, 2, 7, 8, 3, 4])
    assert _locate(row, [7, 8, 3, 4], None) == (7, 4)  # the longest match wins
    assert _locate(row, [7, 8, 9], 3) == (3, 3)
    assert _locate(row, [7, 8, 0], 3) == (3, 2)  # a mismatch: the prefix only
    assert _locate(row, [], None) == (0, 0)
