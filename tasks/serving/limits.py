"""Requests that cannot hurt a replica: every limit is checked before the work it bounds.

* the body is read chunk by chunk and refused (413) as soon as it passes ``max_body_bytes``
  (a ``Content-Length`` above it is refused before reading anything);
* its JSON is scanned before it is parsed: nesting deeper than ``max_depth`` or more than
  ``max_elements`` values is a 400 (Python's parser would raise ``RecursionError`` on deep nesting);
  ``true``/``false``/``null`` are refused as values (a boolean is not a number), and so are
  ``NaN``/``Infinity`` (non-finite);
* text lists are bounded per item (``max_text_chars``), per request (``max_rows``) and in total
  (``max_batch_chars``).

The scan is a regular expression and a NumPy cumulative sum (C speed), so a 1 MB body costs about
a millisecond.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_WORDS = re.compile(rb"\b(true|false|null)\b")


class BadRequest(ValueError):
    """A request refused with an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_depth: int = 8  # JSON nesting: {"inputs": [[[...]]]} is depth 4
    max_elements: int = 1_000_000  # JSON values in one body
    max_rows: int = 1024  # samples or texts in one request
    max_text_chars: int = 2000  # characters in one text
    max_batch_chars: int = 100_000  # characters in all texts of one request


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The body, or ``BadRequest(413)`` as soon as it is longer than ``limit`` bytes."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise BadRequest(413, f"body of {int(content_length)} bytes exceeds max_body_bytes={limit}")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body exceeds max_body_bytes={limit}")
        parts.append(chunk)
    return b"".join(parts)


def scan(body: bytes, limits: Limits, literals: bool = False) -> None:
    """Depth, element count and literal checks on the raw JSON text (strings blanked out first);
    ``literals``: ``true`` / ``false`` / ``null`` are values (the OpenAI routes' ``"stream": true``)."""
    bare = _STRING.sub(b'""', body)
    word = None if literals else _WORDS.search(bare)
    if word:
        raise BadRequest(422, f"'{word.group(1).decode()}' is not allowed (values must be numbers or strings)")
    raw = np.frombuffer(bare, dtype=np.uint8)
    step = np.zeros(len(raw), dtype=np.int32)
    step[(raw == ord("[")) | (raw == ord("{"))] = 1
    step[(raw == ord("]")) | (raw == ord("}"))] = -1
    depth = int(np.cumsum(step).max()) if len(step) else 0
    if depth > limits.max_depth:
        raise BadRequest(400, f"JSON nested {depth} deep exceeds max_depth={limits.max_depth}")
    elements = int((raw == ord(",")).sum()) + 1
    if elements > limits.max_elements:
        raise BadRequest(400, f"JSON of about {elements} values exceeds max_elements={limits.max_elements}")


def _constant(name: str):
    raise BadRequest(422, f"'{name}' is not allowed (values must be finite numbers)")


def parse(body: bytes, limits: Limits) -> dict:
    """The body as a JSON object after ``scan``; malformed JSON is a 400."""
    scan(body, limits)
    try:
        doc = json.loads(body, parse_constant=_constant)
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, BadRequest):
            raise
        raise BadRequest(400, f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(422, "body must be a JSON object")
    return doc


def texts_of(doc: dict, limits: Limits) -> list[str]:
    """``doc["texts"]``: a non-empty list of strings within the text limits."""
    texts = doc.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest(422, 'body must be {"texts": ["...", ...]} (a non-empty list of strings)')
    if len(texts) > limits.max_rows:
        raise BadRequest(413, f"texts: {len(texts)} texts exceed max_request_rows={limits.max_rows}")
    longest = max(len(t) for t in texts)
    if longest > limits.max_text_chars:
        raise BadRequest(413, f"texts: a text of {longest} characters exceeds max_text_chars={limits.max_text_chars}")
    total = sum(len(t) for t in texts)
    if total > limits.max_batch_chars:
        raise BadRequest(413, f"texts: {total} characters in all exceed max_batch_chars={limits.max_batch_chars}")
    return texts
