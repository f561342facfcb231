"""Scheduling: a bounded queue of generation jobs and one worker thread that decodes them.

Two schedulers with the same interface (``submit``, ``withdraw``, ``cancel_all``, ``waiting``,
``running``):

- :class:`ContinuousScheduler` (the default): one running batch on the step-wise
  :class:`~dpad.engine.Engine`. A validated request joins at the next step and leaves the moment
  it is final (EOS, a stop string, ``max_tokens``, cancelled); rows with any settings, prompt and
  gen lengths share forwards. Admission is first come, first served up to ``max_batch_size`` rows
  (the oldest waiting request is admitted first and no later one overtakes it). Each step then
  chooses its rows: *heavy* rows (tokens fed per token committed at least ``HEAVY`` times the
  cheapest row's, e.g. one token per step over a whole canvas next to threshold rows) feed at most
  ``HEAVY_SHARE`` tokens per light-row token while light rows run, so a slow request cannot make
  every fast row's step as slow as its own (and runs every step when alone); and the step feeds at
  most ``max_batch_tokens`` tokens: the cheapest steps go first, a row that has waited ``PATIENCE``
  steps before them all (the first row always runs, so no row starves).
- :class:`ClosedScheduler` (``--scheduler closed``): the earlier closed batches. The worker takes
  the oldest waiting job, waits up to ``batch_wait_ms`` for more jobs with the same
  :class:`DecodeConfig` apart from the seed, and decodes up to ``max_batch_size`` of them with
  :func:`dpad.engine.decode_batch`; a job waits for the running batch to end.

Each job follows its row through the engine's per-block callback: the response text is updated
block by block (a :class:`TextTracker`), deltas are pushed to the job's event sink as soon as a block
is committed, and the row leaves as soon as its response is final or its client went away
(:meth:`Job.cancel`, checked before every forward).

Failures are per row: an error in one row's callback fails that row only; if a forward itself
fails, the rows it held are decoded again one by one, so only a row that fails alone gets an error
(500 ``server_error``) and the others complete with the text they get alone.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import DecodeConfig
from ..engine import BlockEvent, Engine, Finished, decode_batch
from ..errors import ConfigError
from .metrics import Metrics

log = logging.getLogger("dpad.serve")


class QueueFull(Exception):
    """The scheduler's queue holds ``max_queue`` waiting jobs."""


class ShuttingDown(QueueFull):
    """The scheduler takes no new jobs: the server is shutting down."""


SHUTTING_DOWN = {"status": 503, "message": "the server is shutting down; retry on another instance or later",
                 "param": None, "code": "server_shutting_down", "type": "server_error"}


