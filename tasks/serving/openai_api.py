"""The OpenAI completions protocol without a web framework (testable on its own): parsed request bodies
in, answer objects and server-sent events out; ``tasks.serving.llm_deployment`` routes.

``Api.parse`` checks a ``/v1/completions`` or ``/v1/chat/completions`` body field by field (unknown
fields and wrong types are a 400 naming the field; another model's name a 404 ``model_not_found``;
``max_tokens`` over ``max_tokens_cap`` or prompt plus ``max_tokens`` over the context a 400 naming both
numbers) and renders chat messages with the tokenizer's chat template. Errors are ``ApiError``
(a ``tasks.serving.limits.BadRequest``) and leave as OpenAI's ``{"error": {message, type, param, code}}``.

``run`` turns the engine's tokens into text pieces: incremental detokenization (``TextStream``)
that never emits half a UTF-8 character, and ``stop`` strings that cut the text (not emitted) and
end the generation with ``finish_reason`` "stop". ``Reply`` builds the
``text_completion`` / ``chat.completion`` objects and their streamed chunks (``sse``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tasks.serving.limits import BadRequest

DONE = b"data: [DONE]\n\n"
_NUMBER = (int, float)
COMMON: dict[str, tuple] = {
    **dict.fromkeys(("model", "user"), (str,)),
    **dict.fromkeys(("max_tokens", "seed", "n"), (int,)),
    **dict.fromkeys(("temperature", "top_p", "presence_penalty", "frequency_penalty"), _NUMBER),
    **{"stop": (str, list), "stream": (bool,), "stream_options": (dict,)},
}
FIELDS = {
    "completion": {**COMMON, "prompt": (str, list)},
    "chat": {**COMMON, "messages": (list,), "max_completion_tokens": (int,)},
}
RANGES = {  # field -> (accepts the value, what it must be)
    "n": (lambda v: v == 1, "answers asked, this server gives 1"),
    "temperature": (lambda v: 0 <= v <= 2, "is not in [0, 2]"),
    "top_p": (lambda v: 0 < v <= 1, "is not in (0, 1]"),
    "seed": (lambda v: -(2**63) <= v < 2**63, "is not a 64-bit integer"),
    "max_tokens": (lambda v: v >= 1, "is not a positive number of tokens"),
    "max_completion_tokens": (lambda v: v >= 1, "is not a positive number of tokens"),
    **dict.fromkeys(("presence_penalty", "frequency_penalty"), (lambda v: v == 0, "is not supported (only 0)")),
}
ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 504: "timeout_error"}
ROLES = ("system", "developer", "user", "assistant")
DECODE_CONTEXT = 5  # prompt tokens decoded before the first new one (a word's leading space comes out right)


class ApiError(BadRequest):
    """A refused request: HTTP status, one-line message, the offending field and OpenAI's error code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message)
        self.param, self.code = param, code


def error_body(e: BadRequest) -> dict:
    """Any ``BadRequest`` in OpenAI's error shape."""
    info = {"message": str(e), "type": ERROR_TYPES.get(e.status, "invalid_request_error")}
    return {"error": {**info, "param": getattr(e, "param", None), "code": getattr(e, "code", None)}}


@dataclass
class GenRequest:
    """A checked request: the prompt as token ids and how to sample the answer."""

    kind: str  # "completion" | "chat"
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


def _typed(doc: dict, fields: dict[str, tuple]) -> dict:
    """The non-null fields of ``doc``, each of its allowed types (a boolean is not a number)."""
    out = {}
    for key, value in doc.items():
        if key not in fields:
            raise ApiError(400, f"{key}: unknown field (this server takes {', '.join(sorted(fields))})", key)
        if value is None:
            continue
        if not isinstance(value, fields[key]) or (isinstance(value, bool) and bool not in fields[key]):
            names = " or ".join(t.__name__ for t in fields[key])
            raise ApiError(400, f"{key}: {json.dumps(value)[:40]} is not a {names}", key)
        out[key] = value
    return out


