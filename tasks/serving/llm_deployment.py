"""The Ray Serve deployment of a registered causal language model behind the OpenAI API.

``LLMServer`` answers ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``
(``stream: true`` as server-sent events) as the official ``openai`` client expects, and ``GET /health``
(the pinned version, the runtime and the engine's batch counters). The protocol itself (fields,
errors, detokenization, answer objects) is ``tasks.serving.openai_api``; generation is one
``tasks.llm.engine.Engine`` per replica, so concurrent requests share each decode step (continuous
batching).

Every request is bounded like ``ModelServer``'s (``tasks.serving.deployment``): the body read with
``max_body_bytes``, the JSON scanned by ``tasks.serving.limits``, the same bearer-token rule, and
``request_timeout_s`` over the whole answer (504), or, when streaming, until the first text is ready.
A refused request is a 4xx in OpenAI's error shape and never reaches the engine. A stream closes its
engine request when it ends for any reason: a client that disconnects has its request cancelled by
Serve, and the engine frees the slot before its next step.

``cfg`` is a plain dict (threads, max_batch, max_tokens_cap, request_timeout_s, auth_token,
max_body_bytes); ``load(threads)`` returns the ``tasks.llm.served.ServedLM``.
(No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` type.)
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable
from types import SimpleNamespace
from typing import cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from tasks.llm.engine import Engine, Sampling
from tasks.llm.served import ServedLM
from tasks.serving.deployment import BODY, authorize
from tasks.serving.limits import BadRequest, Limits, read_body, scan
from tasks.serving.openai_api import (
    DONE,
    Api,
    ApiError,
    GenRequest,
    Piece,
    Reply,
    TextStream,
    error_body,
    run,
    sse,
)

app = FastAPI(title="slimray LLM", description="A causal language model from the slimray registry (OpenAI API).")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """An unknown route or method, in OpenAI's error shape too (clients read ``error.message``)."""
    return _error(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}"))


def _constant(name: str):
    raise ApiError(400, f"'{name}' is not allowed (numbers must be finite)")


def parse_json(body: bytes, limits: Limits) -> dict:
    """The body as a JSON object within ``limits``' nesting and size (``tasks.serving.limits.scan``); unlike
    ``/predict`` bodies, ``true`` / ``false`` / ``null`` are values here (``"stream": true``)."""
    scan(body, limits, literals=True)
    try:
        doc = json.loads(body, parse_constant=_constant)
    except BadRequest:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "body must be a JSON object")
    return doc


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _error(e: BadRequest) -> JSONResponse:
    return JSONResponse(error_body(e), status_code=e.status)


