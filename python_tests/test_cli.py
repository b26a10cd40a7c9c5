"""``mta-ext demo`` end to end with --steps 1 on tiny models the test builds (no big packages)."""

from __future__ import annotations

import json
import math

import pytest
from _integ_models import TEXTS, require, require_mta_api, tiny_pair


def test_demo_end_to_end(tmp_path, capsys):
    require_mta_api()
    require("spacy", "matplotlib", "tqdm")
    from mta_ext.cli import main
    from mta_ext.integrations import load_mta_loss

    t_dir, s_dir = tiny_pair()
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": "p", "response": t} for t in TEXTS] + [{"text": t} for t in TEXTS]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    rc = main(
        [
            "demo",
            "--teacher",
            str(t_dir),
            "--student",
            str(s_dir),
            "--data",
            str(data),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--max-length",
            "24",
            "--eval-size",
            "2",
            "--out",
            str(out),
            "--compare",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tokens covered by shared units" in printed and "held-out" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["heldout"]) == {"before", "after_ce+mta", "after_ce_only"}
    for r in metrics["heldout"].values():
        assert math.isfinite(r["ce"]) and r["tokens"] > 0
    (step,) = metrics["history"]["ce+mta"]
    assert all(math.isfinite(step[k]) for k in ("ce", "dsa", "hid", "mta"))
    assert 0 < metrics["coverage"]["student"] <= 1 and 0 < metrics["coverage"]["teacher"] <= 1
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "student" / "config.json").is_file()
    assert len(load_mta_loss(out / "student").projectors) == len(metrics["schedule"])


def test_demo_errors_are_clear(tmp_path, capsys):
    from mta_ext.cli import main

    rc = main(["demo", "--student", str(tmp_path / "nope"), "--data", str(tmp_path / "x.txt")])
    assert rc == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
