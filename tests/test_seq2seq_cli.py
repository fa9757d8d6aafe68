"""The translation config from the command line: fit (loss falls), test metrics, predict from a file and
from stdin with only the checkpoint, and clear errors for bad input and a mismatched tokenizer."""
from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from vitkit.cli import main
from vitkit.data.text import TextTokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/seq2seq/numbers_tiny.yaml")
TINY = ["--model.init_args.model_kwargs", '{"dim": 32, "enc_depth": 1, "dec_depth": 1, "num_heads": 2, "dropout": 0.0}',
        "--model.init_args.max_new_tokens", "12", "--trainer.enable_progress_bar", "false"]


def run(sub: str, tmp: Path, data_root: Path, *extra: str) -> None:
    main([sub, "--config", CONFIG, "--trainer.default_root_dir", str(tmp / "runs"),
          "--data.init_args.root", str(data_root),
          "--data.init_args.num_train", "600", "--data.init_args.batch_size", "32", *TINY, *extra])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("text")
    run("fit", tmp, tmp / "numbers", "--trainer.max_steps", "60", "--trainer.val_check_interval", "60",
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "5", "--model.init_args.lr", "3e-3",
        "--model.init_args.warmup_steps", "10", "--test_after_fit", "false")
    return tmp / "runs" / "numbers_tiny" / "version_0"


def test_fit_loss_falls_and_the_tokenizer_is_saved_with_the_run(fitted):
    with open(fitted / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3
    assert any(r.get("val/exact_match") for r in rows) and any(r.get("val/bleu") for r in rows)
    tok = TextTokenizer.from_file(fitted / "tokenizer.json")
    ckpt = torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert TextTokenizer.from_state(ckpt["tokenizer"]).fingerprint == tok.fingerprint
    assert ckpt["hyper_parameters"]["vocab_size"] == 512 and ckpt["hyper_parameters"]["max_len"] == 48  # linked


def test_test_subcommand_logs_exact_match_and_bleu(fitted, tmp_path):
    run("test", tmp_path, fitted.parents[2] / "numbers", "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt"),
        "--trainer.limit_test_batches", "2")
    out = tmp_path / "runs" / "numbers_tiny" / "version_0"
    with open(out / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert 0.0 <= float(row["test/exact_match"]) <= 1.0 and 0.0 <= float(row["test/bleu"]) <= 100.0
    with open(out / "test_outputs.tsv") as f:
        outputs = list(csv.DictReader(f, delimiter="\t"))
    assert len(outputs) == 64 and set(outputs[0]) == {"source", "reference", "output", "exact"}
    exact = sum(int(o["exact"]) for o in outputs) / len(outputs)
    assert exact == pytest.approx(float(row["test/exact_match"]))


def test_predict_from_a_file_needs_only_the_checkpoint(fitted, tmp_path):
    lines = ["twenty-one", "", "1999-03-04", "four hundred and five thousand"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"1 empty line\(s\) \(line 2\) get empty outputs"):
        run("predict", tmp_path, tmp_path / "no_data_here", "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt"),
            "--data.init_args.predict_file", str(tmp_path / "in.txt"))
    assert not (tmp_path / "no_data_here").exists(), "predict did not need (or generate) the training data"
    out = tmp_path / "runs" / "numbers_tiny" / "version_0"
    outputs = (out / "predictions.txt").read_text().split("\n")[:-1]
    assert len(outputs) == 4 and outputs[1] == ""
    rows = [json.loads(r) for r in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and [r["source"] for r in rows] == lines


def test_predict_reads_stdin_and_writes_stdout(fitted, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("twenty-one\n1999-03-04\n"))
    run("predict", tmp_path, tmp_path / "none", "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt"),
        "--data.init_args.predict_file", "-", "--model.init_args.predict_output", "-")
    saved = (tmp_path / "runs" / "numbers_tiny" / "version_0" / "predictions.txt").read_text()
    assert saved.count("\n") == 2 and saved in capsys.readouterr().out


