"""`gpt3d preprocess`: text and JSONL to an indexed dataset, exact contents, and the exact errors for bad input."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

from gpt3d.data.documents import DocumentReader
from gpt3d.data.errors import DataError
from gpt3d.data.indexed_dataset import IndexedDataset
from gpt3d.data.preprocess import add_arguments, preprocess, run, tokenizer_output_dir
from gpt3d.data.tokenizer import load_tokenizer


def documents_of(prefix: str) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpt3d preprocess")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_text_one_document_per_file(tmp_path, small_tokenizer):
    texts = ["First file.\n\nStill the first document.\n", "    indented second file\nwithout final newline"]
    paths = []
    for i, text in enumerate(texts):
        paths.append(str(tmp_path / f"{i}.txt"))
        with open(paths[-1], "w", newline="") as f:
            f.write(text)
    stats = preprocess(paths, str(tmp_path / "out"), small_tokenizer, progress=False)
    expected = [small_tokenizer.encode(t) + [small_tokenizer.eod_id] for t in texts]
    assert documents_of(str(tmp_path / "out")) == expected
    assert (stats.documents, stats.tokens) == (2, sum(map(len, expected)))
    assert IndexedDataset(str(tmp_path / "out")).dtype == np.uint16


def test_text_split_on_blank_lines(tmp_path, small_tokenizer):
    path = tmp_path / "paras.txt"
    path.write_text("\npara one\nline two\n\n\n   \t\npara two\n\nlast para")
    preprocess([str(path)], str(tmp_path / "out"), small_tokenizer, split_on_blank_lines=True, progress=False)
    decoded = [small_tokenizer.decode(d) for d in documents_of(str(tmp_path / "out"))]
    assert decoded == ["para one\nline two<|endoftext|>", "para two<|endoftext|>", "last para<|endoftext|>"]


def test_jsonl(tmp_path, small_tokenizer):
    path = tmp_path / "docs.jsonl"
    records = [{"text": "alpha", "id": 1}, {"text": ""}, {"text": "gamma\nwith newline 漢字"}]
    path.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n" + json.dumps(records[2]) + "\n")
    stats = preprocess([str(path)], str(tmp_path / "out"), small_tokenizer, progress=False)
    eod = small_tokenizer.eod_id
    assert documents_of(str(tmp_path / "out")) == [small_tokenizer.encode("alpha") + [eod],
                                                    small_tokenizer.encode("gamma\nwith newline 漢字") + [eod]]
    assert (stats.documents, stats.skipped_empty) == (2, 1)


def test_jsonl_custom_key_and_mixed_inputs(tmp_path, small_tokenizer):
    (tmp_path / "a.jsonl").write_text('{"content": "from json"}\n')
    (tmp_path / "b.txt").write_text("from text")
    preprocess([str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")], str(tmp_path / "out"), small_tokenizer,
               json_key="content", progress=False)
    decoded = [small_tokenizer.decode(d) for d in documents_of(str(tmp_path / "out"))]
    assert decoded == ["from json<|endoftext|>", "from text<|endoftext|>"]


def test_bad_json_line_names_file_and_line_and_leaves_nothing(tmp_path, small_tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok too"}\n{"text": "broken" "x"}\n')
    with pytest.raises(DataError) as info:
        preprocess([str(path)], str(tmp_path / "out"), small_tokenizer, progress=False)
    assert str(info.value) == (f"{path}:3: not valid JSON (Expecting ',' delimiter at column 19); expected one object "
                               f"per line like {{\"text\": \"...\"}}")
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


@pytest.mark.parametrize("line, message", [
    ('{"body": "x"}', "no key 'text' (keys: body); pass --json-key to choose the text field"),
    ('{"text": 5}', "'text' is int, expected a string"),
    ('["text"]', "expected a JSON object like {\"text\": \"...\"}, got list"),
])
def test_bad_json_records(tmp_path, small_tokenizer, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as info:
        preprocess([str(path)], str(tmp_path / "out"), small_tokenizer, progress=False)
    assert str(info.value) == f"{path}:2: {message}"


def test_invalid_utf8_names_line(tmp_path, small_tokenizer):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=f"{path}:2: not valid UTF-8"):
        preprocess([str(path)], str(tmp_path / "out"), small_tokenizer, progress=False)


def test_existing_output_is_kept_without_overwrite(tmp_path, small_tokenizer):
    (tmp_path / "a.txt").write_text("first version")
    (tmp_path / "b.txt").write_text("second version")
    prefix = str(tmp_path / "out")
    preprocess([str(tmp_path / "a.txt")], prefix, small_tokenizer, progress=False)
    before = documents_of(prefix)
    with pytest.raises(DataError) as info:
        preprocess([str(tmp_path / "b.txt")], prefix, small_tokenizer, progress=False)
    assert str(info.value) == (f"{prefix}: output already exists ({prefix}.bin/.idx); pass --overwrite to replace it "
                               f"or choose another --output-prefix")
    assert documents_of(prefix) == before
    preprocess([str(tmp_path / "b.txt")], prefix, small_tokenizer, overwrite=True, progress=False)
    assert small_tokenizer.decode(documents_of(prefix)[0]) == "second version<|endoftext|>"


def test_missing_and_empty_inputs(tmp_path, small_tokenizer):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError) as info:
        preprocess([str(tmp_path / "nope.txt")], str(tmp_path / "out"), small_tokenizer, progress=False)
    assert str(info.value) == f"{tmp_path}/nope.txt: no such input file"
    with pytest.raises(DataError) as info:
        preprocess([str(tmp_path / "empty.txt")], str(tmp_path / "out"), small_tokenizer, progress=False)
    assert str(info.value) == f"{tmp_path}/empty.txt: empty input file; remove it from --input"


def test_long_document_pieces_encode_like_the_whole(small_tokenizer, tmp_path):
    # Code-like text: indentation, blank lines, trailing spaces, CRLF: cuts may only fall where BPE splits anyway.
    text = "".join(f"def f{i}(x):  \n    return x + {i}\n\n\nclass C{i}:\r\n\tpass\nvalue = {i}\nnext\n"
                   for i in range(40))
    path = tmp_path / "long.txt"
    path.write_bytes(text.encode())
    pieces = list(DocumentReader(str(path), chunk_chars=50))
    assert len(pieces) > 10 and [p.ends_document for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert "".join(p.text for p in pieces) == text
    assert sum((small_tokenizer.encode(p.text) for p in pieces), []) == small_tokenizer.encode(text)


def test_workers_give_identical_output(tmp_path, small_tokenizer):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i} " * (i % 7 + 1)}) + "\n" for i in range(300)))
    preprocess([str(path)], str(tmp_path / "one"), small_tokenizer, progress=False)
    preprocess([str(path)], str(tmp_path / "two"), small_tokenizer, workers=2, progress=False)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"two{ext}").read_bytes()


def test_cli_train_tokenizer(tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"paragraph {i}: the quick brown fox jumps over the lazy dog" for i in range(200)))
    prefix = str(tmp_path / "out")
    args = parse(["--input", str(path), "--output-prefix", prefix, "--train-tokenizer", "300",
                  "--split-docs-on-blank-lines", "--no-progress"])
    assert run(args) == 0
    assert "200 documents" in capsys.readouterr().out
    tokenizer = load_tokenizer(tokenizer_output_dir(prefix))
    docs = documents_of(prefix)
    assert len(docs) == 200
    assert tokenizer.decode(docs[7]) == "paragraph 7: the quick brown fox jumps over the lazy dog<|endoftext|>"
    assert sorted(os.listdir(tmp_path)) == ["corpus.txt", "out-tokenizer", "out.bin", "out.idx"]


def test_cli_error_exit_code(tmp_path, capsys, small_tokenizer):
    args = parse(["--input", str(tmp_path / "missing.txt"), "--output-prefix", str(tmp_path / "o"),
                  "--tokenizer", small_tokenizer.directory])
    assert run(args) == 2
    assert capsys.readouterr().err == f"gpt3d preprocess: error: {tmp_path}/missing.txt: no such input file\n"


def test_cli_requires_a_tokenizer_choice(tmp_path):
    with pytest.raises(SystemExit):
        parse(["--input", "x", "--output-prefix", "y"])
    with pytest.raises(SystemExit):
        parse(["--input", "x", "--output-prefix", "y", "--tokenizer", "t", "--train-tokenizer", "300"])
