"""Byte-level BPE tokenizer (GPT-2's scheme) through Hugging Face `tokenizers`, stored in GPT-2's vocab.json + merges.txt.

`load_tokenizer(dir)` reads a GPT-2-format pair (GPT-2's own files, or any byte-level BPE saved that way);
`train_tokenizer(texts_or_files, vocab_size, out_dir)` trains one and saves it in the same format, so the result also
loads in `transformers.GPT2TokenizerFast` with identical ids. `<|endoftext|>` is the end-of-document token appended after
every document, as GPT-2 did; text containing the literal string `<|endoftext|>` maps to that id (as in transformers).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Sequence, Union

from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from .errors import DataError

EOD_TOKEN = "<|endoftext|>"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
MIN_VOCAB_SIZE = 257  # 256 byte symbols + <|endoftext|>


class Tokenizer:
    """A loaded byte-level BPE: lossless `decode(encode(text)) == text` for any str."""

    def __init__(self, backend: HFTokenizer, directory: str):
        self._backend = backend
        self.directory = directory
        eod = backend.token_to_id(EOD_TOKEN)
        if eod is None:
            raise DataError(f"{os.path.join(directory, VOCAB_FILE)}: no {EOD_TOKEN!r} token; a GPT-2-format "
                            f"vocabulary needs it as the end-of-document token (add it to vocab.json)")
        self.eod_id: int = eod

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1); model.vocab_size must be at least this."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Several texts at once (parallel inside `tokenizers`)."""
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"Tokenizer({self.directory!r}, vocab_size={self.vocab_size}, eod_id={self.eod_id})"


def _byte_level_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> HFTokenizer:
    """GPT-2's pipeline: GPT-2 regex split on bytes mapped to printable symbols, BPE, byte-level decoding."""
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="",
                                     fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(EOD_TOKEN, special=True, normalized=False)])
    return backend


def _read_vocab(path: str) -> dict[str, int]:
    expected = "a JSON object mapping byte-level BPE tokens to ids (GPT-2 vocab.json)"
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; a tokenizer directory holds GPT-2-format {VOCAB_FILE} + {MERGES_FILE}")
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); expected {expected}") from None
    if not isinstance(vocab, dict) or not vocab:
        raise DataError(f"{path}: expected {expected}, got {type(vocab).__name__}")
    bad = next(((k, v) for k, v in vocab.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0), None)
    if bad is not None:
        raise DataError(f"{path}: entry {bad[0]!r}: {bad[1]!r} is not a non-negative integer id; expected {expected}")
    if len(set(vocab.values())) != len(vocab):
        raise DataError(f"{path}: two tokens share an id; expected {expected}")
    missing = [s for s in pre_tokenizers.ByteLevel.alphabet() if s not in vocab]
    if missing:
        raise DataError(f"{path}: {len(missing)} of the 256 byte-level symbols are missing (e.g. {missing[:3]}); "
                        f"expected {expected} — is this a WordPiece/SentencePiece vocabulary?")
    return vocab


def _read_merges(path: str, vocab: dict[str, int]) -> list[tuple[str, str]]:
    expected = "an optional '#version' line then one merge 'left right' per line (GPT-2 merges.txt)"
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; a tokenizer directory holds GPT-2-format {VOCAB_FILE} + {MERGES_FILE}")
    merges = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if (number == 1 and line.startswith("#version")) or not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise DataError(f"{path}:{number}: {line[:80]!r} is not a merge; expected {expected}")
            if parts[0] + parts[1] not in vocab:
                raise DataError(f"{path}:{number}: merge {line!r} produces {parts[0] + parts[1]!r}, which is not in "
                                f"{VOCAB_FILE}; the two files do not belong together")
            merges.append((parts[0], parts[1]))
    return merges


def load_tokenizer(directory: Union[str, os.PathLike]) -> Tokenizer:
    """Load GPT-2-format `vocab.json` + `merges.txt` from `directory` (any problem: one DataError naming the file)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such tokenizer directory; expected a directory with GPT-2-format "
                        f"{VOCAB_FILE} + {MERGES_FILE} (set data.tokenizer_dir or pass --tokenizer)")
    vocab = _read_vocab(os.path.join(directory, VOCAB_FILE))
    if EOD_TOKEN not in vocab:
        raise DataError(f"{os.path.join(directory, VOCAB_FILE)}: no {EOD_TOKEN!r} token; a GPT-2-format vocabulary needs "
                        f"it as the end-of-document token (GPT-2's is the last id, 50256)")
    merges = _read_merges(os.path.join(directory, MERGES_FILE), vocab)
    return Tokenizer(_byte_level_backend(vocab, merges), directory)


def _texts_from_files(paths: Sequence[os.PathLike]) -> Iterator[str]:
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{os.fspath(path)}: no such file to train the tokenizer on")
        with open(path, encoding="utf-8") as f:
            yield from f


def train_tokenizer(texts_or_files: Union[Iterable[str], Sequence[os.PathLike]], vocab_size: int,
                    out_dir: Union[str, os.PathLike], min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` ids and save it as GPT-2 vocab.json + merges.txt in `out_dir`.

    `texts_or_files` is an iterable of texts (str), or a sequence of `pathlib.Path`/os.PathLike files read as UTF-8
    (plain strings are always text, never paths). Ids: 0 is `<|endoftext|>`, 1..256 the byte symbols, then merges in
    order. The vocabulary is smaller than `vocab_size` when the text has no more pairs seen `min_frequency` times.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"tokenizer vocab_size must be an integer >= {MIN_VOCAB_SIZE} (256 bytes + {EOD_TOKEN}), "
                        f"got {vocab_size!r}")
    if isinstance(texts_or_files, (str, bytes)):
        raise DataError("train_tokenizer: pass an iterable of texts or a list of pathlib.Path files, not one string")
    if isinstance(texts_or_files, (list, tuple)) and texts_or_files and isinstance(texts_or_files[0], os.PathLike):
        texts: Iterable[str] = _texts_from_files(texts_or_files)
    else:
        texts = texts_or_files
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    backend = _byte_level_backend({}, [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[EOD_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    backend.model.save(out_dir)  # writes exactly vocab.json + merges.txt in GPT-2's layout
    return load_tokenizer(out_dir)


__all__ = ["Tokenizer", "load_tokenizer", "train_tokenizer", "EOD_TOKEN", "VOCAB_FILE", "MERGES_FILE"]
