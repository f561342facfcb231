"""Continuous batching in ``dpad serve``: requests join the running batch at the next step and leave
when they are final; rows with other settings and lengths share forwards; the token budget admits
first come, first served; the ``method`` request field. Deterministic: what is checked is the order
of engine steps, never wall-clock time."""

from __future__ import annotations

import threading

import pytest
from conftest import BatchGate

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import dpad  # noqa: E402
from dpad.config import DecodeConfig  # noqa: E402
from dpad.models import LoadedModel  # noqa: E402
from dpad.serve import ServerThread, create_app  # noqa: E402
from dpad.serve import scheduler as scheduler_mod  # noqa: E402
from dpad.synthetic import arith  # noqa: E402

MODEL = "dpad-embedded"
FAST = DecodeConfig(gen_length=64, block_length=16, threshold=0.9, cache="prefix", suffix="gaussian", window=64,
                    sigma=4.0, scale=2.0, early_termination=True)
QS = [p.question for p in arith.generate("test", 4, 0)]


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return dpad.load()


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] == name)


def post_together(url: str, bodies: list[dict]) -> list:
    """POST every completion body at once (a thread each); their JSON replies in order."""
    out: list = [None] * len(bodies)
    ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, httpx.post(
        url + "/v1/completions", json=bodies[i], timeout=120).json())) for i in range(len(bodies))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return out


def wait_for(cond, what: str) -> None:  # noqa: ANN001
    """Poll ``cond``; the bound is a safety net only (a hung server fails the test instead of hanging it)."""
    import time

    t_end = time.monotonic() + 120
    while not cond():
        assert time.monotonic() < t_end, f"never happened: {what}"
        time.sleep(0.01)


