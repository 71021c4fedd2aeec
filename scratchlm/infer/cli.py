"""`scratchlm infer generate` (also `scratchlm generate`) and `scratchlm chat`: text from a model.

    scratchlm infer generate --model runs/quickstart --prompt "Once upon a time" --max-new-tokens 100
    scratchlm generate --model smollm2-135m-instruct --prompt "What is the capital of France?" --chat
    scratchlm chat --model smollm2-135m-instruct        # a terminal chat; tokens stream as they come

`--model` takes a run directory (its best, else latest checkpoint), a native model directory, or a
pretrained name (`scratchlm model list`; pulled on first use). `--run` is its older spelling.
`--chat` wraps the prompt in the model's chat template as one user message (after an optional
`--system` message) and prints only the answer.

torch and the model are imported inside the verb only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_GENERATE_HELP = "sample text from a model (run directory, model directory or pretrained name)"
_CHAT_HELP = "chat with a model in the terminal, using its chat template"


def register(subparsers) -> None:
    p = subparsers.add_parser("infer", help="inference: sample text from a model, chat")
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", required=True)
    _generate_arguments(verbs.add_parser("generate", help=_GENERATE_HELP))
    _chat_arguments(verbs.add_parser("chat", help=_CHAT_HELP))
    # The shorter spellings: the same arguments and functions.
    _generate_arguments(subparsers.add_parser("generate", help=f"{_GENERATE_HELP} (= scratchlm infer generate)"))
    _chat_arguments(subparsers.add_parser("chat", help=f"{_CHAT_HELP} (= scratchlm infer chat)"))


def _model_arguments(g: argparse.ArgumentParser) -> None:
    m = g.add_mutually_exclusive_group(required=True)
    m.add_argument("--model", help="run directory, native model directory, or pretrained name (scratchlm model list)")
    m.add_argument("--run", type=Path, help="run directory (the older spelling of --model)")
    g.add_argument("--checkpoint", choices=["best", "latest"], default="best", help="for a run directory")
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--system", help="--chat / chat: a system message before the conversation")


def _generate_arguments(g: argparse.ArgumentParser) -> None:
    _model_arguments(g)
    g.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    g.add_argument("--chat", action="store_true", help="send the prompt as a user message; print only the answer")
    g.set_defaults(func=cmd_generate)


def _chat_arguments(g: argparse.ArgumentParser) -> None:
    _model_arguments(g)
    g.set_defaults(func=cmd_chat, max_new_tokens=512)


def _load(args):
    from scratchlm.model.model_dir import load_model

    return load_model(args.model if args.run is None else args.run, which=args.checkpoint)


def _settings(args, model, n_prompt: int) -> dict:
    cfg = model.config
    return dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        max_len=max(cfg.context_length, n_prompt + args.max_new_tokens) if cfg.positions in ("rope", "none") else None,
    )


def _conversation(args, user_text: str, history: list[dict] | None = None) -> list[dict]:
    system = [{"role": "system", "content": args.system}] if args.system else []
    return system + (history or []) + [{"role": "user", "content": user_text}]


def cmd_generate(args: argparse.Namespace) -> int:
    from scratchlm.model.generate import generate

    model, chat = _load(args)
    if args.chat:
        ids = chat.apply_chat_template(_conversation(args, args.prompt), add_generation_prompt=True, tokenize=True)
    elif args.prompt:
        ids = chat.encode(args.prompt)
    else:  # start of a document: BOS, else the end-of-text token
        start = chat.bos_id if chat.bos_id is not None else chat.eos_id
        ids = [start if start is not None else 0]
    out = generate(model, ids, args.max_new_tokens, stop_tokens=chat.stop_ids, **_settings(args, model, len(ids)))
    new = out[len(ids) :]
    if args.chat:
        print(chat.decode(new, skip_special=True).strip())
    else:
        print(args.prompt + chat.decode(new, skip_special=True))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Read a line, answer it (tokens printed as they are sampled), keep the conversation; /reset, /exit."""
    import sys

    from scratchlm.model.generate import stream
    from scratchlm.tokenizer.stream import StreamDecoder

    model, chat = _load(args)
    if chat.chat_template is None:
        from scratchlm.errors import ScratchLMError

        raise ScratchLMError(f"{args.model or args.run} has no chat template (a base model): use `generate`")
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    print("chat: /reset forgets the conversation, /exit (or Ctrl-D) quits", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = []
            continue
        ids = chat.apply_chat_template(_conversation(args, text, history), add_generation_prompt=True, tokenize=True)
        decoder, answer_ids, stops = StreamDecoder(chat), [], set(chat.stop_ids)
        settings = _settings(args, model, len(ids))
        for tok in stream(model, ids, args.max_new_tokens, stop_tokens=chat.stop_ids, **settings):
            if tok in stops:
                break
            answer_ids.append(tok)
            print(decoder.push(tok), end="", flush=True)
        print(decoder.flush(), flush=True)
        answer = chat.decode(answer_ids, skip_special=True).strip()
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
