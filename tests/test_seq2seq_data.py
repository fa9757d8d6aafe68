"""Text data: the BPE tokenizer (exact round trip, files, checkpoint state), parallel-file readers and their
errors, the long-line policy, and the embedded numbers/dates translation task."""
from __future__ import annotations

import datetime
import json
import re

import numpy as np
import pytest

from vitkit.data.numbers import (
    KINDS,
    MONTHS,
    NumbersConfig,
    Style,
    date_words,
    generate_numbers,
    make_pair,
    number_to_words,
    ordinal_words,
    year_to_words,
)
from vitkit.data.text import (
    LengthGuard,
    Seq2SeqDataModule,
    TextTokenizer,
    adopt_tokenizer,
    linked_special_id,
    linked_vocab_size,
    read_pairs,
)
from vitkit.errors import CheckpointError, DataError, DatasetNotFoundError

CORPUS = ["twenty-one thousand, four hundred", "21,400", "the 4th of March, 1999", "1999-03-04",
          "march fourth, nineteen ninety-nine"] * 20


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, vocab_size=300)


# --------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("text", ["21,400", "the 4th of March, 1999", "  two  spaces ", "ünïcode — never seen €5"])
def test_decode_gives_back_exactly_the_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_ids_digits_and_decoding_rules(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.tok.encode("1999", add_special_tokens=False).tokens == ["1", "9", "9", "9"]  # digit by digit
    ids = tok.encode("21,400")
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, *tok.encode("junk"), tok.pad_id]) == "21,400"


def test_tokenizer_survives_file_and_checkpoint_round_trips(tok, tmp_path):
    loaded = TextTokenizer.from_file(tok.save(tmp_path / "tokenizer.json"))
    restored = TextTokenizer.from_state(json.loads(json.dumps(tok.state())))
    assert loaded.fingerprint == restored.fingerprint == tok.fingerprint
    assert loaded.encode("the 4th of March") == tok.encode("the 4th of March")
    other = TextTokenizer.train(["completely different words"] * 10, vocab_size=300)
    assert other.fingerprint != tok.fingerprint


def test_checkpoint_tokenizer_that_differs_from_the_configured_file_is_an_error(tok):
    other = TextTokenizer.train(["completely different words"] * 10, vocab_size=300)
    assert adopt_tokenizer(tok.state(), tok, "same.json").fingerprint == tok.fingerprint
    assert adopt_tokenizer(tok.state(), None, None).fingerprint == tok.fingerprint
    with pytest.raises(CheckpointError,
                       match=r"data.tokenizer other.json .* does not match the checkpoint's tokenizer"):
        adopt_tokenizer(tok.state(), other, "other.json")


def test_tokenizer_file_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="missing.json not found"):
        TextTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: cannot be read"):
        TextTokenizer.from_file(tmp_path / "bad.json")
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(tmp_path / "nospecial.json"))
    with pytest.raises(DataError, match=r"nospecial.json: no pad/bos/eos token found \(looked for pad: <pad>, \[PAD\]"):
        TextTokenizer.from_file(tmp_path / "nospecial.json")


def test_a_foreign_tokenizer_file_is_used_with_its_own_special_ids(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "world": 5}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(tmp_path / "bert_like.json"))
    loaded = TextTokenizer.from_file(tmp_path / "bert_like.json")
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (0, 2, 3)
    assert loaded.encode("hello world") == [4, 5]
    path = str(tmp_path / "bert_like.json")  # what the CLI links to the model:
    assert (linked_vocab_size(path, 1000), *(linked_special_id(w, path) for w in ("pad", "bos", "eos"))) == (6, 0, 2, 3)
    assert (linked_vocab_size(None, 1000),
            *(linked_special_id(w, None) for w in ("pad", "bos", "eos"))) == (1000, 0, 1, 2)


# --------------------------------------------------------------------------- parallel files
def test_tsv_and_jsonl_readers(tmp_path):
    (tmp_path / "a.tsv").write_text("one\t1\ntwo hundred\t200\n")
    (tmp_path / "a.jsonl").write_text('{"en": "one", "de": "eins"}\n{"en": "two", "de": "zwei"}\n')
    assert [(p.source, p.target) for p in read_pairs(tmp_path / "a.tsv")] == [("one", "1"), ("two hundred", "200")]
    pairs = read_pairs(tmp_path / "a.jsonl", source_field="en", target_field="de")
    assert [(p.source, p.target) for p in pairs] == [("one", "eins"), ("two", "zwei")]
    assert pairs[1].where.endswith("a.jsonl, line 2")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.tsv", "one\t1\n\ntwo\t2\n", r"empty.tsv, line 2: empty line"),
        ("fields.tsv", "one\t1\ntwo\t2\textra\n", r"fields.tsv, line 2: found 3 tab-separated fields; expected 2"),
        ("nofield.tsv", "one\t1\nno tab here\n", r"nofield.tsv, line 2: found 1 tab-separated field; expected 2"),
        ("blank_target.tsv", "one\t \n", r"blank_target.tsv, line 1: empty target"),
        ("bad.jsonl", '{"source": "a", "target": "b"}\n{"source": "a",\n', r"bad.jsonl, line 2: invalid JSON"),
        ("keys.jsonl", '{"src": "a", "tgt": "b"}\n',
         r"keys.jsonl, line 1: no text field 'source', 'target' \(found keys \['src', 'tgt'\]\)"),
        ("nothing.tsv", "", r"nothing.tsv: no lines"),
    ],
)
def test_bad_parallel_files_name_the_line_and_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_pairs(tmp_path / name)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nowhere.tsv not found"):
        read_pairs(tmp_path / "nowhere.tsv")


