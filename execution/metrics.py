"""Prometheus metrics of the gateway, named like vLLM's (`vllm:X` -> `autoglm:X`) so existing
Grafana dashboards need only the prefix changed. Every series has a ``model_name`` label.

Request-level series (latencies, token counters, finished requests, response cache) are
observed by the app as requests run. Pipeline-level series (running / waiting requests, KV
cache usage, prefix cache counters, per-stage latencies) come from `PipelineClient.stats()`
and are read at scrape time by a collector, so they are never stale and cost nothing between
scrapes. Each `GatewayMetrics` owns its registry (several apps can live in one process, e.g.
in tests).
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .pipeline_client import PipelineStats

PREFIX = "autoglm:"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket edges as vLLM uses them (seconds), so its dashboards' quantiles read the same.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0, 10.0, 30.0)
FINISHED_REASONS = ("stop", "length", "abort", "error")


class GatewayMetrics:
    def __init__(self, model_name: str, stats: Callable[[], PipelineStats] | None = None):
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        r, m = self.registry, ["model_name"]

        def hist(name, doc, buckets, labels=m):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=r)

        self.ttft = hist("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between streamed tokens.", ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to last token.", REQUEST_BUCKETS)
        self.queue = hist("request_queue_time_seconds", "Arrival to admission by the engine.",
                          REQUEST_BUCKETS)
        self.stage = hist("stage_latency_seconds", "Latency of one pipeline stage for one request.",
                          STAGE_BUCKETS, labels=m + ["stage"])
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prefill tokens processed.", m,
                                     registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", m,
                                         registry=r)
        self.success = Counter(PREFIX + "request_success", "Finished requests by reason.",
                               m + ["finished_reason"], registry=r)
        self.cache_hits = Counter(PREFIX + "response_cache_hits", "Response cache hits.", m,
                                  registry=r)
        self.cache_misses = Counter(PREFIX + "response_cache_misses",
                                    "Response cache misses (cacheable requests only).", m,
                                    registry=r)
        self.in_flight = Gauge(PREFIX + "gateway_requests_in_flight",
                               "Requests the gateway is serving now.", m, registry=r)
        for reason in FINISHED_REASONS:  # present at 0 from the start, as vLLM's are
            self.success.labels(model_name, reason)
        for metric in (self.prompt_tokens, self.generation_tokens, self.cache_hits,
                       self.cache_misses, self.in_flight):
            metric.labels(model_name)
        self._stats = stats
        self._snapshot = PipelineStats()
        if stats is not None:
            r.register(_PipelineCollector(model_name, lambda: self._snapshot))

    # convenience: everything is labelled with the served model name
    def observe_ttft(self, s: float) -> None:
        self.ttft.labels(self.model_name).observe(s)

    def observe_itl(self, s: float) -> None:
        self.itl.labels(self.model_name).observe(s)

    def observe_e2e(self, s: float) -> None:
        self.e2e.labels(self.model_name).observe(s)

    def observe_queue(self, s: float) -> None:
        self.queue.labels(self.model_name).observe(s)

    def observe_stage(self, stage: str, s: float) -> None:
        self.stage.labels(self.model_name, stage).observe(s)

    def count_tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens.labels(self.model_name).inc(prompt)
        self.generation_tokens.labels(self.model_name).inc(generated)

    def finished(self, reason: str) -> None:
        self.success.labels(self.model_name, reason).inc()

    def cache_lookup(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).labels(self.model_name).inc()

    def exposition(self) -> bytes:
        # Read the pipeline once per scrape, before rendering, so drained stage samples land
        # in this scrape's histogram and all pipeline series come from one snapshot.
        if self._stats is not None:
            self._snapshot = self._stats()
            for stage, values in self._snapshot.stage_latencies.items():
                for v in values:
                    self.observe_stage(stage, v)
        return generate_latest(self.registry)


class _PipelineCollector:
    """The pipeline's numbers as of the current scrape."""

    def __init__(self, model_name: str, snapshot: Callable[[], PipelineStats]):
        self._model, self._snapshot = model_name, snapshot

    def describe(self):
        return []  # unchecked collector: the families depend on nothing at registration

    def collect(self):
        s = self._snapshot()
        lab = [self._model]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(PREFIX + name, doc, labels=["model_name"])
            g.add_metric(lab, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(PREFIX + name, doc, labels=["model_name"])
            c.add_metric(lab, value)
            return c

        yield gauge("num_requests_running", "Requests in the engine's running batch.",
                    s.num_requests_running)
        yield gauge("num_requests_waiting", "Requests waiting for admission.",
                    s.num_requests_waiting)
        yield gauge("kv_cache_usage_perc", "KV cache usage (1 = full).", s.kv_cache_usage)
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      s.prefix_cache_queries)
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                      s.prefix_cache_hits)