@serve.deployment
@serve.ingress(app)
class LLMServer:
    def _authorize(self, given: str) -> None:
        authorize(self.cfg.auth_token, given)  # the one bearer-token rule of every slimray deployment

    def __init__(self, cfg: dict, load: Callable[[int], ServedLM], pinned: dict):
        self.cfg = SimpleNamespace(**cfg)
        self.pinned, self.limits = pinned, Limits(max_body_bytes=self.cfg.max_body_bytes)
        self.served = load(self.cfg.threads)
        self.engine = Engine(self.served.decoder, self.served.eos_ids, self.cfg.max_batch, self.served.context)
        name = pinned.get("name") or self.served.name
        self.api = Api(name, self.served.tokenizer, self.served.context, self.cfg.max_tokens_cap)
        self.created = int(time.time())
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()

    @app.get("/health")
    def health(self) -> dict:
        return {
            "status": "ok",
            **{k: self.pinned.get(k) for k in ("name", "version", "run_id", "requested")},
            "model": self.api.name,
            "runtime": self.served.runtime,
            "context": self.served.context,
            "max_tokens_cap": self.api.max_tokens_cap,
            "engine": self.engine.stats(),
            "replica": self.replica,
        }

    @app.get("/v1/models")
    async def models(self, request: Request):
        """The one model this server answers for (its registered name)."""
        try:
            self._authorize(request.headers.get("authorization", ""))
        except BadRequest as e:
            return _error(e)
        card = {"id": self.api.name, "object": "model", "created": self.created, "owned_by": "slimray"}
        return {"object": "list", "data": [{**card, "max_model_len": self.served.context}]}

    @app.post("/v1/completions", openapi_extra=BODY)
    async def completions(self, request: Request):
        """OpenAI's ``/v1/completions``: ``{"model", "prompt", "max_tokens", ...}``."""
        return await self._handle("completion", request)

    @app.post("/v1/chat/completions", openapi_extra=BODY)
    async def chat_completions(self, request: Request):
        """OpenAI's ``/v1/chat/completions``: ``{"model", "messages": [{role, content}], ...}``."""
        return await self._handle("chat", request)

    async def _request(self, kind: str, request: Request) -> GenRequest:
        """The request checked: token, body size, JSON limits, then the protocol's fields."""
        self._authorize(request.headers.get("authorization", ""))
        body = await read_body(request.stream(), request.headers.get("content-length"), self.limits.max_body_bytes)
        return self.api.parse(kind, parse_json(body, self.limits))

    async def _handle(self, kind: str, request: Request):
        """The answer, or the refusal in OpenAI's shape; ``request_timeout_s`` bounds the body, the checks and the
        answer (a stream: its first text)."""
        timeout = self.cfg.request_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            req = await asyncio.wait_for(self._request(kind, request), timeout)
            left = max(deadline - asyncio.get_running_loop().time(), 0.001)
            return await (self._stream(req, left) if req.stream else asyncio.wait_for(self._whole(req), left))
        except BadRequest as e:
            return _error(e)
        except asyncio.TimeoutError:
            return _error(ApiError(504, f"request took over request_timeout_s={timeout}"))
        except ValueError as e:  # the engine's refusal of a request the protocol let through
            return _error(ApiError(400, _first_line(e)))
        except (
            Exception
        ) as e:  # the engine failed (closed, a forward raised): this request fails, the replica serves on
            return _error(ApiError(500, f"generation failed: {_first_line(e)}"))

    def _generate(self, req: GenRequest) -> tuple[AsyncGenerator, AsyncGenerator[Piece, None]]:
        """The engine's token stream for ``req`` and the text pieces made of it (both to be closed)."""
        sampling = Sampling(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed)
        tokens = cast(AsyncGenerator, self.engine.stream(req.prompt_ids, sampling))
        text = TextStream(self.served.tokenizer, req.prompt_ids, req.stop, self.served.eos_ids)
        return tokens, run(req, tokens, text)

    async def _whole(self, req: GenRequest) -> dict:
        tokens, pieces = self._generate(req)
        parts: list[str] = []
        async with contextlib.aclosing(tokens), contextlib.aclosing(pieces):
            async for piece in pieces:
                parts.append(piece.text)
        return Reply(req, self.api.name).whole("".join(parts), piece.finish or "length", piece.tokens)

    async def _stream(self, req: GenRequest, timeout: float) -> StreamingResponse:
        """Server-sent events; the first piece is awaited here, so a failure before it is a plain 4xx/504."""
        tokens, pieces = self._generate(req)
        try:
            first = await asyncio.wait_for(anext(pieces), timeout)
        except BaseException:
            await pieces.aclose()
            await tokens.aclose()
            raise
        events = self._events(Reply(req, self.api.name), first, tokens, pieces)
        return StreamingResponse(events, media_type="text/event-stream")

    async def _events(self, reply: Reply, first: Piece, tokens: AsyncGenerator, pieces: AsyncGenerator[Piece, None]):
        """The chunks: the chat role, each piece, the usage (when asked), ``[DONE]``; the engine request
        is closed however the stream ends (a client gone: Serve cancels this generator)."""
        async with contextlib.aclosing(tokens), contextlib.aclosing(pieces):
            if reply.chat:
                yield reply.chunk(first, role=True)
            yield reply.chunk(first)
            last = first
            try:
                async for last in pieces:
                    yield reply.chunk(last)
            except Exception as e:  # the engine failed mid-stream: the client is told, not cut off
                yield sse(error_body(ApiError(500, f"generation failed: {_first_line(e)}")))
                return
            if reply.req.include_usage:
                yield reply.usage_chunk(last.tokens)
            yield DONE
