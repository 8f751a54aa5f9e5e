"""Streaming document readers for preprocessing: plain text and JSONL, read line by line in constant memory.

A reader yields `Piece(text, ends_document)`. JSONL gives one piece per line (`{"text": ...}`); plain text gives one
document per file, or with `split_on_blank_lines` one per paragraph (blank or whitespace-only lines separate documents
and are dropped, and a paragraph loses its final newline). A document longer than `chunk_chars` is cut into several
pieces only at a boundary where byte-level BPE splits the same way whole or in pieces ("x\\n" | "y": a newline between
two non-space characters), so encoding piece by piece gives exactly the ids of the whole document.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator, Literal

from .errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
DEFAULT_CHUNK_CHARS = 1 << 20


@dataclass
class Piece:
    text: str
    ends_document: bool


def detect_format(path: str, fmt: str = "auto") -> Literal["text", "jsonl"]:
    if fmt in ("text", "jsonl"):
        return fmt  # type: ignore[return-value]
    if fmt != "auto":
        raise DataError(f"--format: expected auto, text or jsonl, got {fmt!r}")
    return "jsonl" if path.lower().endswith(JSONL_SUFFIXES) else "text"


def check_input_file(path: str) -> None:
    """Missing, unreadable or empty input: one DataError before any work starts."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such input file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty input file; remove it from --input")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: not readable (permissions)")


class DocumentReader:
    """Iterates the pieces of one file; `bytes_read` tells the progress bar how far it got."""

    def __init__(self, path: str, fmt: str = "auto", json_key: str = "text", split_on_blank_lines: bool = False,
                 chunk_chars: int = DEFAULT_CHUNK_CHARS):
        self.path = path
        self.format = detect_format(path, fmt)
        self.json_key = json_key
        self.split_on_blank_lines = split_on_blank_lines
        self.chunk_chars = chunk_chars
        self.bytes_read = 0

    def _lines(self) -> Iterator[tuple[int, str]]:
        # Binary read: exact byte counts for the progress bar and "\r\n" kept as written (lossless).
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                self.bytes_read += len(raw)
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{self.path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                                    f"convert the file to UTF-8") from None

    def __iter__(self) -> Iterator[Piece]:
        return self._jsonl() if self.format == "jsonl" else self._text()

    def _jsonl(self) -> Iterator[Piece]:
        for number, line in self._lines():
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); expected one object per "
                                f"line like {{\"{self.json_key}\": \"...\"}}") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object like {{\"{self.json_key}\": \"...\"}}, got "
                                f"{type(record).__name__}")
            if self.json_key not in record:
                raise DataError(f"{where}: no key {self.json_key!r} (keys: {', '.join(map(str, record)) or 'none'}); "
                                f"pass --json-key to choose the text field")
            text = record[self.json_key]
            if not isinstance(text, str):
                raise DataError(f"{where}: {self.json_key!r} is {type(text).__name__}, expected a string")
            yield Piece(text, True)

    def _text(self) -> Iterator[Piece]:
        buffer: list[str] = []
        size = 0
        for _, line in self._lines():
            if self.split_on_blank_lines and not line.strip():
                if buffer:
                    yield Piece(_strip_final_newline("".join(buffer)), True)
                    buffer, size = [], 0
                continue
            if size >= self.chunk_chars and _safe_cut(buffer[-1], line):
                yield Piece("".join(buffer), False)
                buffer, size = [], 0
            buffer.append(line)
            size += len(line)
        if buffer:
            text = "".join(buffer)
            yield Piece(_strip_final_newline(text) if self.split_on_blank_lines else text, True)


def _strip_final_newline(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _safe_cut(previous_line: str, next_line: str) -> bool:
    """True when BPE pre-tokenisation splits "...x\\n" + "y..." the same way as the joined text.

    GPT-2's regex makes a lone "\\n" between two non-space characters its own pre-token in both cases; any whitespace
    next to the newline could merge with it differently. Python's isspace() covers all of the regex's \\s (and more),
    so this errs on the side of not cutting.
    """
    return (len(previous_line) >= 2 and previous_line.endswith("\n") and not previous_line.endswith("\r\n")
            and not previous_line[-2].isspace() and bool(next_line) and not next_line[0].isspace())


__all__ = ["Piece", "DocumentReader", "detect_format", "check_input_file", "JSONL_SUFFIXES"]
