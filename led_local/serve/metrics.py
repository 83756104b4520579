"""The server's Prometheus metrics, in a registry of its own (``/metrics`` renders it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Requests by HTTP status, tokens in and out, queue length, busy slots, time to first
    token and per-token latency (seconds), and how many tokens LED took from exploration."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("led_requests", "Requests answered, by HTTP status "
                                "(499: the client left first)", ["status"], registry=r)
        self.tokens_in = Counter("led_prompt_tokens", "Prompt tokens received", registry=r)
        self.tokens_out = Counter("led_completion_tokens", "Tokens generated", registry=r)
        self.explored = Counter("led_explored_tokens",
                                "Tokens LED emitted from its exploration branch", registry=r)
        self.queue = Gauge("led_queue_length", "Requests waiting for a slot", registry=r)
        self.busy = Gauge("led_slots_busy", "Slots decoding a sequence", registry=r)
        self.ttft = Histogram("led_time_to_first_token_seconds",
                              "From a request's arrival to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.token_latency = Histogram("led_token_latency_seconds",
                                       "Time per generated token after the first, per choice",
                                       buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
