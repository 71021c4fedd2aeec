"""The OpenAI-compatible HTTP API over the engine (FastAPI), and the chat page at `/`.

    app = create_app(model, chat, ServeConfig(), model_name="smollm2-135m-instruct")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream = server-sent events in
OpenAI's chunk format, ending `data: [DONE]`), GET /health, GET /metrics (Prometheus text), GET / (chat page).
Errors are OpenAI error objects {"error": {"message", "type", "param", "code"}}. Request bodies are parsed
by hand (not pydantic models) so that every bad field gets a 400 that names it; nothing a request says is
used as a path: the only file the server reads is its own chat page, at import time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from scratchlm.errors import InvalidArgument, ScratchLMError
from scratchlm.infer.engine import Engine, EngineConfig
from scratchlm.infer.sampling import MAX_LOGPROBS, MAX_STOP, SamplingParams
from scratchlm.serve.config import ServeConfig
from scratchlm.serve.engine_loop import EngineLoop, RequestHandle
from scratchlm.serve.metrics import Metrics

CHAT_PAGE = resources.files("scratchlm.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
ROLES = ("system", "user", "assistant", "tool", "developer")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type_: str | None = None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            413: "invalid_request_error",
            429: "rate_limit_error",
        }.get(status, "server_error")
        self.headers: dict[str, str] = {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------------- field parsing
def _bad(param: str, rule: str, value) -> APIError:
    return APIError(400, f"'{param}' must be {rule}, got {json.dumps(value)[:80]}", param)


def _get(body: dict, name: str, kind: str, default=None, lo=None, hi=None):
    """body[name] checked against a JSON kind ("int", "number", "bool", "str"), or default when absent/null."""
    v = body.get(name)
    if v is None:
        return default
    ok = {
        "int": isinstance(v, int) and not isinstance(v, bool),
        "number": isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
        "bool": isinstance(v, bool),
        "str": isinstance(v, str),
    }[kind]
    if ok and ((lo is not None and v < lo) or (hi is not None and v > hi)):
        ok = False
    if not ok:
        rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
        raise _bad(name, f"{'an integer' if kind == 'int' else 'a ' + kind}{rng}", v)
    return v


class Server:
    """What the endpoints share: the model's tokenizer, the engine loop, the config, the metrics."""

    def __init__(self, model, chat, config: ServeConfig, model_name: str):
        self.chat, self.config, self.model_name = chat, config, model_name
        self.created = int(time.time())
        self.metrics = Metrics()
        self.engine = Engine(
            model,
            chat,
            EngineConfig(
                block_size=config.block_size,
                kv_cache_mb=config.kv_cache_mb,
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                enable_prefix_caching=config.enable_prefix_caching,
            ),
        )
        self.loop = EngineLoop(self.engine, self.metrics)
        self.api_key = config.resolved_api_key()
        self._token_text: dict[int, str] = {}

    # ------------------------------------------------------------------ request checks
    def check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    async def read_json(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise APIError(413, f"the request body is over the server's limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"the request body is over the server's limit of {limit} bytes")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is None:
            return  # OpenAI requires it; being lenient costs nothing with one model
        if not isinstance(name, str):
            raise _bad("model", "a string", name)
        if name != self.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server has {self.model_name!r}", "model",
                           code="model_not_found")  # fmt: skip

    def check_capacity(self) -> None:
        if not self.loop.alive:
            raise APIError(503, f"the engine stopped: {self.loop.error!r}")
        if self.loop.num_active >= self.config.max_queued:
            err = APIError(429, f"the server is full ({self.config.max_queued} requests queued); retry shortly")
            err.headers["Retry-After"] = "1"
            raise err

    def sampling_params(self, body: dict, prompt_len: int, chat: bool) -> SamplingParams:
        cfg = self.config
        room = self.engine.max_model_len - prompt_len
        if room < 1:
            raise APIError(
                400, f"the prompt has {prompt_len} tokens; this model's context is {self.engine.max_model_len}",
                "messages" if chat else "prompt", code="context_length_exceeded",
            )  # fmt: skip
        name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _get(body, name, "int", None, 1, cfg.max_tokens)
        if max_tokens is None:
            max_tokens = min(cfg.default_max_tokens, room)
        elif max_tokens > room:
            raise APIError(
                400,
                f"the prompt ({prompt_len} tokens) plus {name} ({max_tokens}) is over this model's context of "
                f"{self.engine.max_model_len} tokens",
                name,
                code="context_length_exceeded",
            )
        stop = body.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
            raise _bad("stop", f"a non-empty string or a list of at most {MAX_STOP} of them", stop)
        if chat:
            want = _get(body, "logprobs", "bool", False)
            top = _get(body, "top_logprobs", "int", None, 0, MAX_LOGPROBS)
            if top is not None and not want:
                raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
            logprobs = (top or 0) if want else None
        else:
            logprobs = _get(body, "logprobs", "int", None, 0, MAX_LOGPROBS)
        try:
            return SamplingParams(
                n=_get(body, "n", "int", 1, 1, cfg.max_n),
                temperature=_get(body, "temperature", "number", 1.0, 0, 2),
                top_p=_get(body, "top_p", "number", 1.0, 0, 1),
                top_k=_get(body, "top_k", "int", None, -1),
                min_p=_get(body, "min_p", "number", 0.0, 0, 1),
                presence_penalty=_get(body, "presence_penalty", "number", 0.0, -2, 2),
                frequency_penalty=_get(body, "frequency_penalty", "number", 0.0, -2, 2),
                repetition_penalty=_get(body, "repetition_penalty", "number", 1.0, 0),
                seed=_get(body, "seed", "int", None, -(2**63), 2**64 - 1),
                ignore_eos=_get(body, "ignore_eos", "bool", False),
                max_tokens=max_tokens,
                stop=stop,
                logprobs=logprobs,
            )
        except InvalidArgument as e:  # e.g. top_p = 0: the message starts with the field's name
            raise APIError(400, str(e), str(e).split(" ", 1)[0]) from None

    # ------------------------------------------------------------------ prompts
    def chat_prompt(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("messages", "a non-empty list of messages", messages)
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise APIError(400, f"messages[{i}] must be an object with a role in {', '.join(ROLES)}",
                               f"messages[{i}].role")  # fmt: skip
            content = m.get("content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):  # fmt: skip
                    raise APIError(400, f"messages[{i}].content parts must be text parts", f"messages[{i}].content")
                content = "".join(p["text"] for p in content)
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise APIError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
            role = "system" if m["role"] == "developer" else m["role"]
            clean.append({"role": role, "content": content})
        try:
            return self.chat.apply_chat_template(clean, add_generation_prompt=True, tokenize=True)
        except ScratchLMError as e:
            raise APIError(400, f"the conversation cannot be formatted: {e}", "messages") from None

    def completion_prompts(self, body: dict) -> list[list[int]]:
        p = body.get("prompt")
        vocab = self.engine.model.config.vocab_size
        if isinstance(p, str):
            prompts: list = [p]
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            prompts = [p]
        elif isinstance(p, list) and p and len(p) <= self.config.max_n:
            prompts = p
        else:
            raise _bad("prompt", f"a string, a list of token ids, or a list of at most {self.config.max_n} of them", p)
        out = []
        for q in prompts:
            if isinstance(q, str):
                ids = self.chat.encode(q)
            elif isinstance(q, list) and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                             for t in q):  # fmt: skip
                ids = list(q)
            else:
                raise _bad("prompt", f"strings or lists of token ids in [0, {vocab})", q)
            if not ids:
                raise APIError(400, "'prompt' must hold at least one token", "prompt")
            out.append(ids)
        return out

    def token_text(self, t: int) -> str:
        s = self._token_text.get(t)
        if s is None:
            s = self._token_text[t] = self.chat.decode([t])
        return s


def _usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _finish(reason: str | None) -> str | None:
    return None if reason is None else "length" if reason == "length" else "stop"


def create_app(model, chat, config: ServeConfig | None = None, model_name: str = "scratchlm") -> FastAPI:
    config = config or ServeConfig()
    config.validate()
    srv = Server(model, chat, config, config.model_name or model_name)

    @asynccontextmanager
    async def lifespan(app):
        srv.loop.start()
        try:
            yield
        finally:
            srv.loop.stop()

    app = FastAPI(title="scratchlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return APIError(404, f"no such endpoint: {request.method} {request.url.path}").response()

    @app.exception_handler(405)
    async def _bad_method(request: Request, e):
        return APIError(405, f"{request.method} is not allowed on {request.url.path}").response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        return APIError(500, f"internal error: {type(e).__name__}").response()

    @app.middleware("http")
    async def _count(request: Request, call_next):
        response = await call_next(request)
        path = request.url.path
        if path in ("/v1/completions", "/v1/chat/completions", "/v1/models"):
            srv.metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(CHAT_PAGE, headers={"Cache-Control": "no-store"})

    @app.get("/health")
    async def health():
        if not srv.loop.alive:
            return JSONResponse({"status": "error", "error": repr(srv.loop.error)}, status_code=503)
        return {"status": "ok", "model": srv.model_name, "active_requests": srv.loop.num_active}

    @app.get("/metrics")
    async def metrics(request: Request):
        srv.check_auth(request)  # request and token counts are the operator's business; /health stays open
        return Response(srv.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request):
        srv.check_auth(request)
        return {"object": "list", "data": [_model_card(srv)]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str, request: Request):
        srv.check_auth(request)
        if name != srv.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server has {srv.model_name!r}", "model",
                           code="model_not_found")  # fmt: skip
        return _model_card(srv)

    async def begin(request: Request) -> tuple[dict, bool, bool]:
        """What both completion endpoints check first: key, JSON body, model; then (body, stream, usage in stream)."""
        srv.check_auth(request)
        body = await srv.read_json(request)
        srv.check_model(body)
        stream = _get(body, "stream", "bool", False)
        opts = body.get("stream_options")
        return body, stream, isinstance(opts, dict) and opts.get("include_usage") is True

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body, stream, include_usage = await begin(request)
        ids = srv.chat_prompt(body)
        params = srv.sampling_params(body, len(ids), chat=True)
        srv.check_capacity()
        handles = [await _submit(srv, ids, params)]
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if stream:
            return _stream(srv, request, handles, params, rid, "chat.completion.chunk", include_usage)
        return await _collect(srv, request, handles, params, rid, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body, stream, include_usage = await begin(request)
        if body.get("echo"):
            raise APIError(400, "'echo' is not supported", "echo")
        if body.get("suffix"):
            raise APIError(400, "'suffix' is not supported", "suffix")
        prompts = srv.completion_prompts(body)
        params = [srv.sampling_params(body, len(p), chat=False) for p in prompts]
        if len(prompts) * params[0].n > srv.config.max_n:
            raise APIError(400, f"prompts x n must be at most {srv.config.max_n}", "n")
        srv.check_capacity()
        handles = []
        try:
            for p, sp in zip(prompts, params):
                handles.append(await _submit(srv, p, sp))
        except APIError:
            for h in handles:
                h.abort()
            raise
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        if stream:
            return _stream(srv, request, handles, params[0], rid, "text_completion", include_usage)
        return await _collect(srv, request, handles, params[0], rid, chat=False)

    return app


def _model_card(srv: Server) -> dict:
    return {
        "id": srv.model_name,
        "object": "model",
        "created": srv.created,
        "owned_by": "scratchlm",
        "max_model_len": srv.engine.max_model_len,
    }


async def _submit(srv: Server, ids: list[int], params: SamplingParams) -> RequestHandle:
    try:
        return await srv.loop.submit(ids, params)
    except InvalidArgument as e:
        raise APIError(400, str(e), str(e).split(" ", 1)[0]) from None


# ---------------------------------------------------------------------- logprobs in OpenAI's two shapes
def _chat_logprobs(srv: Server, token_ids, logprobs, tops) -> dict:
    def entry(t, lp):
        s = srv.token_text(t)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    content = []
    for i, (t, lp) in enumerate(zip(token_ids, logprobs)):
        e = entry(t, lp)
        e["top_logprobs"] = [entry(a, alp) for a, alp in tops[i]] if i < len(tops) else []
        content.append(e)
    return {"content": content}


def _completion_logprobs(srv: Server, token_ids, logprobs, tops, offset: int) -> dict:
    tokens = [srv.token_text(t) for t in token_ids]
    offsets = []
    for s in tokens:
        offsets.append(offset)
        offset += len(s)
    return {
        "tokens": tokens,
        "token_logprobs": list(logprobs),
        "top_logprobs": [{srv.token_text(a): alp for a, alp in top} for top in tops[: len(tokens)]],
        "text_offset": offsets,
    }


# ---------------------------------------------------------------------- responses
async def _wait_all(srv: Server, request: Request, handles: list[RequestHandle]):
    """Yield (handle position, event) as events arrive from any of the handles; abort all on timeout."""
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(k: int, h: RequestHandle):
        while (ev := await h.next_event()) is not None:
            await merged.put((k, ev))
        await merged.put((k, None))

    tasks = [asyncio.create_task(pump(k, h)) for k, h in enumerate(handles)]
    deadline = time.monotonic() + srv.config.request_timeout_s
    try:
        left = len(handles)
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise APIError(504, f"the request ran over the server's limit of {srv.config.request_timeout_s:g} s",
                               type_="timeout_error")  # fmt: skip
            try:
                k, ev = await asyncio.wait_for(merged.get(), min(remaining, 1.0))
            except TimeoutError:
                if await request.is_disconnected():
                    raise asyncio.CancelledError from None
                continue
            if ev is None:
                left -= 1
            else:
                yield k, ev
    finally:
        for h in handles:
            h.abort()
        for t in tasks:
            t.cancel()


async def _collect(srv, request, handles, params, rid, chat: bool) -> JSONResponse:
    async for _ in _wait_all(srv, request, handles):
        pass
    choices, prompt_tokens, completion_tokens, cached = [], 0, 0, 0
    for k, h in enumerate(handles):
        out = h.output
        prompt_tokens += len(out.prompt_token_ids)
        cached += h.cached_tokens
        for c in out.outputs:
            completion_tokens += len(c.token_ids)
            index = k * params.n + c.index
            lp = None
            if params.logprobs is not None:
                lp = (_chat_logprobs if chat else _completion_logprobs)(
                    srv, c.token_ids, c.logprobs, c.top_logprobs, *(() if chat else (0,))
                )
            reason = _finish(c.finish_reason)
            if chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": c.text},
                                "logprobs": lp, "finish_reason": reason})  # fmt: skip
            else:
                choices.append({"index": index, "text": c.text, "logprobs": lp, "finish_reason": reason})
    choices.sort(key=lambda c: c["index"])
    return JSONResponse(
        {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": srv.model_name,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens, cached),
            "system_fingerprint": None,
        }
    )


def _stream(srv, request, handles, params, rid, obj: str, include_usage: bool) -> StreamingResponse:
    chat = obj == "chat.completion.chunk"
    created = int(time.time())

    def chunk(choices, usage=None) -> str:
        d = {"id": rid, "object": obj, "created": created, "model": srv.model_name, "choices": choices}
        if include_usage:
            d["usage"] = usage
        return f"data: {json.dumps(d)}\n\n"

    async def events():
        offsets: dict[int, int] = {}
        if chat:
            for k in range(len(handles)):
                for i in range(params.n):
                    yield chunk([{"index": k * params.n + i, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}])  # fmt: skip
        try:
            async for k, ev in _wait_all(srv, request, handles):
                index = k * params.n + ev.index
                if not ev.text and not ev.finish_reason and params.logprobs is None:
                    continue  # a token still inside a UTF-8 character or a possible stop string
                lp = None
                if params.logprobs is not None:
                    if chat:
                        lp = _chat_logprobs(srv, ev.token_ids, ev.logprobs, ev.top_logprobs)
                    else:
                        lp = _completion_logprobs(srv, ev.token_ids, ev.logprobs, ev.top_logprobs,
                                                  offsets.get(index, 0))  # fmt: skip
                offsets[index] = offsets.get(index, 0) + len(ev.text)
                reason = _finish(ev.finish_reason)
                if chat:
                    choice = {"index": index, "delta": {"content": ev.text} if ev.text else {}, "logprobs": lp,
                              "finish_reason": reason}  # fmt: skip
                else:
                    choice = {"index": index, "text": ev.text, "logprobs": lp, "finish_reason": reason}
                yield chunk([choice])
        except APIError as e:  # the time limit: an error event, then the end of the stream
            yield f"data: {json.dumps(e.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        if include_usage:
            prompt_tokens = sum(len(h.output.prompt_token_ids) for h in handles)
            completion_tokens = sum(len(c.token_ids) for h in handles for c in h.output.outputs)
            cached = sum(h.cached_tokens for h in handles)
            yield chunk([], _usage(prompt_tokens, completion_tokens, cached))
        yield "data: [DONE]\n\n"

    async def guarded():
        try:
            async for s in events():
                yield s
        finally:  # the client went away (the generator is closed or cancelled): free the engine's blocks
            for h in handles:
                h.abort()

    return StreamingResponse(
        guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
