"""The tokenizer a GGUF file describes, built from its `tokenizer.ggml.*` metadata.

Two vocabulary kinds, named by `tokenizer.ggml.model`:
- "gpt2": byte-level BPE. Tokens are spelled through GPT-2's byte-to-unicode table and the merges
  are listed in rank order, so they become a `scratchlm.tokenizer.Tokenizer` directly. The
  pre-tokenizer regex is named by `tokenizer.ggml.pre` (llama.cpp's names; table below).
- "llama": SentencePiece BPE with scores and byte fallback (Gemma): `SentencePieceBPE`.
Tokens typed CONTROL (3) or USER_DEFINED (4) are matched whole in the text (`<|im_start|>`), as
llama.cpp and transformers do.
"""

from __future__ import annotations

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer.chat import ChatTokenizer
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN

CONTROL, USER_DEFINED = 3, 4

# SmolLM's tokenizer.json splits every digit apart (pre_tokenizers.Digits(individual_digits=True))
# and then applies GPT-2's regex to what lies between; llama.cpp's "smollm" pre-type runs the same
# two regexes in turn. As one regex: GPT-2's with \p{N} as a one-character alternative, and the
# lookahead of `\s+(?!\S)` also satisfied before a digit (where the first split ended the segment).
SMOLLM_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|\p{N}| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_PATTERNS = {
    "default": GPT2_PATTERN,
    "gpt-2": GPT2_PATTERN,
    "gpt2": GPT2_PATTERN,
    "smollm": SMOLLM_PATTERN,
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "qwen2": QWEN2_PATTERN,
}
# tokens that end a chat turn in the templates of common models: generation stops at them too
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>")


def _field(md: dict, key: str, source: str):
    if key not in md:
        raise ScratchLMError(f"{source}: GGUF metadata has no {key!r} (no tokenizer in this file?)")
    return md[key]


def byte_level_from_gguf(md: dict, source: str):
    """A byte-level BPE `Tokenizer` from GGUF metadata of tokenizer model "gpt2"."""
    from scratchlm.tokenizer.formats import str_to_token
    from scratchlm.tokenizer.tokenizer import Tokenizer

    tokens = _field(md, "tokenizer.ggml.tokens", source)
    merges = _field(md, "tokenizer.ggml.merges", source)
    types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ScratchLMError(f"{source}: {len(tokens)} tokens but {len(types)} token types")
    pre = md.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZER_PATTERNS:
        raise ScratchLMError(
            f"{source}: pre-tokenizer {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZER_PATTERNS)})"
        )
    where = f"{source} tokenizer.ggml.tokens"
    vocab, specials = {}, []
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED):
            specials.append(tok)
            vocab[i] = tok.encode("utf-8")  # specials are written as plain text, not through the byte table
        else:
            vocab[i] = str_to_token(tok, where)
    pairs = []
    for rank, m in enumerate(merges):
        a, sep, b = m.partition(" ")
        if not sep or not a or not b:
            raise ScratchLMError(f"{source}: merge #{rank} {m!r} is not two tokens separated by a space")
        pairs.append((str_to_token(a, where), str_to_token(b, where)))
    return Tokenizer(vocab, pairs, specials, PRE_TOKENIZER_PATTERNS[pre], missing_bytes="drop")


def chat_tokenizer_from_gguf(md: dict, source: str) -> ChatTokenizer:
    """The tokenizer, BOS/EOS rules and chat template of a GGUF file."""
    kind = _field(md, "tokenizer.ggml.model", source)
    if kind == "gpt2":
        tok = byte_level_from_gguf(md, source)
    elif kind == "llama":
        from scratchlm.tokenizer.sentencepiece import SentencePieceBPE

        tok = SentencePieceBPE.from_gguf_fields(md)
    else:
        raise ScratchLMError(f"{source}: tokenizer model {kind!r} is not supported (supported: gpt2, llama)")
    tokens = md["tokenizer.ggml.tokens"]

    def name(key: str) -> str | None:
        i = md.get(f"tokenizer.ggml.{key}")
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise ScratchLMError(f"{source}: tokenizer.ggml.{key}={i} is outside the vocabulary")
        return tokens[int(i)]

    eos = name("eos_token_id")
    stops = [t for t in dict.fromkeys([eos, *END_OF_TURN]) if t is not None and t in tok.special_ids]
    return ChatTokenizer(
        tok,
        bos_token=name("bos_token_id"),
        eos_token=eos,
        pad_token=name("padding_token_id"),
        add_bos=bool(md.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        add_eos=bool(md.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=md.get("tokenizer.chat_template"),
        stop_tokens=stops,
    )