def internal_error(e: BaseException, what: str) -> dict:
    """The error event for a genuine server bug: logged once in one line (the full traceback at DEBUG
    level), reported to the client without internals."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    log.error("%s: %s: %s%s", what, type(e).__name__, str(e)[:300], where)
    log.debug("traceback", exc_info=e)
    return {"status": 500, "message": f"internal error while decoding this request ({type(e).__name__}); "
                                      "the server log has the details", "param": None, "code": None,
            "type": "server_error"}


class TextTracker:
    """The response text of one row as its blocks are committed.

    The response is the committed ids up to the first EOS, at most ``max_tokens`` ids, cut before
    the first stop string. Text that could still change (a possible beginning of a stop string, an
    incomplete UTF-8 character) is held back until the next block.
    """

    def __init__(self, detok: Callable[[list[int]], str], eos_id: int, max_tokens: int,
                 stop: list[str]) -> None:
        self.detok, self.eos_id, self.max_tokens, self.stop = detok, eos_id, max_tokens, stop
        self.emitted = ""
        self.text = ""
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def update(self, generated: list[int], last: bool) -> str:
        """Feed all committed ids so far; returns the new text to deliver (maybe empty)."""
        ids = generated[: self.max_tokens]
        eos = self.eos_id in ids
        if eos:
            ids = ids[: ids.index(self.eos_id)]
        text = self.detok(ids)
        reason = None
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif eos:
            reason = "stop"
        elif last or len(generated) >= self.max_tokens:
            reason = "length"
        safe = text
        if reason is None:
            hold = 0
            for s in self.stop:  # the longest tail of the text that begins a stop string
                for k in range(min(len(s) - 1, len(text)), hold, -1):
                    if text.endswith(s[:k]):
                        hold = k
                        break
            safe = text[: len(text) - hold]
            while safe.endswith("\ufffd"):
                safe = safe[:-1]
        if not safe.startswith(self.emitted):  # a detokenizer that rewrote earlier text: keep what was sent
            log.warning("detokenized text is not an extension of the text already streamed")
            safe = self.emitted + safe[len(self.emitted):]
        delta = safe[len(self.emitted):]
        self.emitted = safe
        self.text = safe
        self.completion_tokens = len(ids)
        self.finish_reason = reason
        return delta


@dataclass(eq=False)
class Job:
    """One request's generation: a prompt, its config and where its events go.

    ``sink(kind, payload)`` is called from the worker thread with ``("delta", text)``,
    ``("finish", info)`` (info: finish_reason, completion_tokens, nfe, batch_size...) or
    ``("error", {"status", "message", "param", "code", "type"})``; it must be thread-safe and must not
    block.
    """

    ids: list[int]
    cfg: DecodeConfig
    tracker: TextTracker
    sink: Callable[[str, Any], None]
    arrived: float = field(default_factory=time.monotonic)
    key: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    batch_size: int = 0
    first_chunk_at: float | None = None

    def __post_init__(self) -> None:
        # an empty prompt (unconditional generation) cannot share a batch with prompted rows
        self.key = batch_key(self.cfg) + ("|unconditional" if not self.ids else "")

    def cancel(self) -> None:
        """The client went away: the row leaves before its next forward and gets nothing more."""
        self.cancelled.set()

    def fail(self, payload: dict) -> None:
        """Deliver an error (once) and take the row out of its batch."""
        if not self.finished:
            self.finished = True
            self.sink("error", payload)
        self.cancelled.set()

    def on_block(self, ev: BlockEvent) -> bool:
        """Worker side: returns True when the row can leave the batch. An exception here fails this
        row only."""
        try:
            return self._on_block(ev)
        except Exception as e:  # noqa: BLE001 - one row's failure never touches the others
            self.fail(internal_error(e, "a row failed after a block"))
            return True

    def _on_block(self, ev: BlockEvent) -> bool:
        if self.cancelled.is_set():
            return True
        if self.finished:
            return True
        delta = self.tracker.update(ev.generated, ev.last)
        if delta:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.monotonic()
            self.sink("delta", delta)
        if self.tracker.finish_reason is not None:
            self.finish(ev.nfe)
            return True
        return False

    def finish(self, nfe: int) -> None:
        self.finished = True
        t = self.tracker
        self.sink("finish", {"finish_reason": t.finish_reason or "length", "text": t.text,
                             "completion_tokens": t.completion_tokens, "prompt_tokens": len(self.ids),
                             "nfe": nfe, "batch_size": self.batch_size, "gen_length": self.cfg.gen_length,
                             "method": self.cfg.method_name()})


def batch_key(cfg: DecodeConfig) -> str:
    """Jobs whose configs agree on everything but the seed can share a batch."""
    d = cfg.to_dict()
    d.pop("seed", None)
    return json.dumps(d, sort_keys=True, default=str)


class _Queue:
    """The bounded queue and the worker thread; subclasses say how the worker decodes."""

    kind = "base"

    def __init__(self, lm, *, max_batch_size: int = 8, max_queue: int = 64, metrics: Metrics | None = None) -> None:  # noqa: ANN001
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.lm = lm
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.metrics = metrics or Metrics()
        self.queue: collections.deque[Job] = collections.deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> int:
        return len(self.current)

    @property
    def current(self) -> list[Job]:
        raise NotImplementedError

    # ------------------------------------------------------------------ client side
    def start(self) -> None:
        if self.thread is None:
            self.stopping = False
            self.thread = threading.Thread(target=self._work, name="dpad-scheduler", daemon=True)
            self.thread.start()

    def cancel_all(self) -> int:
        """Fail every waiting and running job with 503 ``server_shutting_down`` (running rows leave
        before their next forward); new jobs are refused. Returns the jobs cancelled."""
        with self.cv:
            self.stopping = True
            jobs = [j for j in list(self.queue) + self.current if not j.finished]
            for job in jobs:
                job.fail(dict(SHUTTING_DOWN))
            self.queue.clear()
            self.cv.notify_all()
        if jobs:
            log.warning("shutdown: cancelled %d unfinished request(s)", len(jobs))
        return len(jobs)

    def stop(self, timeout: float = 10.0) -> None:
        self.cancel_all()
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    def submit(self, job: Job) -> None:
        with self.cv:
            if self.stopping:
                raise ShuttingDown(SHUTTING_DOWN["message"])
            if len(self.queue) >= self.max_queue:
                self.metrics.rejected.inc()
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting, "
                                f"{self.running} decoding); retry later")
            self.queue.append(job)
            self.cv.notify_all()

    def withdraw(self, job: Job) -> bool:
        """Remove a job that is still waiting; False if it already runs (or ran)."""
        with self.cv:
            try:
                self.queue.remove(job)
            except ValueError:
                return False
            return True

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def _work(self) -> None:
        raise NotImplementedError

    def _decode_alone(self, jobs: list[Job], e: BaseException) -> None:
        """After a failed forward: decode each unfinished job alone, so that only a row that fails on
        its own gets the error (the others' text is what they get alone; text already streamed is
        not sent twice)."""
        if len(jobs) == 1:
            jobs[0].fail(internal_error(e, "a request failed"))
            return
        log.warning("a forward of %d rows failed (%s: %s); decoding its rows one by one", len(jobs),
                    type(e).__name__, str(e)[:200])
        for j in jobs:
            if j.finished or j.cancelled.is_set():
                continue
            try:
                self._run_alone(j)
            except Exception as e1:  # noqa: BLE001 - this row only
                j.fail(internal_error(e1, "a request failed"))

    def _run_alone(self, j: Job) -> None:
        lm = self.lm
        out = decode_batch(lm.model, [j.ids], j.cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id,
                           eot_id=getattr(lm, "eot_token_id", None), on_block=j.on_block,
                           is_cancelled=lambda _: j.cancelled.is_set())[0]
        self.metrics.batch_forwards.inc(out.batch_forwards)
        if not j.finished and not j.cancelled.is_set():  # not reached: the last block finishes a row
            j.tracker.update(out.generated, True)
            j.finish(out.nfe)


PATIENCE = 2
"""Steps a row waits out under the step budget before it goes ahead of cheaper rows."""

HEAVY = 8.0
"""A row is heavy when its price (tokens fed per token committed) is at least this many times the
cheapest running row's: e.g. a one-token-per-step row over a whole canvas next to threshold rows."""

