"""Settings of `scratchlm tokenizer train` (presets in `configs/tokenizer/*.toml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN


@dataclass
class TokenizerTrainConfig:
    input: str = ""  # corpus text file; empty = the embedded default corpus (train split)
    vocab_size: int = 10_000  # 256 bytes + special tokens + merges
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])  # never split or merged
    pattern: str = GPT2_PATTERN  # pre-tokenization regex (merges never cross its matches)
    num_workers: int = 0  # pre-tokenizing processes; 0 = one per core
    chunk_mb: float = 1.0  # text handed to a worker at once: bounds memory, not the result
    backend: Literal["auto", "c", "python"] = "auto"  # merge loop: compiled core or Python reference
    formats: Literal["both", "native", "gpt2"] = "both"  # files written into the tokenizer directory

    def validate(self) -> None:
        if self.vocab_size < 256 + len(set(self.special_tokens)):
            raise ScratchLMError(
                f"vocab_size {self.vocab_size} must be at least 256 + {len(set(self.special_tokens))} special tokens"
            )
        if self.num_workers < 0:
            raise ScratchLMError(f"num_workers must be >= 0, got {self.num_workers}")
        if not self.chunk_mb * (1 << 20) >= 1024:
            raise ScratchLMError(f"chunk_mb must be at least 0.001, got {self.chunk_mb}")
        check_pattern(self.pattern, "pattern")


# Letters, digits, punctuation, spaces, tabs, newlines, accents, CJK and emoji: every character of it must
# land in some pre-token, or encoding would silently drop text (decode(encode(x)) != x).
_PROBE = "Hello, world! It's 2024... l'été\t naïve  über\n\n  東京 🚀 x=y+1; (a|b) #tag @me\r\n"


def check_pattern(pattern: str, key: str) -> None:
    """A pre-tokenization regex must compile, never match the empty string, and cover every character."""
    import regex

    try:
        compiled = regex.compile(pattern)
    except regex.error as e:
        raise ScratchLMError(f"{key}: the pre-tokenization regex does not compile: {e}") from None
    if compiled.match("") is not None:
        raise ScratchLMError(f"{key}: the pre-tokenization regex matches the empty string")
    if compiled.groups:  # findall would return the groups, not the pre-tokens
        raise ScratchLMError(f"{key}: the pre-tokenization regex has capturing groups: use (?:...) instead")
    pieces = compiled.findall(_PROBE)
    if "".join(pieces) != _PROBE:
        covered = "".join(pieces)
        missing = sorted(set(_PROBE) - set(covered)) or ["(some repeated characters)"]
        raise ScratchLMError(
            f"{key}: the pre-tokenization regex does not cover every character (it drops {''.join(missing)!r} "
            "of a probe text): text between its matches would be lost"
        )