def test_a_request_arriving_mid_batch_finishes_first(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long one-token-per-step request runs; a short fast request with other settings and another
    length arrives after it has taken steps, shares its forwards, finishes (with the text it gets
    alone) while the long one is still decoding, and the long one completes after it."""
    app = create_app(lm, model_id=MODEL, defaults=FAST, max_batch_size=4)
    sched = app.state.dpad.scheduler
    steps = {"n": 0}
    step = sched._step

    def counting() -> None:
        steps["n"] += 1
        step()

    monkeypatch.setattr(sched, "_step", counting)
    finished: list[int] = []
    finish = scheduler_mod.Job.finish

    def record(self, nfe: int) -> None:  # noqa: ANN001
        finished.append(self.tracker.max_tokens)
        finish(self, nfe)

    monkeypatch.setattr(scheduler_mod.Job, "finish", record)
    long_body = {"model": MODEL, "prompt": QS[0], "max_tokens": 128, "method": "vanilla"}
    short_body = {"model": MODEL, "prompt": QS[1], "max_tokens": 48, "seed": 5}
    with ServerThread(app) as url:
        alone = httpx.post(url + "/v1/completions", json=short_body, timeout=120).json()
        finished.clear()
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("long", httpx.post(
            url + "/v1/completions", json=long_body, timeout=300).json()))
        t.start()
        wait_for(lambda: sched.running == 1 and steps["n"] >= 5, "the long request running")
        s0 = steps["n"]
        short = httpx.post(url + "/v1/completions", json=short_body, timeout=120).json()
        assert t.is_alive() and finished == [48]  # the long one is still decoding
        t.join(300)
        m = httpx.get(url + "/metrics").text
    assert finished == [48, 128]
    assert short["choices"][0]["text"] == alone["choices"][0]["text"] != ""
    assert short["dpad"]["batch_size"] == 2 and short["dpad"]["method"] == "parallel+prefix+dpad"
    assert out["long"]["dpad"]["method"] == "vanilla" and out["long"]["dpad"]["nfe"] > short["dpad"]["nfe"]
    assert steps["n"] - s0 < 128  # the short request did not wait for the long one to end
    assert metric(m, "dpad_rows_per_forward_count") > 0 and metric(m, "dpad_queue_wait_seconds_count") >= 3
    assert metric(m, "dpad_tokens_per_forward_sum") > 0


def test_mixed_requests_share_forwards_and_keep_their_text(lm: LoadedModel) -> None:
    """Four requests with four settings and lengths start together (BatchGate), share forwards, and
    each gets the text it gets alone."""
    app = create_app(lm, model_id=MODEL, defaults=FAST, max_batch_size=4)
    gate = BatchGate(app.state.dpad.scheduler)
    bodies = [
        {"model": MODEL, "prompt": QS[0], "max_tokens": 64},
        {"model": MODEL, "prompt": QS[1], "max_tokens": 32, "cache": "dual", "seed": 3},
        {"model": MODEL, "prompt": QS[2], "max_tokens": 48, "method": "parallel+prefix"},
        {"model": MODEL, "prompt": QS[3], "max_tokens": 64, "threshold": None, "steps": 32, "cache": "none"},
    ]
    with ServerThread(app) as url:
        alone = [httpx.post(url + "/v1/completions", json=b, timeout=120).json()["choices"][0]["text"]
                 for b in bodies]
        f0 = metric(httpx.get(url + "/metrics").text, "dpad_batch_forwards_total")
        gate.expect(4)
        out = post_together(url, bodies)
        m = httpx.get(url + "/metrics").text
    assert [o["choices"][0]["text"] for o in out] == alone
    assert all(o["dpad"]["batch_size"] == 4 for o in out)
    used = metric(m, "dpad_batch_forwards_total") - f0
    assert used < sum(o["dpad"]["nfe"] for o in out)  # rows shared forwards


def test_step_budget_takes_turns(lm: LoadedModel) -> None:
    """With a per-step token budget below any row's step, each step runs one row: the rows take turns
    (the longest-waiting first), none starves, and each gets the text it gets alone."""
    app = create_app(lm, model_id=MODEL, defaults=FAST, max_batch_size=8, max_batch_tokens=1)
    sched = app.state.dpad.scheduler
    gate = BatchGate(sched)
    stepped: list[int] = []
    step = sched.engine.step

    def counting(only=None):  # noqa: ANN001, ANN202
        stepped.append(len(sched.engine.running) if only is None else len(only))
        return step(only)

    sched.engine.step = counting
    bodies = [{"model": MODEL, "prompt": QS[i], "max_tokens": 32 * (i + 1), "seed": i} for i in range(3)]
    with ServerThread(app) as url:
        alone = []
        for b in bodies:
            alone.append(httpx.post(url + "/v1/completions", json=b, timeout=120).json()["choices"][0]["text"])
        stepped.clear()
        gate.expect(3)
        out = post_together(url, bodies)
    assert [o["choices"][0]["text"] for o in out] == alone
    assert set(stepped) == {1} and max(o["dpad"]["batch_size"] for o in out) == 3


def test_method_field(lm: LoadedModel) -> None:
    app = create_app(lm, model_id=MODEL, defaults=FAST)
    with ServerThread(app) as url:
        r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": QS[0], "max_tokens": 32,
                                                      "method": "vanilla"}, timeout=120).json()
        assert r["dpad"]["method"] == "vanilla" and r["dpad"]["nfe"] == 32
        bad = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": QS[0], "method": "warp"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "method"
        assert "unknown part" in bad.json()["error"]["message"]
        h = httpx.get(url + "/health").json()
    assert h["scheduler"] == "continuous"


def test_heavy_rows_take_their_share(lm: LoadedModel) -> None:
    """A one-token-per-step row over its whole canvas (heavy: ~30x the tokens per committed token of a
    fast row) next to a stream of fast rows: while fast rows run, it feeds at most HEAVY_SHARE of their
    tokens (plus one step's worth), it never waits longer than its credit needs, it runs every step once
    they are gone, and every row decodes the tokens it decodes alone."""
    from dpad.engine import Engine, Finished

    sched = scheduler_mod.ContinuousScheduler(lm, max_batch_tokens=None)
    eng = sched.engine
    kw = {"mask_id": lm.mask_token_id, "eos_id": lm.eos_token_id}
    heavy_cfg = DecodeConfig(gen_length=64, block_length=16)
    prompts = [lm.tokenizer(p.question)["input_ids"] for p in arith.generate("test", 12, 3)]

    def alone(ids: list[int], cfg: DecodeConfig) -> list[int]:
        e = Engine(lm.model, **kw)
        e.add(ids, cfg)
        return next(ev.output.generated for ev in e.run() if isinstance(ev, Finished))

    heavy = eng.add(prompts[0], heavy_cfg, tag="heavy")
    fed = {"heavy_with_light": 0, "light": 0}
    waits, wait, alone_steps, outs, k, top = [], 0, [], {}, 1, 0
    while eng.running:
        if k < len(prompts) and len(eng.running) < 4:
            eng.add(prompts[k], FAST, tag=k)
            k += 1
        costs = {r: eng.cost(r) for r in eng.running}
        chosen = sched._choose()
        runs = set(eng.running) if chosen is None else chosen
        light = [r for r in runs if r is not heavy]
        if heavy in eng.running:
            if len(eng.running) == 1:
                alone_steps.append(heavy in runs)
            elif heavy in runs:
                fed["heavy_with_light"] += costs[heavy]
                top = max(top, costs[heavy])
                waits.append(wait)
                wait = 0
            else:
                wait += 1
            fed["light"] += sum(costs[r] for r in light)
        for ev in eng.step(chosen):
            if isinstance(ev, Finished):
                outs[ev.row] = ev.output.generated
    assert fed["light"] > 0 and waits and max(waits) >= 1  # the heavy row did wait for light rows
    assert fed["heavy_with_light"] <= scheduler_mod.HEAVY_SHARE * fed["light"] + top  # + the credit's cap
    assert alone_steps and all(alone_steps)
    assert outs["heavy"] == alone(prompts[0], heavy_cfg)
    for i in range(1, k):
        assert outs[i] == alone(prompts[i], FAST), i


def test_device_rng_request(lm: LoadedModel) -> None:
    """A request's ``rng: "device"`` samples in the batched step: the same seed gives the same text
    alone and next to other requests; a setting it cannot batch is a 400 naming the field."""
    app = create_app(lm, model_id=MODEL, defaults=FAST, max_batch_size=4)
    body = {"model": MODEL, "prompt": QS[0], "max_tokens": 48, "temperature": 0.8, "rng": "device", "seed": 5}
    with ServerThread(app) as url:
        alone = httpx.post(url + "/v1/completions", json=body, timeout=120).json()
        bodies = [body, {**body, "prompt": QS[1], "seed": 6}, {"model": MODEL, "prompt": QS[2], "max_tokens": 32}]
        out = post_together(url, bodies)
        bad = httpx.post(url + "/v1/completions", json={**body, "confidence": "random"}, timeout=30)
    assert out[0]["choices"][0]["text"] == alone["choices"][0]["text"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rng"
