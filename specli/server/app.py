"""The routes: /v1/chat/completions, /v1/completions, /v1/models, /health.

Each completion request is read (size-limited), parsed and validated, queued on the
Scheduler, and answered from its ticket: as one JSON body, or as Server-Sent Events
ending with `data: [DONE]`. Errors leave in OpenAI's shape from the handlers at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import threading
import time

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from specli.config import PROMPT_CACHE_BYTES
from specli.server import guard
from specli.server.errors import ApiError, error_body, internal, loading, unauthorized
from specli.server.guard import Access
from specli.server.protocol import (Defaults, parse_chat, parse_completion, parse_infill,
                                    parse_json)
from specli.server.responses import (DONE, Ids, chunk, completion_body, infill_body,
                                     infill_chunk, models_body, sse, usage_chunk)
from specli.server.worker import Choices, Delta, Failed, Finished, Scheduler, make_runners

MAX_BODY = 8 * 1024 * 1024  # bytes; a larger request body gets 413
POLL_S = 0.25  # how often a request waiting for its turn checks that its client is still there


class ServerState:
    """What the routes read: the scheduler, the defaults, readiness, the API key and which
    browsers may call (guard.Access)."""

    def __init__(self, *, api_key: str | None, max_queue: int, log,
                 state_bytes: int = PROMPT_CACHE_BYTES, access: Access = Access(),
                 parallel: int = 1, history_path=None) -> None:
        self.api_key = api_key
        self.history_path = history_path  # --draft-history FILE, or None
        self.history = None  # core.history.DraftHistory, once loaded
        self.access = access
        self.log = log
        self.state_bytes = state_bytes  # saved prompt states, per model (promptcache)
        self.scheduler = Scheduler(max_queue, log, parallel)
        self.ready = threading.Event()
        self.defaults: Defaults | None = None
        self.model_id = "specli"
        self.model_info: dict = {}
        self.created = int(time.time())

    def set_ready(self, gen) -> None:
        """The models are loaded: build the runner and start answering."""
        from specli.core.history import open_history

        self.history = open_history(self.history_path, gen.loaded.target)
        self.scheduler.set_runners(make_runners(gen, self.log, self.state_bytes, self.history))
        if self.scheduler.runner.core.template.is_fallback:
            self.log("warning: the target has no chat template; using a plain "
                     "'User:/Assistant:' format")
        self.defaults = Defaults(gen.sampling, gen.spec, gen.drafter_name)
        paths = gen.paths
        self.model_id = paths.pair_name or paths.target.stem
        draft = paths.draft.name if paths.draft and gen.loaded.draft else None
        self.model_info = {"target": paths.target.name, "draft": draft,
                           "drafter": gen.drafter_name, "k": gen.spec.k,
                           "n_ctx": gen.loaded.target.n_ctx,
                           "parallel": getattr(gen.loaded.target, "n_seq", 1)}
        self.ready.set()


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class EventStream(StreamingResponse):
    """SSE that stops its generator as soon as the client goes, whatever the ASGI version.

    (Starlette listens for the disconnect itself only under ASGI spec < 2.4; here the
    listener always runs, so a dropped stream cancels its generation within one round.)
    """

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:
            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # the client went while we wrote
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="specli serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.specli = state

    @app.get("/health")
    async def health():
        if not state.ready.is_set():
            return _error_response(loading())
        return {"status": "ok", **state.scheduler.load()}

    @app.get("/v1/models")
    async def models(request: Request):
        _authorize(request, state)
        if not state.ready.is_set():
            raise loading()
        return models_body(state.model_id, state.created, state.model_info)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _complete(request, state, parse_chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _complete(request, state, parse_completion)

    @app.post("/infill")
    async def infill(request: Request):  # llama-server's, for editor plugins (fim.py)
        return await _complete(request, state, parse_infill)

    _install_error_handlers(app, state)
    guard.install(app, state.access, state.log)
    return app


def _authorize(request: Request, state: ServerState) -> None:
    """With an API key, every /v1 request needs `Authorization: Bearer KEY`."""
    if state.api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8"), state.api_key.encode("utf-8"))  # constant time
    if not ok:
        raise unauthorized()


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise _too_large()
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY:
            raise _too_large()
        chunks.append(part)
    return b"".join(chunks)


def _too_large() -> ApiError:
    return ApiError(413, f"the request body is over {MAX_BODY // (1024 * 1024)} MB",
                    code="request_too_large")


async def _complete(request: Request, state: ServerState, parse):
    """Validate, queue, then answer as JSON or as an event stream."""
    _authorize(request, state)
    if not state.ready.is_set():
        raise loading()
    job = parse(parse_json(await _read_body(request)), state.defaults)
    if job.infill is not None:  # a newer completion from the same client cancels this one
        client = request.client.host if request.client else ""
        job = dataclasses.replace(job, client=f"{client} {request.headers.get('authorization', '')}")
    ticket = state.scheduler.submit(job, asyncio.get_running_loop())
    try:
        first = await _next(ticket, request)  # Started, or Failed (bad prompt, cancelled)
        if isinstance(first, Failed):
            raise first.error
        ids = Ids(job.kind, state.model_id)
        native = job.infill is not None and job.infill.native
        if job.stream:
            events = (_infill_events(ticket, job, state, first.prompt_tokens) if native
                      else _events(ticket, ids, job))
            return EventStream(events,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        finished = await _collect(ticket, request)
        if native:
            n_ctx = state.model_info.get("n_ctx", 0)
            items = finished.items if isinstance(finished, Choices) else (finished,)
            bodies = [infill_body(f, job, state.model_id, n_ctx, i) for i, f in enumerate(items)]
            return JSONResponse(bodies if isinstance(finished, Choices) else bodies[0])
        return JSONResponse(completion_body(ids, finished))
    except ClientGone:
        return Response(status_code=499)
    except BaseException:
        ticket.cancel()  # whatever went wrong here, the generation must not run on for nobody
        raise


async def _next(ticket, request: Request):
    """The ticket's next item; gives up (and cancels) if the client disconnects meanwhile."""
    while True:
        try:
            return await asyncio.wait_for(ticket.get(), POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                ticket.cancel()
                raise ClientGone from None


async def _collect(ticket, request: Request):
    """The Finished (or, for several completions, the Choices) of a non-streamed request."""
    while True:
        item = await _next(ticket, request)
        if isinstance(item, (Finished, Choices)):
            return item
        if isinstance(item, Failed):
            raise item.error


async def _infill_events(ticket, job, state: ServerState, n_prompt: int):
    """llama-server's native stream: `data: {"content": ..., "stop": false}` per piece, then
    the whole answer with `"stop": true` and empty content; no [DONE]."""
    n_pred = 0
    try:
        while True:
            item = await ticket.get()
            if isinstance(item, Delta):
                if item.text:
                    n_pred += 1
                    yield sse(infill_chunk(item.text, n_pred, n_prompt))
            elif isinstance(item, Finished):
                body = infill_body(item, job, state.model_id, state.model_info.get("n_ctx", 0))
                if "content" in body:
                    body["content"] = ""
                yield sse(body)
                return
            elif isinstance(item, Failed):
                yield sse(item.error.body())
                return
    finally:
        ticket.cancel()


async def _events(ticket, ids: Ids, job):
    """The SSE body: a role chunk (chat), text deltas, the finish chunk, usage, [DONE]."""
    extra = {"usage": None} if job.include_usage else {}
    offset = 0  # characters sent so far: the legacy logprobs' text_offset
    try:
        if ids.kind == "chat":
            yield sse(chunk(ids, first=True, extra=extra))
        while True:
            item = await ticket.get()
            if isinstance(item, Delta):
                yield sse(chunk(ids, item.text, extra=extra, logprobs=item.logprobs,
                                tool_call=item.tool_call, offset=offset))
                offset += len(item.text or "")
            elif isinstance(item, Finished):
                yield sse(chunk(ids, finish_reason=item.finish_reason,
                                extra={**extra, "timings": item.timings}))
                if job.include_usage:
                    yield sse(usage_chunk(ids, item))
                yield DONE
                return
            elif isinstance(item, Failed):
                yield sse(item.error.body())
                return
    finally:
        ticket.cancel()  # a no-op once finished; stops the generation if the client left


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _install_error_handlers(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        state.log(f"internal error on {request.url.path}: {type(e).__name__}: {e}")
        return _error_response(internal())
