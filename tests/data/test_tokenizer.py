"""Byte-level BPE: lossless round trips, GPT-2 file-format compatibility with transformers, clear errors for bad files."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gpt3d.data.corpus import stdlib_documents
from gpt3d.data.errors import DataError
from gpt3d.data.tokenizer import EOD_TOKEN, load_tokenizer, train_tokenizer

SAMPLES = [
    "Hello world! It's a test.\n",
    "    def f(x):  # indented code\n\n\treturn x ** 2\r\n",
    "unicode: é, ß, 漢字, emoji 🙂, combining e\u0301, nbsp\u00a0here",
    f"one document{EOD_TOKEN}next document",
    "",
    "   leading and trailing spaces   ",
    "\x00\x01 control bytes \x7f",
]


@pytest.fixture(scope="module")
def trained(small_tokenizer):
    """The session's 600-id BPE and the 60 standard-library documents it was trained on (see conftest.py)."""
    return small_tokenizer, [d for _, d in zip(range(60), stdlib_documents())]


def test_trained_tokenizer_files_and_properties(trained):
    tokenizer, _ = trained
    assert sorted(os.listdir(tokenizer.directory)) == ["merges.txt", "vocab.json"]
    assert tokenizer.vocab_size == 600
    vocab = json.loads(Path(tokenizer.directory, "vocab.json").read_text())
    assert len(vocab) == 600 and sorted(vocab.values()) == list(range(600))
    assert tokenizer.eod_id == vocab[EOD_TOKEN] == 0
    merges = Path(tokenizer.directory, "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version")
    assert len(merges) - 1 == 600 - 257  # every id past the 256 bytes and <|endoftext|> is one merge


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_lossless(trained, text):
    tokenizer, _ = trained
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


def test_eod_token_and_compression(trained):
    tokenizer, texts = trained
    assert tokenizer.encode(EOD_TOKEN) == [tokenizer.eod_id]
    assert tokenizer.decode([tokenizer.eod_id]) == EOD_TOKEN
    # 343 merges learnt from these texts: clearly fewer tokens than bytes.
    assert sum(map(len, tokenizer.encode_batch(texts))) < 0.6 * sum(len(t.encode("utf-8")) for t in texts)
    assert tokenizer.encode_batch(texts[:3]) == [tokenizer.encode(t) for t in texts[:3]]


def test_reload_gives_same_ids(trained):
    tokenizer, texts = trained
    again = load_tokenizer(tokenizer.directory)
    assert again.vocab_size == tokenizer.vocab_size and again.eod_id == tokenizer.eod_id
    for text in SAMPLES + texts[:5]:
        assert again.encode(text) == tokenizer.encode(text)


def test_saved_files_load_in_transformers_gpt2_with_same_ids(trained):
    import transformers
    tokenizer, texts = trained
    hf = transformers.GPT2TokenizerFast.from_pretrained(tokenizer.directory)
    assert len(hf) == tokenizer.vocab_size
    assert hf.eos_token_id == tokenizer.eod_id
    for text in SAMPLES + texts[:10]:
        assert hf(text)["input_ids"] == tokenizer.encode(text)
        assert hf.decode(tokenizer.encode(text)) == text


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table, as in openai/gpt-2 src/encoder.py."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def test_hand_written_gpt2_files_load_like_transformers(tmp_path):
    """A user-provided pair in GPT-2's exact layout: byte symbols in encoder.py order, merges, <|endoftext|> last."""
    import transformers
    vocab = {symbol: i for i, symbol in enumerate(gpt2_bytes_to_unicode().values())}
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "Ġa n", "Ġan d", "o u"]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    vocab[EOD_TOKEN] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    ours = load_tokenizer(tmp_path)
    hf = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    assert ours.vocab_size == len(vocab) == 265 and ours.eod_id == 264
    assert ours.encode(" the and thou") == [vocab["Ġthe"], vocab["Ġand"], vocab["Ġt"], vocab["h"], vocab["ou"]]
    for text in SAMPLES + [" the and in the house<|endoftext|>"]:
        assert ours.encode(text) == hf(text)["input_ids"]
        assert ours.decode(ours.encode(text)) == text


def test_train_from_files(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    b.write_text("pack my box with five dozen liquor jugs\n" * 50)
    tokenizer = train_tokenizer([a, b], 300, tmp_path / "tok")
    assert 257 < tokenizer.vocab_size <= 300
    assert tokenizer.decode(tokenizer.encode("the quick brown fox")) == "the quick brown fox"
    assert len(tokenizer.encode(" quick brown fox")) < len(" quick brown fox")


def test_train_rejects_bad_vocab_size(tmp_path):
    with pytest.raises(DataError, match=r"vocab_size must be an integer >= 257 .* got 100"):
        train_tokenizer(["text"], 100, tmp_path)


def _copy(trained, tmp_path) -> Path:
    tokenizer, _ = trained
    target = tmp_path / "tok"
    shutil.copytree(tokenizer.directory, target)
    return target


def test_error_missing_directory(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/nope: no such tokenizer directory"):
        load_tokenizer(tmp_path / "nope")


def test_error_missing_merges(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    (directory / "merges.txt").unlink()
    with pytest.raises(DataError, match=f"{directory}/merges.txt: no such file"):
        load_tokenizer(directory)


def test_error_vocab_not_json(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    (directory / "vocab.json").write_text("[unk]\nthe\n##ing\n")  # a WordPiece vocab.txt under the wrong name
    with pytest.raises(DataError) as info:
        load_tokenizer(directory)
    assert str(info.value).startswith(f"{directory}/vocab.json: not valid JSON")
    assert "GPT-2 vocab.json" in str(info.value)


def test_error_vocab_not_byte_level(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    (directory / "vocab.json").write_text(json.dumps({"[UNK]": 0, "the": 1, "##ing": 2}))
    with pytest.raises(DataError, match=f"{directory}/vocab.json: 256 of the 256 byte-level symbols are missing"):
        load_tokenizer(directory)


def test_error_vocab_wrong_value_type(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    (directory / "vocab.json").write_text(json.dumps({"a": "zero"}))
    with pytest.raises(DataError, match=f"{directory}/vocab.json: entry 'a': 'zero' is not a non-negative integer id"):
        load_tokenizer(directory)


def test_error_bad_merges_line(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    lines = (directory / "merges.txt").read_text().splitlines()
    lines[3] = "three parts here"
    (directory / "merges.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"{directory}/merges.txt:4: 'three parts here' is not a merge; expected"):
        load_tokenizer(directory)


def test_error_merges_from_another_vocab(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    (directory / "merges.txt").write_text("#version: 0.2\nq z\n")
    with pytest.raises(DataError, match=f"{directory}/merges.txt:2: merge 'q z' produces 'qz', which is not in "
                                        f"vocab.json; the two files do not belong together"):
        load_tokenizer(directory)


def test_error_no_end_of_text_token(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    vocab = json.loads((directory / "vocab.json").read_text())
    vocab.pop(EOD_TOKEN)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(DataError, match=f"{directory}/vocab.json: no '<\\|endoftext\\|>' token"):
        load_tokenizer(directory)