HEAVY_SHARE = 0.5
"""Heavy rows feed at most about this many tokens per token the light rows feed, while light rows run."""


class ContinuousScheduler(_Queue):
    """Continuous batching on one :class:`~dpad.engine.Engine` (see the module docstring)."""

    kind = "continuous"

    def __init__(self, lm, *, max_batch_size: int = 8, max_queue: int = 64,  # noqa: ANN001
                 max_batch_tokens: int | None = None, metrics: Metrics | None = None) -> None:
        super().__init__(lm, max_batch_size=max_batch_size, max_queue=max_queue, metrics=metrics)
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be >= 1")
        self.max_batch_tokens = max_batch_tokens
        self.engine = self._new_engine()
        self.rows: dict[Job, Any] = {}  # running jobs -> their engine requests
        self.waited: dict[Any, int] = {}  # engine request -> steps it waited out (the step budget)
        self.heavy_waited: dict[Any, int] = {}  # heavy request -> steps it waited for its share
        self.credit = 0.0  # tokens heavy rows may still feed (see _share)
        self.admission_gate: Callable[[], bool] | None = None
        """Tests: when set, an idle worker admits nothing until it returns True (checked under the lock)."""

    def _new_engine(self) -> Engine:
        lm = self.lm
        return Engine(lm.model, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id,
                      eot_id=getattr(lm, "eot_token_id", None))

    @property
    def current(self) -> list[Job]:
        return list(self.rows)

    def _admit(self) -> list[Job] | None:
        """The waiting jobs that join now, oldest first (blocks while nothing runs or waits)."""
        with self.cv:
            while not self.rows and not self.stopping and (
                    not self.queue or (self.admission_gate is not None and not self.admission_gate())):
                self.cv.wait(1.0 if self.admission_gate is not None else None)
            if self.stopping:
                return None
            taken: list[Job] = []
            while self.queue and len(self.rows) + len(taken) < self.max_batch_size:
                j = self.queue.popleft()
                if not j.cancelled.is_set():
                    taken.append(j)
            return taken

    def _choose(self) -> set | None:
        """The rows that take this step (None: every row): heavy rows take their share
        (:meth:`_share`), then the step budget (:meth:`_budget`)."""
        eng = self.engine
        if len(eng.running) < 2:
            return None
        costs = {r: eng.cost(r) for r in eng.running}
        chosen = self._share(costs)
        return self._budget(chosen, costs)

    def _share(self, costs: dict) -> list:
        """Light rows all run; heavy rows (a price at least ``HEAVY`` times the cheapest row's, see
        :meth:`Engine.price`) run while the credit lasts, the longest-waiting first. Each step the
        light rows run adds ``HEAVY_SHARE`` times their tokens to the credit (at most one heavy step's
        worth is kept), so heavy rows feed at most about ``HEAVY_SHARE`` tokens per light token while
        light rows run, and every token they like when none does."""
        eng = self.engine
        price = {r: eng.price(r) for r in costs}
        lo = min(price.values())
        heavy = [r for r in costs if price[r] >= HEAVY * lo]
        if not heavy:
            self.credit = 0.0
            self.heavy_waited.clear()
            return list(costs)
        light = [r for r in costs if price[r] < HEAVY * lo]
        self.credit = min(self.credit + HEAVY_SHARE * sum(costs[r] for r in light), max(costs[r] for r in heavy))
        chosen = list(light)
        for r in sorted(heavy, key=lambda r: -self.heavy_waited.get(r, 0)):
            if costs[r] <= self.credit:
                chosen.append(r)
                self.credit -= costs[r]
                self.heavy_waited[r] = 0
            else:
                self.heavy_waited[r] = self.heavy_waited.get(r, 0) + 1
        return chosen

    def _budget(self, rows: list, costs: dict) -> set | None:
        """Of ``rows``, those within ``max_batch_tokens``: the longest-waiting first, then the
        cheapest (None: every running row)."""
        eng = self.engine
        if self.max_batch_tokens is None or sum(costs[r] for r in rows) <= self.max_batch_tokens:
            return None if len(rows) == len(eng.running) else set(rows)
        chosen, used = set(), 0
        # the cheapest steps first, a row that waited PATIENCE steps before them all (so none starves)
        for r in sorted(rows, key=lambda r: (-(self.waited.get(r, 0) >= PATIENCE), -self.waited.get(r, 0),
                                             costs[r])):
            if chosen and used + costs[r] > self.max_batch_tokens:
                continue
            chosen.add(r)
            used += costs[r]
        for r in rows:
            self.waited[r] = 0 if r in chosen else self.waited.get(r, 0) + 1
        return chosen

    def _work(self) -> None:
        while True:
            new = self._admit()
            if new is None:
                self._abort_all()
                return
            try:
                self._run_step(new)
            except Exception as e:  # noqa: BLE001 - a scheduler bug: fail the rows it held, keep serving
                p = internal_error(e, "the scheduler failed")
                for j in list(self.rows) + new:
                    j.fail(dict(p))
                self._abort_all()

    def _run_step(self, new: list[Job]) -> None:
        """Admit ``new``, then one engine step."""
        now = time.monotonic()
        for j in new:
            self.metrics.queue_wait.observe(now - j.arrived)
            try:
                req = self.engine.add(j.ids, j.cfg, on_block=j.on_block, is_cancelled=j.cancelled.is_set, tag=j)
            except ConfigError as e:  # validated before queueing; kept as a guard
                j.fail({"status": 400, "message": str(e), "param": getattr(e, "field", None), "code": None,
                        "type": "invalid_request_error"})
                continue
            with self.cv:
                self.rows[j] = req
        if self.engine.running:
            self._step()

    def _step(self) -> None:
        eng, m = self.engine, self.metrics
        n = len(eng.running)
        for j in self.rows:
            j.batch_size = max(j.batch_size, n)
        f0 = eng.forwards
        try:
            events = eng.step(self._choose())
        except Exception as e:  # noqa: BLE001 - a forward failed: isolate the rows it held
            jobs = list(self.rows)
            self._reset_engine()
            with self.cv:
                self.rows.clear()
            self._decode_alone(jobs, e)
            return
        m.batch_forwards.inc(eng.forwards - f0)
        for rows, tokens in eng.runner.last_forwards:
            m.rows_per_forward.observe(rows)
            m.tokens_per_forward.observe(tokens)
        for ev in events:
            if not isinstance(ev, Finished):
                continue
            j = ev.row
            with self.cv:
                req = self.rows.pop(j, None)
            self.waited.pop(req, None)
            self.heavy_waited.pop(req, None)
            if not j.finished and not j.cancelled.is_set():  # not reached: the last block finishes a row
                try:
                    j.tracker.update(ev.output.generated, True)
                    j.finish(ev.output.nfe)
                except Exception as e:  # noqa: BLE001 - this row only
                    j.fail(internal_error(e, "a row failed at its end"))

    def _abort_all(self) -> None:
        for req in list(self.rows.values()):
            self.engine.abort(req)
        with self.cv:
            self.rows.clear()
        self._reset_engine()

    def _reset_engine(self) -> None:
        self.engine = self._new_engine()
        self.waited.clear()
        self.heavy_waited.clear()
        self.credit = 0.0