def test_long_lines_are_an_error_by_default_and_truncated_on_request():
    with pytest.raises(DataError, match=r"f.tsv, line 3: the source has 5 tokens; the model takes at most 4 "
                                        r"\(data.max_len\).*data.long_lines: truncate"):
        LengthGuard("error")([1, 2, 3, 4, 5], 4, "f.tsv, line 3", "source")
    guard = LengthGuard("truncate")
    assert guard([1, 2, 3, 4, 5], 4, "f.tsv, line 3", "source") == [1, 2, 3, 4]
    assert guard([1, 2], 4, "f.tsv, line 4", "source") == [1, 2]
    with pytest.warns(UserWarning,
                      match=r"train: truncated 1 over-long line\(s\).*f.tsv, line 3 \(source, 5 -> 4 tokens\)"):
        guard.report("train")


def test_data_module_splits_files_and_encodes_with_bos_and_eos(tmp_path):
    rows = [f"{number_to_words(n)}\t{n:,}" for n in range(1, 41)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    dm = Seq2SeqDataModule(train_file=str(tmp_path / "train.tsv"), vocab_size=300, max_len=24, val_fraction=0.1)
    train, val = dm.get_dataset("train"), dm.get_dataset("val")
    assert (len(train), len(val)) == (36, 4)
    assert not {p.source for p in train.pairs} & {p.source for p in val.pairs}
    item = train[0]
    assert item["tgt"][0] == dm.tokenizer.bos_id and item["tgt"][-1] == dm.tokenizer.eos_id
    assert dm.tokenizer.decode(item["tgt"]) == item["target"] and dm.tokenizer.decode(item["src"]) == item["source"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["src"].shape[0] == len(batch["target"]) and (batch["src"] == dm.tokenizer.pad_id).any()


# --------------------------------------------------------------------------- the embedded numbers/dates task
def test_numbers_in_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(305021) == "three hundred five thousand twenty-one"
    assert number_to_words(305021, Style(british_and=True, hyphen=False, comma=True)) == \
        "three hundred and five thousand and twenty one"
    assert number_to_words(1200, Style(comma=True)) == "one thousand, two hundred"
    assert number_to_words(999999) == "nine hundred ninety-nine thousand nine hundred ninety-nine"
    assert [year_to_words(y) for y in (1900, 1905, 2000, 2007, 2015)] == [
        "nineteen hundred", "nineteen oh five", "two thousand", "two thousand seven", "twenty fifteen"]
    assert date_words(1999, 3, 4) == "march fourth, nineteen ninety-nine"


def test_every_pair_kind_has_one_correct_canonical_target():
    rng = np.random.default_rng(0)
    words = {number_to_words(n): n for n in range(0, 1_000_000, 997)}
    for _ in range(200):
        for kind in KINDS:
            source, target = make_pair(rng, kind)
            if kind == "words2digits":
                assert re.fullmatch(r"\d{1,3}(,\d{3})*", target)
            elif kind == "digits2words":
                n = int(re.sub(r"[ ,]", "", source))
                assert (target == number_to_words(n)
                        and f"{n:,}".replace(",", "") == source.replace(",", "").replace(" ", ""))
            elif kind == "date2iso":
                d = datetime.date.fromisoformat(target)  # a real calendar date, and the source names it
                assert any(y in source for y in [str(d.year)] + [year_to_words(d.year, v) for v in range(3)])
                assert MONTHS[d.month - 1][:3] in source.lower()
                assert re.search(rf"\b{d.day}(st|nd|rd|th|,| )", source) or f" {ordinal_words(d.day)}" in source
            else:
                d = datetime.date.fromisoformat(source)
                assert target == date_words(d.year, d.month, d.day)
    assert len(words) > 900  # distinct numbers have distinct words


def test_generated_splits_are_disjoint_and_regenerated_only_when_settings_change(tmp_path):
    cfg = NumbersConfig(num_train=400, num_val=40, num_test=80)
    root = generate_numbers(tmp_path, cfg)
    splits = {s: read_pairs(root / f"{s}.tsv") for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [400, 40, 80]
    sources = [p.source for v in splits.values() for p in v]
    assert len(set(sources)) == len(sources)
    mtime = (root / "train.tsv").stat().st_mtime_ns
    generate_numbers(tmp_path, cfg)
    assert (root / "train.tsv").stat().st_mtime_ns == mtime
    generate_numbers(tmp_path, NumbersConfig(num_train=200, num_val=40, num_test=80))
    assert len(read_pairs(root / "train.tsv")) == 200
