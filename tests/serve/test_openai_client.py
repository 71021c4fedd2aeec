"""The official `openai` client against the server: completions and chat, streaming and not, n, stop, seed,
logprobs, usage, penalties and the error statuses; greedy answers equal the engine's offline answers."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from conftest import start_server, tiny_model_and_chat

from scratchlm.infer.engine import LLM
from scratchlm.infer.sampling import SamplingParams
from scratchlm.serve.config import ServeConfig

openai = pytest.importorskip("openai")

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def offline():
    model, chat = tiny_model_and_chat()  # the same seed: the same weights as the server's model
    return LLM(model, chat, kv_cache_mb=8, block_size=4), chat


def test_models_lists_the_one_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_greedy_chat_equals_the_engine(client, offline, server):
    llm, chat = offline
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=24, temperature=0)
    ids = chat.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True)
    ref = llm.generate([ids], SamplingParams(temperature=0, max_tokens=24))[0].outputs[0]
    assert r.choices[0].message.content == ref.text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.total_tokens == len(ids) + len(ref.token_ids)
    assert r.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    server.wait_idle()


def test_greedy_completion_and_its_stream_equal_the_engine(client, offline, server):
    llm, chat = offline
    ref = llm.generate(["Once upon"], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    extra = {"ignore_eos": True}
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=20, temperature=0, extra_body=extra)
    assert r.choices[0].text == ref.outputs[0].text and r.choices[0].finish_reason == "length"
    chunks = list(
        client.completions.create(
            model="tiny", prompt="Once upon", max_tokens=20, temperature=0, stream=True, extra_body=extra,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.outputs[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20 and chunks[-1].usage.prompt_tokens == len(ref.prompt_token_ids)
    server.wait_idle()


def test_chat_stream_chunks_add_up_to_the_answer(client):
    kw = dict(model="tiny", messages=MSGS, max_tokens=30, temperature=0.9, seed=5)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    stream = client.chat.completions.create(**kw, stream=True)
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_raw_stream_ends_with_done(server):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert e.startswith("data: ") and json.loads(e[6:])["object"] == "chat.completion.chunk"


def test_seed_reproduces_and_n_gives_distinct_samples(client):
    kw = dict(model="tiny", prompt="abc", max_tokens=16, temperature=1.0, n=3, seed=11, extra_body={"ignore_eos": True})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # the samples of one request use different generators
    assert a.usage.completion_tokens == 48
    other = client.completions.create(**{**kw, "seed": 12})
    assert [c.text for c in other.choices] != [c.text for c in a.choices]


def test_n_streams_every_index(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=8, n=2, seed=1, stream=True))
    assert {c.choices[0].index for c in chunks} == {0, 1}
    finished = [c.choices[0].index for c in chunks if c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1]


def test_stop_string_ends_the_answer_and_is_not_returned(client):
    kw = dict(model="tiny", prompt="hello", max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    free = client.completions.create(**kw).choices[0].text
    stop = next(free[i : i + 2] for i in range(3, len(free) - 1) if "\ufffd" not in free[i : i + 2])
    r = client.completions.create(**kw, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == free[: free.find(stop)]
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True))
    assert streamed == r.choices[0].text


def test_logprobs_chat_and_completion(client):
    r = client.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.top_logprobs[0].logprob >= e.top_logprobs[-1].logprob
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy picks the top token
    c = client.completions.create(model="tiny", prompt="xy", max_tokens=5, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(t) <= 2 for t in lp.top_logprobs) and all(x <= 0 for x in lp.token_logprobs)
    s = list(client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, temperature=0, logprobs=True,
                                            top_logprobs=3, stream=True))  # fmt: skip
    streamed = [e.logprob for ch in s if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert streamed == pytest.approx([e.logprob for e in content])


def test_penalties_change_the_greedy_answer(client):
    kw = dict(model="tiny", prompt="aaaa", max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    plain = client.completions.create(**kw).choices[0].text
    pen = client.completions.create(**kw, presence_penalty=2.0, frequency_penalty=2.0).choices[0].text
    assert pen != plain
    assert len(set(pen)) >= len(set(plain))


def test_cached_prompt_tokens_are_reported(client):
    msgs = [{"role": "system", "content": "x" * 60}, {"role": "user", "content": "the same long prefix"}]
    client.chat.completions.create(model="tiny", messages=msgs, max_tokens=2)
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=2)
    assert r.usage.prompt_tokens_details.cached_tokens >= 60


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": MSGS, "temperature": "hot"}, "temperature"),
        ({"messages": MSGS, "max_tokens": 0}, "max_tokens"),
        ({"messages": MSGS, "n": 100}, "n"),
        ({"messages": MSGS, "top_p": 0}, "top_p"),
        ({"messages": MSGS, "presence_penalty": 3}, "presence_penalty"),
        ({"messages": MSGS, "stop": [""]}, "stop"),
        ({"messages": MSGS, "seed": 1.5}, "seed"),
        ({"messages": MSGS, "top_logprobs": 3}, "top_logprobs"),
        ({"messages": MSGS, "max_tokens": 250}, "max_tokens"),  # prompt + max_tokens over the 256-token context
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 300}]}, "messages"),  # the prompt alone is too long
    ],
)
def test_bad_fields_are_400_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", **body)
    assert e.value.status_code == 400 and e.value.body["param"] == param
    assert param.split("[")[0] in e.value.body["message"] or "context" in e.value.body["message"]


def test_bad_completion_prompts_are_400(client):
    for prompt in ([], [300], [1, "x"], "", {"a": 1}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt=prompt, max_tokens=2)
        assert e.value.body["param"] == "prompt"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=MSGS)
    assert e.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_400(server, raw):
    r = httpx.post(server.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_limits_api_key_and_queue():
    model, chat = tiny_model_and_chat()
    model.register_forward_hook(lambda *_: time.sleep(0.02))  # a slow model: the streams below stay in flight
    cfg = ServeConfig(kv_cache_mb=8, block_size=4, api_key="s3cret", max_body_bytes=2000, max_queued=2)
    s = start_server(cfg, (model, chat))
    try:
        wrong = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "x"}).status_code == 401  # no key at all
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Basic s3cret"}).status_code == 401
        # monitoring: /metrics needs the key too, /health and the chat page (which asks for the key) do not
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200 and httpx.get(s.url + "/").status_code == 200
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.models.list().data[0].id == "tiny"
        r = httpx.post(s.url + "/v1/completions", headers={"Authorization": "Bearer s3cret"},
                       json={"prompt": "x" * 5000, "max_tokens": 2})  # fmt: skip
        assert r.status_code == 413 and r.json()["error"]["message"].startswith("the request body is over")
        # two long streams fill the queue (max_queued=2): the third request gets 429 with Retry-After
        body = {"prompt": "a", "max_tokens": 200, "stream": True, "ignore_eos": True}
        h = {"Authorization": "Bearer s3cret"}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, headers=h, timeout=30) as r1:
            with httpx.stream("POST", s.url + "/v1/completions", json=body, headers=h, timeout=30) as r2:
                lines = r1.iter_lines(), r2.iter_lines()  # kept: a dropped iterator closes its connection
                assert all(next(it).startswith("data: {") for it in lines)
                r3 = httpx.post(s.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, headers=h)
                assert r3.status_code == 429 and r3.headers["retry-after"] == "1"
                with pytest.raises(openai.RateLimitError):
                    ok.completions.create(model="tiny", prompt="a", max_tokens=2)
        s.wait_idle()  # leaving the streams early aborted both requests: no blocks held
        assert ok.completions.create(model="tiny", prompt="a", max_tokens=2).choices[0].text is not None
    finally:
        s.stop()
