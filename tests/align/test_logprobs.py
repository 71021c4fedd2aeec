"""Per-token log-probs, entropies, masks: against torch's cross-entropy / Categorical and hand-made cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.align.logprobs import (
    masked_mean,
    masked_normalize,
    response_log_probs,
    token_entropy,
    token_log_probs,
    tokenize_prompt_and_output,
)
from scratchlm.errors import ScratchLMError


class CharTok:
    """One id per character (ord), no special tokens."""

    pad_id = None
    eos_id = 1

    def encode(self, text):
        return [ord(c) for c in text]


def test_tokenize_prompt_and_output_masks_exactly_the_output():
    out = tokenize_prompt_and_output(["ab", "xyz"], ["cd", "w"], CharTok())
    ids = torch.tensor([[97, 98, 99, 100], [120, 121, 122, 119]])
    assert torch.equal(out["input_ids"], ids[:, :-1])
    assert torch.equal(out["labels"], ids[:, 1:])
    # labels row 0: b c d -> response c d; row 1: y z w -> response w
    assert out["response_mask"].tolist() == [[False, True, True], [False, False, True]]


def test_tokenize_pads_with_eos_and_masks_padding():
    out = tokenize_prompt_and_output(["a", "abcd"], ["b", "e"], CharTok())
    assert out["input_ids"].shape == (2, 4)
    assert out["labels"][0].tolist() == [98, 1, 1, 1]  # padded with eos (no pad id)
    assert out["response_mask"][0].tolist() == [True, False, False, False]


def test_tokenize_bad_input():
    with pytest.raises(ScratchLMError, match="2 prompts but 1 outputs"):
        tokenize_prompt_and_output(["a", "b"], ["c"], CharTok())
    with pytest.raises(ScratchLMError, match="at least 2 tokens"):
        tokenize_prompt_and_output([""], ["a"], CharTok())


def test_token_log_probs_and_entropy_match_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 4
    labels = torch.randint(0, 11, (2, 5), generator=g)
    ref = -F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    torch.testing.assert_close(token_log_probs(logits, labels), ref)
    ent = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(token_entropy(logits), ent)


def test_entropy_is_stable_for_huge_logits():
    logits = torch.tensor([[[1e4, 0.0, 0.0]]])
    assert token_entropy(logits).item() == pytest.approx(0.0, abs=1e-6)
    assert token_entropy(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4), rel=1e-6)


def test_response_log_probs_with_scratchlm_model_and_plain_module():
    from scratchlm.model.config import ModelConfig
    from scratchlm.model.transformer import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=32, context_length=16, d_model=16, n_layers=1, n_heads=2))
    x = torch.randint(0, 32, (2, 6))
    y = torch.randint(0, 32, (2, 6))
    out = response_log_probs(model, x, y, return_token_entropy=True)
    logits = model(x)
    torch.testing.assert_close(out["log_probs"], torch.log_softmax(logits, -1).gather(-1, y[..., None])[..., 0])
    assert out["token_entropy"].shape == (2, 6) and not out["token_entropy"].requires_grad
    out["log_probs"].sum().backward()  # gradients reach the model
    assert model.head.weight.grad is not None or any(p.grad is not None for p in model.parameters())

    class HFLike(torch.nn.Module):  # returns an object with .logits, no `output` argument
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(32, 32)

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.emb(input_ids)})()

    hf = HFLike()
    lp = response_log_probs(hf, x, y)["log_probs"]
    torch.testing.assert_close(lp, torch.log_softmax(hf.emb(x), -1).gather(-1, y[..., None])[..., 0])


def test_masked_mean_and_normalize():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, m).item() == pytest.approx(1.5)
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 0.0]  # an empty row is 0, not NaN
    assert masked_mean(x, m, dim=0).tolist() == [1.0, 2.0, 0.0]
    assert masked_normalize(x, m, 4.0).item() == pytest.approx(0.75)
    assert masked_normalize(x, m, 2.0, dim=1).tolist() == [1.5, 0.0]
    with pytest.raises(ScratchLMError):
        masked_normalize(x, m, 0)
