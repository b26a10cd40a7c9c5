"""``mta-ext demo --kd uld``: CE + ULD + MTA for one step on the tiny real-tokenizer models."""

from __future__ import annotations

import json
import math

import pytest
from _integ_models import TEXTS, require, require_mta_api, tiny_pair


def test_demo_kd_uld(tmp_path, capsys):
    require_mta_api()
    require("spacy", "matplotlib", "tqdm")
    from mta_ext.cli import main

    t_dir, s_dir = tiny_pair()
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS * 2))
    out = tmp_path / "out"
    argv = ["demo", "--teacher", str(t_dir), "--student", str(s_dir), "--data", str(data)]
    argv += ["--steps", "1", "--batch-size", "2", "--max-length", "24", "--eval-size", "2"]
    assert main([*argv, "--out", str(out), "--kd", "uld", "--kd-weight", "0.3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (step,) = metrics["history"]["ce+mta"]
    for k in ("ce", "kd", "mta", "loss"):
        assert math.isfinite(step[k]), k
    assert 0 < step["kd"] <= 2
    assert math.isclose(
        step["loss"], 0.7 * step["ce"] + 0.3 * step["kd"] + step["mta"], rel_tol=1e-5
    )
    # A usage error like any other: argparse's exit status 2, the flag named.
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(out), "--kd", "uld", "--kd-weight", "2"])
    assert exc.value.code == 2
    assert "--kd-weight: must be in [0, 1]" in capsys.readouterr().err