def test_a_tokenizer_that_does_not_match_the_checkpoint_is_a_clear_error(fitted, tmp_path, capsys):
    other = TextTokenizer.train(["something else entirely"] * 20, vocab_size=300).save(tmp_path / "other.json")
    (tmp_path / "in.txt").write_text("twenty-one\n")
    with pytest.raises(SystemExit) as exit_info:
        run("predict", tmp_path, tmp_path / "none", "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt"),
            "--data.init_args.predict_file", str(tmp_path / "in.txt"), "--data.init_args.tokenizer", str(other))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "other.json" in err and "does not match the checkpoint's tokenizer" in err and "Traceback" not in err


def test_a_bad_tsv_row_stops_fit_naming_the_line(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("one\t1\ntwo\t2\nthree\t3\textra\n")
    with pytest.raises(SystemExit) as exit_info:
        run("fit", tmp_path, tmp_path / "none", "--data.init_args.train_file", str(tmp_path / "train.tsv"),
            "--trainer.max_steps", "1")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train.tsv, line 3: found 3 tab-separated fields; expected 2" in err and "Traceback" not in err


def test_an_over_long_line_stops_fit_unless_truncation_is_asked_for(tmp_path, capsys):
    long_source = " ".join(["one"] * 60)
    (tmp_path / "train.tsv").write_text("".join(f"{w}\t{i}\n" for i, w in enumerate(["one", "two", long_source] * 8)))
    args = ["--data.init_args.train_file", str(tmp_path / "train.tsv"), "--data.init_args.max_len", "16",
            "--data.init_args.val_fraction", "0.2", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
            "--test_after_fit", "false"]
    with pytest.raises(SystemExit):
        run("fit", tmp_path, tmp_path / "none", *args)
    assert "the source has" in capsys.readouterr().err
    with pytest.warns(UserWarning, match=r"truncated \d+ over-long line"):
        run("fit", tmp_path, tmp_path / "none", *args, "--data.init_args.long_lines", "truncate")


def test_a_checkpoint_alone_translates_from_python(fitted, caplog):
    from vitkit.tasks import Seq2Seq

    task = Seq2Seq.load_from_checkpoint(fitted / "checkpoints" / "last.ckpt", map_location="cpu")
    outputs = task.translate(["twenty-one", "1999-03-04"])
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    assert task.tokenizer.fingerprint == TextTokenizer.from_file(fitted / "tokenizer.json").fingerprint
    # as in `predict`: an empty input gives an empty output in its place; an over-long one is cut with a warning
    assert task.translate(["", "twenty-one"]) == ["", *task.translate(["twenty-one"])]
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        long = task.translate(["one " * 500])
    assert len(long) == 1 and "1 of 1 inputs longer than max_len" in caplog.text


def test_summarisation_on_jsonl_files_reports_rouge_l(tmp_path):
    rows = [{"article": f"the {w} cat sat on the {w} mat all day", "summary": f"{w} cat"} for w in
            ("red", "blue", "green", "black", "white", "grey", "brown", "pink")]
    for name, part in (("train", rows[:6]), ("val", rows[6:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    run("fit", tmp_path, tmp_path / "none", "--data.init_args.train_file", str(tmp_path / "train.jsonl"),
        "--data.init_args.val_file", str(tmp_path / "val.jsonl"), "--data.init_args.source_field", "article",
        "--data.init_args.target_field", "summary", "--data.init_args.vocab_size", "300", "--model.init_args.rouge",
        "true", "--model.init_args.monitor_metric", "rougeL", "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "2", "--test_after_fit", "true")
    with open(tmp_path / "runs" / "numbers_tiny" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    test_rouge = [float(r["test/rougeL"]) for r in rows if r.get("test/rougeL")]
    assert any(r.get("val/rougeL") for r in rows) and len(test_rouge) == 1 and 0.0 <= test_rouge[0] <= 1.0
