"""The chat page in a real headless browser: Playwright driving the system's chromium (Debian's package)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import start_server, tiny_model_and_chat

from scratchlm.serve.config import ServeConfig

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def slow_server():
    model, chat = tiny_model_and_chat()
    model.register_forward_hook(lambda *_: time.sleep(0.01))  # ~100 tokens/s: a generation can be stopped
    s = start_server(ServeConfig(kv_cache_mb=8, block_size=4), (model, chat))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


def test_page_is_self_contained(slow_server):
    import httpx

    html = httpx.get(slow_server.url + "/").text
    assert "<script>" in html and "<style>" in html
    assert "http://" not in html and "https://" not in html and "src=" not in html  # nothing fetched from elsewhere


def test_chat_streams_stops_and_starts_over(slow_server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone-sized viewport
    page.goto(slow_server.url + "/")
    sync_api.expect(page.locator("#model")).to_have_text("tiny")
    page.locator("#settings-panel summary").click()
    page.fill("#system", "You answer briefly.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")

    page.fill("#input", "Hello there")
    page.press("#input", "Enter")
    sync_api.expect(page.locator(".msg.user")).to_have_text("user" + "Hello there")
    answer = page.locator(".msg.assistant").last
    sync_api.expect(answer).to_have_attribute("data-done", "1", timeout=20_000)
    sync_api.expect(page.locator("#status")).to_contain_text("tokens/s")
    first_text = answer.locator(".content").inner_text()
    assert "Error" not in first_text and "12 tokens" in page.locator("#status").inner_text()

    # the same settings through the API: the page streamed exactly the greedy answer
    import openai

    client = openai.OpenAI(base_url=slow_server.url + "/v1", api_key="x", max_retries=0)
    ref = client.chat.completions.create(
        model="tiny", temperature=0, max_tokens=12,
        messages=[{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hello there"}],
    ).choices[0].message.content  # fmt: skip
    assert answer.get_attribute("data-done") == "1"
    assert page.evaluate("history[history.length - 1].content") == ref

    # a long generation, stopped while it streams: the engine request is aborted
    page.fill("#max-tokens", "120")  # the conversation + 120 fits the 256-token context
    page.fill("#input", "Tell me a long story")
    page.press("#input", "Enter")
    sync_api.expect(page.locator("#stop")).to_be_enabled()
    page.wait_for_function("Number(document.querySelectorAll('.msg.assistant')[1].dataset.chars) > 15")
    page.screenshot(path=str(tmp_path / "chat-streaming.png"), full_page=True)
    page.click("#stop")
    sync_api.expect(page.locator("#status")).to_contain_text("stopped", timeout=10_000)
    slow_server.wait_idle()
    assert page.locator(".msg").count() == 4

    # regenerate replaces the last answer, a new chat clears the conversation
    page.fill("#max-tokens", "5")
    page.click("#regenerate")
    sync_api.expect(page.locator(".msg.assistant").last).to_have_attribute("data-done", "1", timeout=20_000)
    assert page.locator(".msg").count() == 4
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and page.evaluate("history.length") == 0

    # a code block is rendered as one, on a desktop-sized page this time
    page.set_viewport_size({"width": 1100, "height": 760})
    page.evaluate("addMessage('assistant', 'Here:\\n```python\\nprint(1 < 2)\\n```\\ndone')")
    assert page.locator(".msg.assistant pre code[data-lang=python]").inner_text().strip() == "print(1 < 2)"
    page.fill("#max-tokens", "40")
    page.fill("#input", "Show me some code")
    page.press("#input", "Enter")
    sync_api.expect(page.locator(".msg.assistant").last).to_have_attribute("data-done", "1", timeout=20_000)
    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000
    ARTIFACTS.mkdir(exist_ok=True)
    for f in tmp_path.glob("*.png"):
        shutil.copy(f, ARTIFACTS / f.name)
    page.close()
