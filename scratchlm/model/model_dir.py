"""Native model directories, and the one resolver every model-taking command uses.

A native model directory (what `scratchlm model pull` writes; `save_model_dir` writes one for any model):

    config.json         {"format": "scratchlm.model", "version": 1, "model": ModelConfig fields, "dtype"}
    model.safetensors   the state dict (a tied head stored once, under the embedding's name)
    tokenizer/          the tokenizer (byte-level BPE or SentencePiece BPE), native format
    chat.json           BOS/EOS rules, stop tokens, chat template (`ChatTokenizer`)
    provenance.json     where the weights came from: package, version, hashes, licence, conversion
    LICENSE*            the licence text shipped with the weights, when there is one

    model, chat = load_model("smollm2-135m-instruct")   # a pulled name, a model directory or a run directory

`load_model` accepts: a run directory (config.toml + checkpoints: its best, else latest weights), a
native model directory, a GGUF file (converted in memory), or the name of a pretrained model in
`pretrained.REGISTRY` (pulled into the cache on first use).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, read_json, write_json

MODEL_FORMAT = "scratchlm.model"
MODEL_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def save_model_dir(
    model,
    chat,
    path: str | os.PathLike,
    provenance: dict | None = None,
    extra_files: dict[str, bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (a TransformerLM) and `chat` (a ChatTokenizer) as a native model directory, atomically."""
    from safetensors.torch import save_file

    from scratchlm.config import to_dict
    from scratchlm.train.checkpoint import split_tied

    path = Path(path)
    dtype = next(model.parameters()).dtype
    name = {v: k for k, v in DTYPES.items()}.get(dtype)
    if name is None:
        raise ScratchLMError(f"cannot save a model of dtype {dtype}: expected one of {', '.join(DTYPES)}")
    tensors, aliases = split_tied(model.state_dict())
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "aliases": repr(sorted(aliases.items()))})
        chat.save(tmp)
        write_json(
            tmp / "config.json",
            {
                "format": MODEL_FORMAT,
                "version": MODEL_VERSION,
                "dtype": name,
                "aliases": aliases,
                "model": to_dict(model.config),
                **({"quantization": model.quantization} if getattr(model, "quantization", None) else {}),
            },
        )
        write_json(tmp / "provenance.json", provenance or {})
        for fname, data in (extra_files or {}).items():
            (tmp / fname).write_bytes(data)
    return path


def is_model_dir(path: str | os.PathLike) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return read_json(cfg, "model config").get("format") == MODEL_FORMAT
    except (ScratchLMError, AttributeError):
        return False


def load_model_dir(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model in eval mode, ChatTokenizer) of a native model directory."""
    from safetensors.torch import load_file

    from scratchlm.config import from_dict
    from scratchlm.model.config import ModelConfig
    from scratchlm.model.transformer import TransformerLM
    from scratchlm.tokenizer.chat import ChatTokenizer

    path = Path(path)
    meta = read_json(path / "config.json", "model config.json")
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ScratchLMError(f"{path / 'config.json'} is not a scratchlm model config (format {MODEL_FORMAT!r})")
    if meta.get("version") != MODEL_VERSION:
        raise ScratchLMError(
            f"{path} is model format version {meta.get('version')}; this scratchlm reads {MODEL_VERSION}"
        )
    try:
        cfg = from_dict(ModelConfig, meta["model"])
        cfg.validate()
    except KeyError as e:
        raise ScratchLMError(f"{path / 'config.json'} lacks {e}") from None
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ScratchLMError(f"{path} has no {WEIGHTS_FILE}")
    try:
        sd = load_file(str(weights), device=device)
    except Exception as e:  # safetensors' own error types for a bad header or a short file
        raise ScratchLMError(f"{weights} is not a readable safetensors file ({e})") from None
    for alias, name in (meta.get("aliases") or {}).items():
        sd[alias] = sd[name]
    quant = meta.get("quantization")  # compress.quant: which linears are quantised, and how
    with torch.device("meta"):
        skeleton = TransformerLM(cfg)
        if quant:
            from scratchlm.compress.quant import empty_quantized

            empty_quantized(skeleton, quant)
        expected = skeleton.state_dict()
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    bad = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or bad:
        raise ScratchLMError(
            f"{weights} does not fit its config: missing {missing[:4]}, unexpected {unexpected[:4]}, shapes {bad[:4]}"
        )
    if quant:
        model = skeleton.to_empty(device=device)
        model._tie()
        model.init_buffers(device)
        model.load_state_dict(sd, strict=True)
    else:
        model = TransformerLM.from_state_dict(cfg, sd, device)
    model.to(dtype=dtype or DTYPES.get(meta.get("dtype"), torch.float32))
    return model.eval(), ChatTokenizer.load(path)


def load_model(
    spec: str | os.PathLike,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool = True,
    which: str = "best",
):
    """(model in eval mode, ChatTokenizer) from a run directory (its `which` checkpoint: best or
    latest), a native model directory or a pretrained name."""
    from scratchlm.model import pretrained

    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":  # converted in memory, every time: `model pull` caches
        from scratchlm.model.gguf import read_gguf

        gg = read_gguf(path)
        return gg.model(dtype or torch.float32).to(device), gg.chat_tokenizer()
    if path.is_dir():
        if is_model_dir(path):
            return load_model_dir(path, device, dtype)
        if (path / "config.toml").is_file():
            from scratchlm.tokenizer.chat import ChatTokenizer
            from scratchlm.train.run import load_run

            model, tok, _ = load_run(path, which=which, device=device)
            return (model if dtype is None else model.to(dtype)), ChatTokenizer.plain(tok)
        raise ScratchLMError(f"{path} is neither a run directory (config.toml) nor a model directory (config.json)")
    if str(spec) in pretrained.REGISTRY:
        return load_model_dir(pretrained.pull(str(spec), progress=progress), device, dtype)
    raise ScratchLMError(
        f"model {str(spec)!r} not found: give a run directory, a model directory, a .gguf file, or one of "
        f"{', '.join(pretrained.REGISTRY)}"
    )
