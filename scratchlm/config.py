"""Typed configuration: dataclasses are the single source of truth.

A stage declares its settings as a (possibly nested) dataclass with a comment per field. Values
come, in order of precedence, from the dataclass defaults, a TOML preset (`configs/<stage>/
<name>.toml`) or file, and `--set key.sub=value` overrides. Every key and value is checked
against the dataclass: an unknown key fails with the nearest valid key suggested, a value of the
wrong type or outside a `Literal[...]` fails naming the key.

    cfg = load_config(TokenizerTrainConfig, preset="default", overrides=["vocab_size=4096"])
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomli_w

from scratchlm.errors import ScratchLMError

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# presets


def presets_root() -> Path:
    """The `configs/` directory: in a source checkout next to the package, else installed data."""
    here = Path(__file__).resolve().parent.parent / "configs"
    if here.is_dir():
        return here
    return Path(str(importlib.resources.files("scratchlm.configs")))


def list_presets(stage: str) -> list[str]:
    d = presets_root() / stage
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def preset_path(stage: str, name: str) -> Path:
    """A preset name (`default`) or a path to a TOML file (`my.toml`)."""
    p = Path(name)
    if p.suffix == ".toml":
        if not p.is_file():
            raise ScratchLMError(f"config file not found: {p}")
        return p
    p = presets_root() / stage / f"{name}.toml"
    if not p.is_file():
        names = list_presets(stage)
        hint = _nearest(name, names)
        raise ScratchLMError(f"unknown {stage} preset {name!r}{hint}; available: {', '.join(names) or 'none'}")
    return p


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ScratchLMError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ScratchLMError(f"{path} is not valid TOML: {e}") from None


# ---------------------------------------------------------------------------------------------
# building a dataclass from nested dicts, with checks


def _nearest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a config class accepts, nested ones included."""
    keys = []
    for name, tp in _field_types(cls).items():
        key = prefix + name
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys += all_keys(tp, key + ".")
    return keys


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown_key(cls: type, key: str, root: type | None) -> ScratchLMError:
    candidates = all_keys(root or cls)
    return ScratchLMError(f"unknown config key {key!r}{_nearest(key, candidates)}")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert where lossless (int -> float, str -> Path)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ScratchLMError as e:
                errors.append(str(e))
        raise ScratchLMError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            hint = _nearest(str(value), [str(a) for a in args])
            raise ScratchLMError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value else []
        if not isinstance(value, (list, tuple)):
            raise ScratchLMError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ScratchLMError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ScratchLMError(f"{key}: expected a table of settings, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ScratchLMError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ScratchLMError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ScratchLMError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ScratchLMError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ScratchLMError(f"{key}: expected a path, got {value!r}")
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "", root: type | None = None) -> T:
    """Build `cls` from a nested dict; unknown keys and bad values are errors naming the key."""
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in types_:
            raise _unknown_key(cls, prefix + name, root)
        kwargs[name] = coerce(value, types_[name], prefix + name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A TOML/JSON-serialisable dict (Paths as strings, None values dropped)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(dataclasses.asdict(cfg))


def to_toml(cfg: Any) -> str:
    return tomli_w.dumps(to_dict(cfg))


# ---------------------------------------------------------------------------------------------
# overrides


def parse_value(raw: str) -> Any:
    """A TOML literal (`4`, `1e-3`, `true`, `["a", "b"]`, `"s"`), else the raw string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = data.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ScratchLMError(f"cannot set {key}: {p} is not a table")
        data = nxt
    data[parts[-1]] = value


def _check_key(cls: type, key: str) -> Any:
    """The annotation of a dotted key, or an error naming the nearest valid key."""
    tp: Any = cls
    for part in key.split("."):
        if typing.get_origin(tp) is dict:  # free-form table: keys below are not checked
            return Any
        if not dataclasses.is_dataclass(tp):
            raise _unknown_key(cls, key, cls)
        types_ = _field_types(tp)
        if part not in types_:
            raise _unknown_key(cls, key, cls)
        tp = types_[part]
    return tp


def parse_overrides(cls: type, overrides: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> nested dict, each key checked against `cls`."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ScratchLMError(f"override {item!r} must look like key=value (e.g. vocab_size=4096)")
        key, raw = item.split("=", 1)
        key = key.strip()
        tp = _check_key(cls, key)
        value = parse_value(raw.strip())
        # A string field given something TOML reads as a number/bool keeps the raw text.
        if (
            tp is str
            or tp is Path
            or (typing.get_origin(tp) is Literal and raw.strip() in map(str, typing.get_args(tp)))
        ):
            value = value if isinstance(value, str) else raw.strip()
        set_dotted(data, key, value)
    return data


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    cls: type[T],
    stage: str | None = None,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults <- preset (name in `configs/<stage>/` or a .toml path) <- `base` <- overrides."""
    data: dict[str, Any] = {}
    if preset is not None:
        path = preset_path(stage or "", preset)
        data = read_toml(path)
        for key in flatten(data):
            _check_key_in_file(cls, key, path)
    if base:
        data = deep_merge(data, base)
    data = deep_merge(data, parse_overrides(cls, list(overrides)))
    cfg = from_dict(cls, data, root=cls)
    validate(cfg)
    return cfg


def _check_key_in_file(cls: type, key: str, path: Path) -> None:
    try:
        _check_key(cls, key)
    except ScratchLMError as e:
        raise ScratchLMError(f"{path}: {e}") from None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": 2} -> {"a.b": 1, "c": 2}: dotted keys, as `--set` takes them. An empty
    table stays one key (value {}), so a preset's `[table]` is still checked against the dataclass."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate(cfg: Any) -> None:
    """Call `cfg.validate()` (if defined) on the config and every nested config."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            validate(v)
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()


# ---------------------------------------------------------------------------------------------
# command-line glue shared by every stage


def add_config_arguments(parser, stage: str) -> None:
    """`--preset NAME|FILE.toml` and repeatable `--set key=value` on a verb's parser."""
    names = ", ".join(list_presets(stage)) or "none yet"
    parser.add_argument("--preset", default=None, help=f"preset name ({names}) or a .toml file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, dotted for nested keys (repeatable)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")


def text_argument(value: str, what: str) -> str:
    """A text given on the command line, checked to be UTF-8: Python keeps undecodable argv bytes as lone
    surrogates ("\\udce9" for byte 0xe9), which every encoder and tokenizer downstream rejects or garbles."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(value[e.start]) - 0xDC00 if 0xDC80 <= ord(value[e.start]) <= 0xDCFF else None
        at = f"byte 0x{byte:02x}" if byte is not None else f"character {value[e.start]!r}"
        raise ScratchLMError(
            f"{what} is not valid UTF-8 ({at} at position {e.start}): check the terminal's encoding (e.g. LANG=C.UTF-8)"
        ) from None
    return value


def config_from_args(cls: type[T], stage: str, args, extra: dict[str, Any] | None = None) -> T:
    """Resolve a stage's config from `--preset`, shortcut flags (`extra`, None values ignored) and `--set`."""
    base = {k: v for k, v in (extra or {}).items() if v is not None}
    return load_config(cls, stage, args.preset, args.overrides, base=base)
