import httpx
from prometheus_client.parser import text_string_to_metric_families

from execution.metrics import GatewayMetrics
from execution.pipeline_client import PipelineStats

from .harness import running_gateway
from .scripted_pipeline import ScriptedPipeline


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams, name, suffix="", **labels):
    f = fams[name]
    for s in f.samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((name, suffix, labels))


def test_exposition_parses_and_has_every_series():
    stats = PipelineStats(3, 4, 0.5, 1000, 250, {"vision": [0.01, 0.02, 0.03]})
    m = GatewayMetrics("autoglm-phone-9b", lambda: stats)
    m.observe_ttft(0.05)
    m.observe_itl(0.02)
    m.observe_e2e(1.2)
    m.observe_queue(0.001)
    m.count_tokens(100, 20)
    m.finished("stop")
    m.cache_lookup(True)
    f = families(m.exposition().decode())
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                 "e2e_request_latency_seconds", "request_queue_time_seconds",
                 "stage_latency_seconds"):
        assert f["autoglm:" + name].type == "histogram"
    assert sample(f, "autoglm:time_to_first_token_seconds", "_count", model_name="autoglm-phone-9b") == 1
    assert sample(f, "autoglm:prompt_tokens", "_total") == 100
    assert sample(f, "autoglm:generation_tokens", "_total") == 20
    assert sample(f, "autoglm:request_success", "_total", finished_reason="stop") == 1
    assert sample(f, "autoglm:request_success", "_total", finished_reason="length") == 0
    assert sample(f, "autoglm:num_requests_running") == 3
    assert sample(f, "autoglm:num_requests_waiting") == 4
    assert sample(f, "autoglm:kv_cache_usage_perc") == 0.5
    assert sample(f, "autoglm:prefix_cache_queries", "_total") == 1000
    assert sample(f, "autoglm:prefix_cache_hits", "_total") == 250
    assert sample(f, "autoglm:response_cache_hits", "_total") == 1
    assert sample(f, "autoglm:stage_latency_seconds", "_count", stage="vision") == 3
    for fam in f.values():
        for s in fam.samples:
            assert s.labels.get("model_name") == "autoglm-phone-9b", s


def test_metrics_after_requests(glm_tok):
    pipe = ScriptedPipeline(glm_tok, "hello world, a short answer")
    with running_gateway(glm_tok, pipe) as (url, _):
        for _ in range(3):
            httpx.post(url + "/v1/chat/completions", json={
                "model": "autoglm-phone-9b", "messages": [{"role": "user", "content": "hi"}],
                "stream": True}, timeout=10)
        r = httpx.get(url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    f = families(r.text)
    n_gen = 3 * (len(glm_tok.encode("hello world, a short answer")) + 1)
    assert sample(f, "autoglm:generation_tokens", "_total") == n_gen
    assert sample(f, "autoglm:request_success", "_total", finished_reason="stop") == 3
    assert sample(f, "autoglm:time_to_first_token_seconds", "_count") == 3
    assert sample(f, "autoglm:inter_token_latency_seconds", "_count") == n_gen - 3
    assert sample(f, "autoglm:e2e_request_latency_seconds", "_count") == 3
    assert sample(f, "autoglm:request_queue_time_seconds", "_count") == 3
    assert sample(f, "autoglm:stage_latency_seconds", "_count", stage="gateway_prepare") == 3
    assert sample(f, "autoglm:gateway_requests_in_flight") == 0
