"""Every Prometheus metric of a node, on one explicit registry per node.

Slot gauges carry the node id and role so that summing over nodes gives the cluster's
concurrency (``sum(sayit_chunk_slots_busy) / sum(sayit_chunk_slots)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from sayit_actors.engines.batcher import BatchStats

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self, node: str, role: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.node, self.role = node, role
        r = self.registry
        self.http_requests = Counter(
            "sayit_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "sayit_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slots = Gauge("sayit_chunk_slots", "Transcription slots of the node", ["node", "role"], registry=r)
        self.slots_busy = Gauge("sayit_chunk_slots_busy", "Slots transcribing now", ["node", "role"], registry=r)
        self.transcriptions = Counter(
            "sayit_transcriptions",
            "Transcriptions by mode, language, engine and outcome",
            ["mode", "language", "engine", "outcome"],
            registry=r,
        )
        self.transcription_seconds = Histogram(
            "sayit_transcription_seconds",
            "Engine time per transcription",
            ["mode", "language", "engine"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "sayit_audio_seconds", "Seconds of audio transcribed", ["mode", "language", "engine"], registry=r
        )
        self.actor_up = Gauge("sayit_actor_up", "1 while the actor runs", ["actor", "kind"], registry=r)
        self.actor_restarts = Counter("sayit_actor_restarts", "Restarts by the supervisor", ["actor"], registry=r)
        self.messages_dropped = Counter(
            "sayit_messages_dropped", "Told messages an actor failed on and dropped", ["actor", "reason"], registry=r
        )
        self.model_load_seconds = Gauge("sayit_model_load_seconds", "Time to load the model", ["engine"], registry=r)
        self.redis_up = Gauge("sayit_redis_up", "1 when Redis answered the last check", registry=r)
        self.real_time_factor = Histogram(
            "sayit_real_time_factor", "Engine seconds per audio second", ["mode", "language", "engine"],
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5), registry=r,
        )  # fmt: skip
        self.jobs = Counter("sayit_jobs", "Jobs ended on this node, by outcome", ["outcome"], registry=r)
        self.callbacks = Counter(
            "sayit_callbacks", "Callbacks this node is done sending: delivered or gave_up", ["outcome"], registry=r
        )
        self.errors = Counter("sayit_errors", "Error responses by code", ["code"], registry=r)
        self.queue_depth = Gauge("sayit_queue_chunks", "Chunk tasks by state (cluster-wide)", ["state"], registry=r)
        self.queue_nodes = Gauge("sayit_queue_nodes", "Live queue nodes (cluster-wide)", registry=r)
        self.queue_node_slots = Gauge("sayit_queue_node_slots", "Slots of the live queue nodes", registry=r)
        # Under noeviction a Redis at maxmemory refuses writes: uploads get 503 until memory is freed.
        self.redis_memory_used = Gauge("sayit_redis_memory_used_bytes", "Memory Redis uses (used_memory)", registry=r)
        self.redis_memory_max = Gauge("sayit_redis_memory_max_bytes", "Redis maxmemory; 0: no limit", registry=r)
        # The engine's batched passes: their rates give windows and audio seconds per second.
        self.batch_size = Histogram(
            "sayit_batch_windows", "Windows decoded together in one engine pass",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r,
        )  # fmt: skip
        self.batch_wait = Histogram(
            "sayit_batch_wait_seconds", "Time a window waited for its engine pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_pass = Histogram(
            "sayit_batch_pass_seconds", "Time of one engine pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_windows = Counter("sayit_batch_windows_decoded", "Windows decoded in engine passes", registry=r)
        self.batch_audio = Counter("sayit_batch_audio_seconds", "Audio seconds decoded in engine passes", registry=r)
        self.batch_wide = Counter(
            "sayit_batch_wide_passes", "Engine passes with every core (fewer windows waiting than lanes)", registry=r
        )

    def set_slots(self, capacity: int, busy: int) -> None:
        self.slots.labels(self.node, self.role).set(capacity)
        self.slots_busy.labels(self.node, self.role).set(busy)

    def observe_transcription(self, mode: str, language: str, engine: str, engine_s: float, audio_s: float) -> None:
        self.transcriptions.labels(mode, language, engine, "success").inc()
        self.transcription_seconds.labels(mode, language, engine).observe(engine_s)
        self.audio_seconds.labels(mode, language, engine).inc(audio_s)
        if audio_s > 0:
            self.real_time_factor.labels(mode, language, engine).observe(engine_s / audio_s)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.windows)
        self.batch_pass.observe(stats.engine_s)
        for waited_s in stats.waited_s:
            self.batch_wait.observe(waited_s)
        self.batch_windows.inc(stats.windows)
        self.batch_audio.inc(stats.audio_s)
        if stats.wide:
            self.batch_wide.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
