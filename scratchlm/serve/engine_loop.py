"""The engine in one background thread, requests on asyncio queues.

The engine is not thread-safe, so one thread owns it: it takes adds and aborts from a command queue
between steps, steps while anything is unfinished, and hands each request's deltas to the asyncio
loop that waits on it with `loop.call_soon_threadsafe` (the event loop never blocks on the engine).

    loop = EngineLoop(engine, metrics)
    loop.start()
    handle = await loop.submit(prompt_ids, params)        # raises InvalidArgument like add_request
    async for event in handle:                             # StreamEvent(index, token_ids, text, logprobs, ...)
        ...
    handle.output                                          # the RequestOutput once the stream ends
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from scratchlm.infer.engine import Engine, RequestOutput
from scratchlm.infer.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class StreamEvent:
    """New tokens of one sample, with the raw logprobs (and top alternatives) of those tokens."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class _Done:
    output: RequestOutput


class RequestHandle:
    """The asyncio side of one engine request: iterate for its events; `output` once it is done."""

    def __init__(self, loop: EngineLoop, rid: str, aloop: asyncio.AbstractEventLoop, submitted: float):
        self.loop, self.request_id, self._aloop = loop, rid, aloop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.output: RequestOutput | None = None
        self.submitted = submitted
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    def push(self, item) -> None:  # engine thread
        self._aloop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def next_event(self, timeout: float | None = None) -> StreamEvent | None:
        """The next event, or None once the request is done (then `output` is set)."""
        if self.output is not None:
            return None
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if isinstance(item, _Done):
            self.output = item.output
            return None
        return item

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from the prefix cache (known once the request is done)."""
        return self.output.num_cached_tokens if self.output is not None else 0

    def abort(self) -> None:
        if self.output is None:
            self.loop.abort(self.request_id)


class EngineLoop:
    def __init__(self, engine: Engine, metrics=None):
        self.engine, self.metrics = engine, metrics
        self._commands: queue.Queue = queue.Queue()
        self._handles: dict[str, RequestHandle] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None  # what killed the engine thread, if anything

    # ------------------------------------------------------------------ asyncio side
    @property
    def num_active(self) -> int:
        """Requests submitted and not finished yet (the queue-full check reads it)."""
        return len(self._handles)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        rid = f"cmpl-{next(self._ids)}"
        handle = RequestHandle(self, rid, asyncio.get_running_loop(), time.perf_counter())
        fut: Future = Future()
        self._commands.put(("add", handle, prompt_ids, params, fut))
        await asyncio.wrap_future(fut)  # re-raises the engine's InvalidArgument
        return handle

    def abort(self, rid: str) -> None:
        self._commands.put(("abort", rid))

    # ------------------------------------------------------------------ engine thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scratchlm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                block = not self.engine.has_unfinished()
                self._drain(block)
                if self.engine.has_unfinished():
                    self._step()
                self._update_gauges()
        except BaseException as e:  # a bug in the engine: fail every waiting request rather than hang them
            log.exception("the engine thread stopped")
            self.error = e
            for rid in list(self._handles):
                self._finish(rid, aborted=True)

    def _drain(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(cmd)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, cmd) -> None:
        if cmd[0] == "add":
            _, handle, prompt_ids, params, fut = cmd
            try:
                self.engine.add_request(prompt_ids, params, request_id=handle.request_id)
            except Exception as e:
                fut.set_exception(e)
                return
            self._handles[handle.request_id] = handle
            fut.set_result(handle.request_id)
        elif cmd[0] == "abort":
            rid = cmd[1]
            if rid in self._handles:
                self.engine.abort(rid)
                self._finish(rid, aborted=True)

    def _step(self) -> None:
        deltas = self.engine.step()
        now = time.perf_counter()
        touched: set[str] = set()
        for d in deltas:
            handle = self._handles.get(d.request_id)
            if handle is None:
                continue
            touched.add(d.request_id)
            req = self.engine.requests[d.request_id]
            c = req.samples[d.index].completion
            k = len(d.token_ids)
            event = StreamEvent(d.index, list(d.token_ids), d.text, d.finish_reason)
            if k:
                event.logprobs = list(c.logprobs[-k:])
                if req.params.logprobs is not None:
                    event.top_logprobs = [list(t) for t in c.top_logprobs[-k:]]
                if self.metrics is not None:
                    self.metrics.generation_tokens.inc(k)
                    if handle.first_token_at is None:
                        self.metrics.ttft.observe(now - handle.submitted)
                    else:
                        for _ in range(k):  # tokens of one step (speculation) share its interval
                            self.metrics.itl.observe((now - handle.last_token_at) / k)
                if handle.first_token_at is None:
                    handle.first_token_at = now
                handle.last_token_at = now
            handle.push(event)
        for rid in touched:
            if self.engine.output(rid).finished:
                self._finish(rid)

    def _finish(self, rid: str, aborted: bool = False) -> None:
        handle = self._handles.pop(rid)
        req = self.engine.requests.get(rid)
        if req is not None:
            out = self.engine.release(rid)
            self.engine.requests.pop(rid, None)  # an aborted request is forgotten too
        else:
            out = RequestOutput(rid, [], [])
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(len(out.prompt_token_ids))
        handle.push(_Done(out))

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        e = self.engine
        self.metrics.running.set(len(e.scheduler.running))
        self.metrics.waiting.set(len(e.scheduler.waiting))
        self.metrics.kv_blocks_used.set(e.blocks.num_blocks - e.blocks.num_free_blocks)
        self.metrics.kv_blocks_total.set(e.blocks.num_blocks)
        q = e.blocks.queried_tokens
        self.metrics.prefix_hit_rate.set(e.blocks.hit_tokens / q if q else 0.0)