def _stop_list(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop: a non-empty string or a list of at most 4 of them", "stop")
    return stops


def _content(message: Any, i: int) -> tuple[str, str]:
    """(role, text) of one chat message; content is a string or a list of text parts."""
    if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
        raise ApiError(400, f"messages[{i}]: an object with role and content", "messages")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ApiError(400, f"messages[{i}].role: {json.dumps(role)[:40]} is not one of {', '.join(ROLES)}", "messages")
    if isinstance(content, list):
        parts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        content = "".join(parts) if len(parts) == len(content) else None
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content: a string (or a list of text parts)", "messages")
    return role, content


@dataclass
class Api:
    """The protocol of one served model: its name, tokenizer, context (tokens) and ``max_tokens`` cap."""

    name: str
    tokenizer: Any
    context: int
    max_tokens_cap: int
    default_max_tokens: int = 256

    def prompt_ids(self, kind: str, doc: dict) -> list[int]:
        """The prompt's token ids: a completion's text as is, chat messages through the chat template."""
        if kind == "completion":
            prompt = doc.get("prompt")
            prompt = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else prompt
            if not isinstance(prompt, str) or not prompt:
                raise ApiError(400, "prompt: a non-empty string (or a list of one)", "prompt")
            return list(self.tokenizer(prompt)["input_ids"])
        messages = doc.get("messages")
        if not messages:
            raise ApiError(400, "messages: a non-empty list of {role, content}", "messages")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, f"model '{self.name}' has no chat template: use /v1/completions", "messages")
        turns = [dict(zip(("role", "content"), _content(m, i))) for i, m in enumerate(messages)]
        text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _max_tokens(self, doc: dict, prompt: int) -> int:
        key = "max_completion_tokens" if "max_completion_tokens" in doc else "max_tokens"
        given = doc.get(key)
        if given is None:
            return max(1, min(self.default_max_tokens, self.max_tokens_cap, self.context - prompt))
        if given > self.max_tokens_cap:
            raise ApiError(400, f"{key}={given} exceeds max_tokens_cap={self.max_tokens_cap}", key)
        return given

    def parse(self, kind: str, body: dict) -> GenRequest:
        """The checked request of a ``kind`` ("completion" | "chat") body, or ``ApiError``."""
        doc = _typed(body, FIELDS[kind])
        if doc.get("model") != self.name:
            given = f"model {json.dumps(doc.get('model'))}: not served here (this is '{self.name}')"
            raise ApiError(404, given, "model", "model_not_found")
        for key, (ok, rule) in RANGES.items():
            if key in doc and not ok(doc[key]):
                raise ApiError(400, f"{key}: {doc[key]} {rule}", key)
        options = doc.get("stream_options", {})
        if set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
            raise ApiError(400, "stream_options: only {include_usage: true|false}", "stream_options")
        prompt = self.prompt_ids(kind, doc)
        max_tokens = self._max_tokens(doc, len(prompt))
        if len(prompt) + max_tokens > self.context:
            over = f"prompt of {len(prompt)} tokens plus max_tokens={max_tokens} exceeds the context of {self.context}"
            raise ApiError(400, over, "max_tokens", "context_length_exceeded")
        return GenRequest(
            kind=kind,
            prompt_ids=prompt,
            max_tokens=max_tokens,
            temperature=float(doc.get("temperature", 1.0)),
            top_p=float(doc.get("top_p", 1.0)),
            stop=_stop_list(doc.get("stop", [])),
            seed=doc.get("seed"),
            stream=doc.get("stream", False),
            include_usage=bool(options.get("include_usage", False)),
        )


class TextStream:
    """Token ids in, printable text out: each piece decoded in the context of the tokens before it, held back
    while it ends in an incomplete UTF-8 character (U+FFFD) or could be the start of a ``stop`` string."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: list[str], skip_ids: list[int]):
        self.tokenizer, self.stop, self.skip = tokenizer, stop, set(skip_ids)
        self.ids = list(prompt_ids[-DECODE_CONTEXT:])
        self.prefix, self.read = 0, len(self.ids)
        self.pending, self.stopped = "", False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """The text that ``token_id`` completes (may be ""); after a stop string, nothing more."""
        if self.stopped or token_id in self.skip:
            return ""
        self.ids.append(token_id)
        before, now = self._decode(self.ids[self.prefix : self.read]), self._decode(self.ids[self.prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return self._cut(self.pending + now[len(before) :])

    def _cut(self, text: str) -> str:
        """``text`` up to the first stop string (then stopped), minus a tail that may begin one."""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return text[: min(hits)]
        hold = max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The held-back text once generation has ended (a partial stop string is plain text then)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class Piece(NamedTuple):
    """One step of an answer: new text, the finish reason on the last one, tokens generated so far."""

    text: str
    finish: str | None
    tokens: int


async def run(req: GenRequest, tokens: AsyncIterator[Any], text: TextStream) -> AsyncGenerator[Piece, None]:
    """Text pieces of the engine's ``Token``s (``.id``, ``.finish``); ends at the engine's finish or a stop string."""
    count = 0
    async for token in tokens:
        count += 1
        piece = text.push(int(token.id))
        if text.stopped:
            yield Piece(piece, "stop", count)
            return
        if token.finish is not None:
            yield Piece(piece + text.flush(), token.finish, count)
            return
        if piece:
            yield Piece(piece, None, count)
    yield Piece(text.flush(), "length", count)  # the engine ended without a finish: the budget is spent


class Reply:
    """The answer objects of one request, all with one id and creation time: the whole answer (a
    ``chat.completion`` or ``text_completion``) or its stream of chunks as server-sent events."""

    def __init__(self, req: GenRequest, model: str):
        self.req, self.chat = req, req.kind == "chat"
        rid = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.head = {"id": rid, "created": int(time.time()), "model": model}
        self.chunk_head = {**self.head, "object": "chat.completion.chunk" if self.chat else "text_completion"}

    def usage(self, completion: int) -> dict:
        prompt = len(self.req.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self, text: str, finish: str, completion_tokens: int) -> dict:
        if self.chat:
            choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self.head, "object": obj, "choices": [choice], "usage": self.usage(completion_tokens)}

    def chunk(self, piece: Piece, role: bool = False) -> bytes:
        """One streamed chunk: the chat role first (``role=True``), then the text pieces."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else {"content": piece.text}
            choice: dict = {"index": 0, "delta": delta, "finish_reason": None if role else piece.finish}
        else:
            choice = {"index": 0, "text": piece.text, "finish_reason": piece.finish, "logprobs": None}
        extra = {"usage": None} if self.req.include_usage else {}
        return sse({**self.chunk_head, "choices": [choice], **extra})

    def usage_chunk(self, completion_tokens: int) -> bytes:
        """The last chunk with ``stream_options.include_usage``: no choices, the token counts."""
        return sse({**self.chunk_head, "choices": [], "usage": self.usage(completion_tokens)})


def sse(obj: dict) -> bytes:
    """One server-sent event holding ``obj``."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