class ClosedScheduler(_Queue):
    """Closed batches of jobs with equal configs (see the module docstring)."""

    kind = "closed"

    def __init__(self, lm, *, max_batch_size: int = 8, max_queue: int = 64, batch_wait_ms: float = 10.0,  # noqa: ANN001
                 metrics: Metrics | None = None) -> None:
        super().__init__(lm, max_batch_size=max_batch_size, max_queue=max_queue, metrics=metrics)
        self.batch_wait = max(0.0, batch_wait_ms) / 1000.0
        self.batch: list[Job] = []

    @property
    def current(self) -> list[Job]:
        return list(self.batch)

    # ------------------------------------------------------------------ worker side
    def _take_batch(self) -> list[Job] | None:
        """The next batch: a full group of compatible jobs as soon as there is one, else the oldest
        job's group once that job has waited ``batch_wait``."""
        with self.cv:
            while True:
                while not self.queue and not self.stopping:
                    self.cv.wait()
                if self.stopping:
                    return None
                groups: dict[str, list[Job]] = {}
                for j in self.queue:
                    groups.setdefault(j.key, []).append(j)
                first = self.queue[0]
                full = next((g for g in groups.values() if len(g) >= self.max_batch_size), None)
                wait = first.arrived + self.batch_wait - time.monotonic()
                if full is not None or wait <= 0:
                    batch = (full or groups[first.key])[: self.max_batch_size]
                    for j in batch:
                        self.queue.remove(j)
                    self.batch = batch
                    return batch
                self.cv.wait(wait)  # more compatible jobs may arrive

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancelled.is_set()]
            try:
                if batch:
                    self._run_isolated(batch)
            finally:
                with self.cv:
                    self.batch = []

    def _run_isolated(self, batch: list[Job]) -> None:
        """Decode a batch; if the decode fails, decode its unfinished rows one by one so that only a
        row that fails on its own gets the error."""
        try:
            self._run(batch)
        except Exception as e:  # noqa: BLE001
            self._decode_alone(batch, e)

    def _run(self, batch: list[Job]) -> None:
        lm = self.lm
        for j in batch:
            j.batch_size = len(batch)
        m = self.metrics
        m.batches.inc()
        m.batch_size.observe(len(batch))

        def on_block(ev: BlockEvent) -> bool:
            return batch[ev.row].on_block(ev)

        outs = decode_batch(lm.model, [j.ids for j in batch], batch[0].cfg, mask_id=lm.mask_token_id,
                            eos_id=lm.eos_token_id, eot_id=getattr(lm, "eot_token_id", None),
                            seeds=[j.cfg.seed for j in batch], on_block=on_block,
                            is_cancelled=lambda r: batch[r].cancelled.is_set())
        m.batch_forwards.inc(outs[0].batch_forwards if outs else 0)
        for j, out in zip(batch, outs, strict=True):
            if not j.finished and not j.cancelled.is_set():  # not reached: the last block finishes a row
                j.tracker.update(out.generated, True)
                j.finish(out.nfe)


Scheduler = ContinuousScheduler
SCHEDULERS: dict[str, type[_Queue]] = {"continuous": ContinuousScheduler, "closed": ClosedScheduler}
