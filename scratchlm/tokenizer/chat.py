"""A pretrained model's text interface: its tokenizer, BOS/EOS rules, stop tokens and chat template.

    chat = ChatTokenizer.load("models/smollm2-135m-instruct")
    ids = chat.encode("Once upon a time")                  # BOS first when the model wants one
    prompt = chat.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    ids = chat.encode(prompt, add_special=False)           # the template writes its own BOS
    text = chat.decode(new_ids, skip_special=True)

Chat templates are Jinja, rendered the way the ecosystem (transformers) renders them so a model
sees the text it was trained on: a sandboxed environment (a template from a downloaded file cannot
reach Python objects), `trim_blocks` and `lstrip_blocks`, the loop-controls extension, the special
tokens as variables, and `raise_exception` / `strftime_now` as globals.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.io import read_json, write_json

CHAT_FILE = "chat.json"
CHAT_FORMAT = "scratchlm.chat_tokenizer"
CHAT_VERSION = 1
ROLES = ("system", "user", "assistant", "tool")


class TemplateError(ScratchLMError):
    """A chat template refused the conversation (its `raise_exception`) or failed to render."""


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(f"chat template: {message}")

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not parse: {e}") from None


def check_messages(messages) -> list[dict]:
    """A conversation: a non-empty list of {"role": str, "content": str} dicts."""
    if not isinstance(messages, list | tuple) or not messages:
        raise ScratchLMError("a conversation must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ScratchLMError(f"message {i} must be a dict with string 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ScratchLMError(f"message {i} has role {m['role']!r}; expected one of {', '.join(ROLES)}")
    return [dict(m) for m in messages]


class ChatTokenizer:
    """Wraps a scratchlm tokenizer (byte-level `Tokenizer` or `SentencePieceBPE`) with what a
    pretrained model's metadata says about special tokens and chat formatting."""

    def __init__(
        self,
        tokenizer,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        chat_template: str | None = None,
        stop_tokens: list[str] | None = None,
    ):
        self.tokenizer = tokenizer
        for what, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if tok is not None and tok not in tokenizer.special_ids and _plain_id(tokenizer, tok) is None:
                raise ScratchLMError(f"{what} token {tok!r} is not in the vocabulary")
        if add_bos and bos_token is None:
            raise ScratchLMError("add_bos is set but the model names no BOS token")
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.add_bos, self.add_eos = add_bos, add_eos
        self.chat_template = chat_template or None
        self.stop_tokens = list(stop_tokens if stop_tokens is not None else [eos_token] if eos_token else [])
        for t in self.stop_tokens:
            self.token_id(t)

    # ------------------------------------------------------------------ ids
    def token_id(self, token: str) -> int:
        """The id of a special (or single plain) token."""
        if token in self.tokenizer.special_ids:
            return self.tokenizer.special_ids[token]
        i = _plain_id(self.tokenizer, token)
        if i is None:
            raise ScratchLMError(f"token {token!r} is not in the vocabulary")
        return i

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self.token_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self.token_id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return None if self.pad_token is None else self.token_id(self.pad_token)

    @property
    def stop_ids(self) -> list[int]:
        return [self.token_id(t) for t in self.stop_tokens]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def special_ids(self) -> dict[str, int]:
        return self.tokenizer.special_ids

    @property
    def end_of_text_id(self) -> int | None:
        return self.eos_id

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Ids of `text`; with `add_special`, BOS/EOS as the model's metadata asks (add_bos, add_eos)."""
        ids = self.tokenizer.encode(text)
        if add_special and self.add_bos:
            ids = [self.bos_id, *ids]
        if add_special and self.add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        ids = list(ids)
        if skip_special:
            special = set(self.tokenizer.special_ids.values())
            ids = [i for i in ids if i not in special]
        return self.tokenizer.decode(ids)

    # ------------------------------------------------------------------ chat
    def apply_chat_template(
        self, messages, add_generation_prompt: bool = True, tokenize: bool = False, **variables
    ) -> str | list[int]:
        """The conversation rendered by the model's template; with `tokenize`, its ids (no BOS is
        added: a template that wants one writes it)."""
        if self.chat_template is None:
            raise ScratchLMError("this model has no chat template (a base model?): use plain prompts")
        messages = check_messages(messages)
        env = dict(
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            pad_token=self.pad_token or "",
            unk_token="",
        )
        try:
            text = _compile(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **env, **variables
            )
        except TemplateError:
            raise
        except Exception as e:  # jinja's UndefinedError, SecurityError, a TypeError inside the template
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
        return self.encode(text, add_special=False) if tokenize else text

    # ------------------------------------------------------------------ files
    def config(self) -> dict:
        return {
            "format": CHAT_FORMAT,
            "version": CHAT_VERSION,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "stop_tokens": self.stop_tokens,
            "chat_template": self.chat_template,
            "tokenizer_hash": self.tokenizer.hash,
        }

    def save(self, directory: str | Path) -> None:
        """Write `directory/tokenizer/` (the tokenizer) and `directory/chat.json` into an existing
        directory (a model directory being built inside `atomic_dir`)."""
        directory = Path(directory)
        self.tokenizer.save(directory / "tokenizer")
        write_json(directory / CHAT_FILE, self.config())

    @classmethod
    def load(cls, directory: str | Path) -> ChatTokenizer:
        directory = Path(directory)
        cfg = read_json(directory / CHAT_FILE, "chat tokenizer config")
        if not isinstance(cfg, dict) or cfg.get("format") != CHAT_FORMAT or cfg.get("version") != CHAT_VERSION:
            raise ScratchLMError(f"{directory / CHAT_FILE} is not a scratchlm chat config (version {CHAT_VERSION})")
        tok = load_any_tokenizer(directory / "tokenizer")
        if cfg.get("tokenizer_hash") not in (None, tok.hash):
            raise ScratchLMError(f"{directory / 'tokenizer'} does not match {directory / CHAT_FILE} (edited?)")
        try:
            return cls(
                tok,
                cfg["bos_token"],
                cfg["eos_token"],
                cfg["pad_token"],
                bool(cfg["add_bos"]),
                bool(cfg["add_eos"]),
                cfg["chat_template"],
                list(cfg["stop_tokens"]),
            )
        except (KeyError, TypeError) as e:
            raise ScratchLMError(f"{directory / CHAT_FILE} is damaged ({type(e).__name__}: {e})") from None

    @classmethod
    def plain(cls, tokenizer) -> ChatTokenizer:
        """A tokenizer trained by scratchlm: no BOS, its end-of-text token ends generation, no template."""
        eot = tokenizer.end_of_text
        return cls(tokenizer, eos_token=eot, stop_tokens=[eot] if eot else [])

    def __repr__(self) -> str:
        return (
            f"ChatTokenizer({self.tokenizer!r}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
            f"add_bos={self.add_bos}, stops={self.stop_tokens}, template={'yes' if self.chat_template else 'no'})"
        )


def _plain_id(tokenizer, token: str) -> int | None:
    ids = tokenizer.encode(token)
    return ids[0] if len(ids) == 1 else None


def load_any_tokenizer(path: str | Path):
    """A byte-level scratchlm tokenizer or a SentencePiece BPE one, by the format tag of its file."""
    path = Path(path)
    native = path / "tokenizer.json" if path.is_dir() else path
    if native.is_file():
        with open(native, "rb") as f:
            head = f.read(4096)
        if b"scratchlm.sentencepiece_bpe" in head:
            from scratchlm.tokenizer.sentencepiece import SentencePieceBPE

            return SentencePieceBPE.load(path)
    from scratchlm.tokenizer.formats import load_tokenizer

    return load_tokenizer(path)
