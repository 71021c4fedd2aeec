"""Alignment data: JSONL records (plain or gzipped) read with line-numbered errors, the HH-RLHF dialogue form,
preference pairs and their tokenisation with a chat template.

    records, problems = read_jsonl("pairs.jsonl.gz", on_error="skip")     # problems: ["line 7: ...", ...]
    pairs = preference_pairs(records)                                     # [PreferencePair(prompt, chosen, rejected)]
    enc, skipped = encode_pairs(pairs, chat, max_len=512)                 # token ids, prompts cut from the left

Accepted preference records: {"prompt", "chosen", "rejected"} (prompt: a string or a list of chat messages;
chosen / rejected: strings) or HH-RLHF's {"chosen", "rejected"}, two whole dialogues
"\\n\\nHuman: ...\\n\\nAssistant: ..." that share everything up to the last "Assistant:" turn.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def read_jsonl(path: str | Path, on_error: str = "skip") -> tuple[list[dict], list[str]]:
    """(records, problems) of a JSONL file (.gz too). A line that is not a JSON object is named by its line
    number in `problems` and skipped (on_error="skip") or raises (on_error="fatal"). Blank lines are ignored."""
    if on_error not in ("skip", "fatal"):
        raise ScratchLMError(f"on_error must be 'skip' or 'fatal', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"data file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    records, problems = [], []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError(f"a JSON {type(rec).__name__}, not an object")
                except ValueError as e:
                    problems.append(f"{path.name} line {n}: {e}")
                    if on_error == "fatal":
                        raise ScratchLMError(problems[-1]) from None
                    continue
                records.append(rec)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ScratchLMError(f"cannot read {path}: {e}") from None
    for p in problems[:5]:
        log.warning("skipped %s", p)
    return records, problems


def hh_messages(dialogue: str) -> list[dict]:
    """HH-RLHF's "\\n\\nHuman: a\\n\\nAssistant: b ..." as chat messages [{"role", "content"}, ...]."""
    if not dialogue.lstrip("\n").startswith("Human:"):
        raise ScratchLMError("an HH-RLHF dialogue must start with '\\n\\nHuman:'")
    messages, rest = [], "\n\n" + dialogue.lstrip("\n")
    while rest:
        role = "user" if rest.startswith(HUMAN) else "assistant" if rest.startswith(ASSISTANT) else None
        if role is None:
            raise ScratchLMError(f"unexpected text in an HH-RLHF dialogue: {rest[:40]!r}")
        rest = rest[len(HUMAN if role == "user" else ASSISTANT) :]
        cut = min((i for i in (rest.find(HUMAN), rest.find(ASSISTANT)) if i >= 0), default=len(rest))
        messages.append({"role": role, "content": rest[:cut].strip()})
        rest = rest[cut:]
    return messages


@dataclass
class PreferencePair:
    prompt: list[dict]  # chat messages up to the response
    chosen: str
    rejected: str


def preference_pairs(records: list[dict]) -> tuple[list[PreferencePair], list[str]]:
    """(pairs, problems): records missing a field or whose HH dialogues do not end in an assistant turn are
    named (by record index) and left out."""
    pairs, problems = [], []
    for i, r in enumerate(records):
        try:
            if "chosen" not in r or "rejected" not in r:
                raise ScratchLMError("needs 'chosen' and 'rejected'")
            if "prompt" in r:
                prompt = r["prompt"]
                prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
                pairs.append(PreferencePair(prompt, str(r["chosen"]), str(r["rejected"])))
                continue
            c, j = hh_messages(r["chosen"]), hh_messages(r["rejected"])
            if c[-1]["role"] != "assistant" or j[-1]["role"] != "assistant" or c[:-1] != j[:-1]:
                raise ScratchLMError("chosen and rejected must share the dialogue up to a final assistant turn")
            pairs.append(PreferencePair(c[:-1], c[-1]["content"], j[-1]["content"]))
        except ScratchLMError as e:
            problems.append(f"record {i}: {e}")
    return pairs, problems


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def encode_pairs(
    pairs: list[PreferencePair], chat, max_len: int = 512, max_prompt_len: int | None = None
) -> tuple[list[EncodedPair], dict[str, int]]:
    """Token ids with the chat template (prompt with the generation prompt; responses end with the end-of-turn
    token). Prompts longer than `max_prompt_len` (default max_len // 2) keep their last tokens; responses are
    cut to fit max_len. A pair whose response would be empty is skipped; the counts come back in `stats`."""
    max_prompt_len = max_prompt_len or max_len // 2
    eot = chat.stop_ids[0] if chat.stop_ids else chat.eos_id
    out, stats = [], {"pairs": len(pairs), "prompt_truncated": 0, "response_truncated": 0, "skipped_empty": 0}
    for p in pairs:
        if chat.chat_template is not None:
            prompt = chat.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=True)
        else:  # a base model: the HH-style plain text
            text = "".join(f"{HUMAN if m['role'] == 'user' else ASSISTANT} {m['content']}" for m in p.prompt)
            prompt = chat.encode(text + ASSISTANT, add_special=False)
        if len(prompt) > max_prompt_len:
            prompt, stats["prompt_truncated"] = prompt[-max_prompt_len:], stats["prompt_truncated"] + 1
        room = max_len - len(prompt)
        resp = []
        for text in (p.chosen, p.rejected):
            ids = chat.encode(text, add_special=False) + ([eot] if eot is not None else [])
            if len(ids) > room:
                ids, stats["response_truncated"] = ids[:room], stats["response_truncated"] + 1
            resp.append(ids)
        if min(len(r) for r in resp) == 0 or not text.strip() or not p.chosen.strip():
            stats["skipped_empty"] += 1
            continue
        out.append(EncodedPair(prompt, resp[0], resp[1]))
    return out, stats
