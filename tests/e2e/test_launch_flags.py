"""`autoglm launch` gateway flags: served name, API key, local media directory, content format."""
from __future__ import annotations

import base64
import uuid

import httpx
import pytest

from .conftest import READY_TIMEOUT_S, LaunchedPipeline, free_port, png_data_url

KEY = "sk-test-flags"


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    (media / "screen.png").write_bytes(base64.b64decode(png_data_url(360, 800).split(",", 1)[1]))
    outside = tmp_path_factory.mktemp("outside") / "other.png"
    outside.write_bytes((media / "screen.png").read_bytes())
    p = LaunchedPipeline(f"e2e-flags-{uuid.uuid4().hex[:8]}", free_port(), (
        "--served-model-name", "phone-agent", "autoglm-phone-9b", "--api-key", KEY,
        "--allowed-local-media-path", str(media), "--chat-template-content-format", "string"))
    try:
        p.wait_for("all 4 stages ready", READY_TIMEOUT_S)
        p.wait_healthy()
        yield p, media / "screen.png", outside
    finally:
        p.stop()


def chat(url, content, key=KEY, model="phone-agent"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", headers=headers, timeout=120, json={
        "model": model, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": content}]})


def test_served_names_and_api_key(flagged):
    p, _, _ = flagged
    assert httpx.get(p.url + "/v1/models").status_code == 401
    models = httpx.get(p.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in models["data"]][0] == "phone-agent"
    r = chat(p.url, "hello", key=None)
    assert r.status_code == 401 and r.json()["error"]["type"]
    assert chat(p.url, "hello", key="wrong").status_code == 401
    assert chat(p.url, "hello", model="autoglm-phone-9b").status_code == 200
    assert chat(p.url, "hello", model="gpt-4").status_code == 404


def test_local_files_only_under_the_allowed_directory(flagged):
    p, inside, outside = flagged
    ok = chat(p.url, [{"type": "image_url", "image_url": {"url": f"file://{inside}"}},
                      {"type": "text", "text": "tap the button"}])
    assert ok.status_code == 200, ok.text
    # The image became image tokens: far more prompt tokens than the text alone.
    assert ok.json()["usage"]["prompt_tokens"] > 50
    refused = chat(p.url, [{"type": "image_url", "image_url": {"url": f"file://{outside}"}},
                           {"type": "text", "text": "tap the button"}])
    assert refused.status_code == 400, refused.text
    assert "allowed" in refused.json()["error"]["message"]
