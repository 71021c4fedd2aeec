"""SmolLM2-135M-Instruct behind the server: a greedy chat completion equals the engine's offline greedy output
for the same messages (skipped unless the model was pulled: `scratchlm model pull smollm2-135m-instruct`)."""

from __future__ import annotations

import pytest
from conftest import start_server

from scratchlm.model import pretrained
from scratchlm.model.model_dir import is_model_dir
from scratchlm.serve.config import ServeConfig

openai = pytest.importorskip("openai")
NAME = "smollm2-135m-instruct"
pytestmark = pytest.mark.skipif(
    not is_model_dir(pretrained.model_path(NAME)), reason=f"{NAME} is not pulled (scratchlm model pull {NAME})"
)


def test_greedy_chat_on_smollm2_equals_the_engine():
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams
    from scratchlm.model.model_dir import load_model_dir

    model, chat = load_model_dir(pretrained.model_path(NAME))
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    ids = chat.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ref = LLM(model, chat, kv_cache_mb=64).generate([ids], SamplingParams(temperature=0, max_tokens=24))[0]
    s = start_server(ServeConfig(kv_cache_mb=64), (model, chat), name=NAME)
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=24, temperature=0)
        assert r.choices[0].message.content == ref.outputs[0].text
        assert "Paris" in r.choices[0].message.content
        assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(ref.outputs[0].token_ids)
        s.wait_idle()
    finally:
        s.stop()
