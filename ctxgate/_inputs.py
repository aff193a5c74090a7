"""Reading user files for the CLI: strict UTF-8 with the byte offset of any bad byte, and
documents from JSON lists or JSONL (plain strings, or objects with a text field)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ctxgate.compressor import Document, InvalidRequest

TEXT_KEYS = ("text", "page_content", "content", "passage")
DOC_LIST_KEYS = ("ctxs", "documents", "docs", "context", "passages")


def lines(text: str) -> list[str]:
    """JSONL lines: split at "\n" only (and a "\r" before it). ``str.splitlines`` also splits at
    U+2028, U+0085, form feeds and more, which a JSON string may hold raw, so one row became two
    'invalid JSON' rows and every later row number shifted (second audit)."""
    out = text.split("\n")
    if out and out[-1] == "":
        out.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in out]


def read_text(source: str) -> str:
    """A file path or '-' for stdin, decoded as strict UTF-8."""
    if source == "-":
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        path = Path(source)
        if not path.exists():
            raise InvalidRequest(f"{source}: no such file")
        if path.is_dir():
            raise InvalidRequest(f"{source}: is a directory")
        data = path.read_bytes()
        name = source
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"{name}: invalid UTF-8 at byte offset {exc.start} (byte 0x{data[exc.start]:02x})"
        ) from None


def to_document(item: Any, where: str) -> Document:
    if isinstance(item, str):
        return Document(text=item)
    if isinstance(item, dict):
        key = next((k for k in TEXT_KEYS if isinstance(item.get(k), str)), None)
        if key is None:
            raise InvalidRequest(f"{where}: a document object needs a string field 'text'")
        meta = {k: v for k, v in item.items() if k != key}
        text = item[key]
        if isinstance(item.get("title"), str) and item["title"]:
            text = f"(Title: {item['title']}) {text}"
        doc_id = meta.get("id")
        return Document(text=text, id=str(doc_id) if doc_id is not None else None, metadata=meta)
    raise InvalidRequest(f"{where}: a document must be a string or an object, got {type(item).__name__}")


def read_documents(source: str, row: int | None = None) -> tuple[list[Document], str | None]:
    """Documents from a JSON list or JSONL file, plus a question if the row carries one.

    A JSONL file whose rows each hold a list of documents (``ctxs``, ``documents``...) is a
    dataset: ``row`` picks one (default 0) and its ``question`` is used unless one is given.
    """
    text = read_text(source).strip()
    if not text:
        return [], None
    try:
        parsed = json.loads(text)
        rows = parsed if isinstance(parsed, list) else [parsed]
        jsonl = False
    except json.JSONDecodeError:
        rows, jsonl = [], True
        for n, line in enumerate(lines(text), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"{source}: line {n} is not valid JSON ({exc.msg})") from None
    first = rows[0] if rows else None
    if isinstance(first, dict) and any(isinstance(first.get(k), list) for k in DOC_LIST_KEYS):
        idx = row or 0
        if not 0 <= idx < len(rows):
            raise InvalidRequest(f"{source}: --row {idx} is out of range (0..{len(rows) - 1})")
        record = rows[idx]
        key = next(k for k in DOC_LIST_KEYS if isinstance(record.get(k), list))
        docs = [to_document(d, f"{source} row {idx} {key}[{i}]") for i, d in enumerate(record[key])]
        question = record.get("question") if isinstance(record.get("question"), str) else None
        return docs, question
    if row is not None:
        raise InvalidRequest(f"{source}: --row only applies to files whose rows hold document lists")
    kind = "line" if jsonl else "item"
    return [to_document(d, f"{source} {kind} {i + 1}") for i, d in enumerate(rows)], None
