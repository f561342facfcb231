"""`dpad serve` end to end: a live uvicorn server on 127.0.0.1 (a free port, background thread) with
the embedded model, driven by the official ``openai`` client and by ``httpx``."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from conftest import BatchGate

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import dpad  # noqa: E402
from dpad.config import DecodeConfig  # noqa: E402
from dpad.models import LoadedModel  # noqa: E402
from dpad.serve import ServerThread, create_app  # noqa: E402
from dpad.synthetic import arith  # noqa: E402

MODEL = "dpad-embedded"
DEFAULTS = DecodeConfig(gen_length=64, block_length=16, threshold=0.9, cache="prefix")
PROBLEMS = arith.generate("test", 6, 0)
Q = PROBLEMS[0].question  # the embedded model solves it: "... #### 525"


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    torch.set_num_threads(1)
    return dpad.load(device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def server(lm: LoadedModel) -> Iterator[str]:
    app = create_app(lm, model_id=MODEL, defaults=DEFAULTS, max_batch_size=4, max_queue=16, batch_wait_ms=5)
    with ServerThread(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t_end, "timed out"
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------- happy paths
def test_models_and_health(server: str, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    h = httpx.get(server + "/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["model"] == MODEL


def test_completion(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt=Q, max_tokens=64)
    c = r.choices[0]
    assert c.text.endswith("#### 525") and c.finish_reason == "stop"
    assert r.object == "text_completion" and r.model == MODEL and r.id.startswith("cmpl-")
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_extra["dpad"]["gen_length"] == 64 and r.model_extra["dpad"]["nfe"] >= 1
    # the same text as the library call



def test_same_text_as_library(lm: LoadedModel, client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt=Q, max_tokens=64)
    assert r.choices[0].text == dpad.generate(lm, Q, DEFAULTS).text


def test_chat(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": Q}], max_tokens=64)
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content.endswith("#### 525")
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "stop"
    # completions apply the chat template to text prompts by default: same ids, same text
    assert msg.content == client.completions.create(model=MODEL, prompt=Q, max_tokens=64).choices[0].text


def test_stream_completion_matches(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, prompt=PROBLEMS[1].question, max_tokens=64, seed=7)
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    texts = [c.choices[0].text for c in chunks]
    assert sum(1 for t in texts if t) >= 2  # one chunk per committed block
    assert "".join(texts) == full
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_stream_chat_matches_with_usage(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, messages=[{"role": "user", "content": PROBLEMS[3].question}], max_tokens=64)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 2
    assert "".join(content) == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_max_tokens_rounds_up_and_trims(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt=Q, max_tokens=10)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10
    assert r.model_extra["dpad"]["gen_length"] == 16  # rounded up to a multiple of block_length
    full = client.completions.create(model=MODEL, prompt=Q, max_tokens=64).choices[0].text
    assert full.startswith(r.choices[0].text)


def test_stop_strings(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt=Q, max_tokens=64).choices[0].text
    r = client.completions.create(model=MODEL, prompt=Q, max_tokens=64, stop=["\n", "zzz"])
    assert r.choices[0].text == full.split("\n")[0] and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in
                       client.completions.create(model=MODEL, prompt=Q, max_tokens=64, stop="\n", stream=True))
    assert streamed == r.choices[0].text


def test_decoding_knobs_as_extra_fields(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt=Q, max_tokens=64, temperature=0,
                                  extra_body={"suffix": "gaussian", "window": 32, "early_termination": True,
                                              "block_length": 32, "cache": "dual"})
    assert r.choices[0].text.endswith("#### 525")
    assert r.model_extra["dpad"]["method"] == "parallel+dual+dpad"
    r = client.completions.create(model=MODEL, prompt=Q, max_tokens=64, extra_body={"preset": "fast-dllm-prefix"})
    assert r.model_extra["dpad"]["method"] == "parallel+prefix" and r.choices[0].text.endswith("#### 525")


def test_closed_scheduler_batches_equal_configs(lm: LoadedModel, client: openai.OpenAI) -> None:
    """The closed scheduler (``scheduler="closed"``): concurrent requests with the same config form one batch (a full one, taken at once) and
    each gets the text it gets alone; a request with another config runs in its own batch. The
    worker starts once all 4 wait (BatchGate): the batches do not depend on thread timing."""
    app = create_app(lm, model_id=MODEL, defaults=DEFAULTS, max_batch_size=3, batch_wait_ms=1500, scheduler="closed")
    gate = BatchGate(app.state.dpad.scheduler)
    qs = [p.question for p in PROBLEMS[:4]]
    extra = [{}, {}, {}, {"threshold": 0.8}]
    alone = [client.completions.create(model=MODEL, prompt=q, max_tokens=64, extra_body=e).choices[0].text
             for q, e in zip(qs, extra, strict=True)]
    with ServerThread(app) as url:
        c2 = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        results: list = [None] * 4

        def call(i: int) -> None:
            results[i] = c2.completions.create(model=MODEL, prompt=qs[i], max_tokens=64, extra_body=extra[i],
                                               seed=1234 + i % 2)

        gate.expect(4)
        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.choices[0].text for r in results] == alone
        assert [r.model_extra["dpad"]["batch_size"] for r in results] == [3, 3, 3, 1]
        m = httpx.get(url + "/metrics").text
        assert metric(m, "dpad_batches_total") == 2 and metric(m, "dpad_batch_size_sum") == 4


# ----------------------------------------------------------------------------------------- errors
def test_unknown_model_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=16)
    assert e.value.status_code == 404
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model" and "gpt-4" in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_negative_max_tokens_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=-5)
    assert e.value.status_code == 400 and e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert e.value.body["param"] == "max_tokens"


def test_context_overflow_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=Q, max_tokens=4090)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "max_tokens"
    assert "4096" in e.value.body["message"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "n": 2}, "n"),
    ({"prompt": "hi", "threshold": 2.0}, "threshold"),
    ({"prompt": "hi", "window": "big"}, "window"),
    ({"prompt": "hi", "suffix": "gaussian"}, "window"),
    ({"prompt": "hi", "cache": "lru"}, "cache"),
    ({"prompt": "hi", "preset": "nope"}, "preset"),
    ({"prompt": "hi", "treshold": 0.9}, "treshold"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "stop": 5}, "stop"),
    ({"prompt": "hi", "logprobs": 3}, "logprobs"),
    ({"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({}, "prompt"),
    ({"prompt": [1, 2, 99999]}, "prompt"),
])
def test_invalid_fields_name_the_param(server: str, body: dict, param: str) -> None:
    r = httpx.post(server + "/v1/completions", json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_bad_chat_messages_400(server: str) -> None:
    for msgs, param in [([], "messages"), ([{"role": "robot", "content": "x"}], "messages[0].role"),
                        ([{"role": "user", "content": 3}], "messages[0].content")]:
        r = httpx.post(server + "/v1/chat/completions", json={"model": MODEL, "messages": msgs})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_malformed_json_400(server: str) -> None:
    r = httpx.post(server + "/v1/completions", content=b'{"model": "dpad-embedded", "prompt": ',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/chat/completions", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "object" in r.json()["error"]["message"]


def test_unknown_route_404(server: str) -> None:
    r = httpx.get(server + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ----------------------------------------------------------------------------------------- queue, disconnects
class SlowModel:
    """The model, 40 ms slower per forward: makes block timing visible to the tests."""

    def __init__(self, model, delay: float = 0.04) -> None:  # noqa: ANN001
        self.model, self.delay = model, delay
        self.args, self.device, self.dtype = model.args, model.device, model.dtype

    def new_cache(self, *a, **kw):  # noqa: ANN002, ANN003, ANN201
        return self.model.new_cache(*a, **kw)

    def __call__(self, *a, **kw):  # noqa: ANN002, ANN003, ANN201
        time.sleep(self.delay)
        return self.model(*a, **kw)


def test_queue_full_429_and_disconnects(lm: LoadedModel) -> None:
    slow = LoadedModel(SlowModel(lm.model), lm.tokenizer, lm.path, lm.config)  # type: ignore[arg-type]
    app = create_app(slow, model_id=MODEL, defaults=DEFAULTS, max_batch_size=1, max_queue=1, batch_wait_ms=0)
    sched = app.state.dpad.scheduler
    gate = threading.Event()
    step = sched._step

    def gated() -> None:  # the running row takes no step until the gate opens
        gate.wait(60)
        step()

    sched._step = gated
    with ServerThread(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        health = lambda: httpx.get(url + "/health").json()  # noqa: E731
        out: dict = {}
        a = threading.Thread(target=lambda: out.setdefault("a", c.completions.create(model=MODEL, prompt=Q, max_tokens=16)))
        a.start()
        wait_until(lambda: health()["running"] == 1)
        # a queued streaming request whose client goes away leaves the queue
        with httpx.stream("POST", url + "/v1/completions", json={"model": MODEL, "prompt": Q, "stream": True}) as r:
            assert r.status_code == 200
            wait_until(lambda: health()["waiting"] == 1)
        wait_until(lambda: health()["waiting"] == 0)
        # the queue (1 slot) is full: 429 with a clear message
        b = threading.Thread(target=lambda: out.setdefault("b", c.completions.create(model=MODEL, prompt=Q, max_tokens=16)))
        b.start()
        wait_until(lambda: health()["waiting"] == 1)
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model=MODEL, prompt=Q, max_tokens=16)
        assert e.value.status_code == 429 and "queue is full" in e.value.body["message"]
        assert e.value.response.headers["retry-after"] == "1"
        gate.set()
        a.join(60)
        b.join(60)
        assert out["a"].choices[0].text == out["b"].choices[0].text != ""

        # a running streaming row whose client leaves after the first block is dropped at a block boundary
        m0 = metric(httpx.get(url + "/metrics").text, "dpad_batch_forwards_total")
        body = {"model": MODEL, "prompt": Q, "stream": True, "max_tokens": 64, "block_length": 4, "threshold": None,
                "cache": "none"}
        with httpx.stream("POST", url + "/v1/completions", json=body) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"]
        wait_until(lambda: health()["running"] == 0)
        m = httpx.get(url + "/metrics").text
        used = metric(m, "dpad_batch_forwards_total") - m0
        print("forwards used by the cancelled stream:", used)
        assert used < 32  # a full run takes ~40 forwards (EOS in block 10); the row left after a few blocks
        assert metric(m, "dpad_cancelled_total") == 2
        assert metric(m, "dpad_requests_total", endpoint="completions", status="429") == 1
        assert metric(m, "dpad_requests_total", endpoint="completions", status="499") == 2


def test_cli_rejects_bad_flags(capsys: pytest.CaptureFixture) -> None:
    from dpad.cli import main

    assert main(["serve", "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
    assert main(["serve", "--threshold", "2"]) == 2
    assert "threshold" in capsys.readouterr().err


def test_metrics(server: str, client: openai.OpenAI) -> None:
    client.completions.create(model=MODEL, prompt=Q, max_tokens=32)
    httpx.post(server + "/v1/completions", json={"model": "nope", "prompt": "x"})
    r = httpx.get(server + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = r.text
    assert "# TYPE dpad_requests_total counter" in m and "# TYPE dpad_request_latency_seconds histogram" in m
    assert metric(m, "dpad_requests_total", endpoint="completions", status="200") >= 1
    assert metric(m, "dpad_requests_total", endpoint="completions", status="404") >= 1
    assert metric(m, "dpad_generated_tokens_total") > 0 and metric(m, "dpad_nfe_total") > 0
    assert metric(m, "dpad_request_latency_seconds_count", endpoint="completions") >= 2
    assert metric(m, "dpad_request_latency_seconds_bucket", endpoint="completions", le="+Inf") >= 2
    assert 'dpad_queue_waiting 0' in m
