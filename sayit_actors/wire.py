"""The JSON clients see of a merged transcript and of a chunk's progress.

One shape for the HTTP API (``http_edge.views``, ``http_edge.events``) and for callbacks
(``callbacks.job_payload``), which are sent from the actors: so it lives here, beside them,
and the store keeps its own records (``store.merge``) free of the API's camelCase.
"""

from __future__ import annotations

from typing import Any

from sayit_actors.store.merge import ChunkDone, ChunkProgress, Transcript


def transcript_view(transcript: Transcript) -> dict[str, Any]:
    return {
        "transcription": transcript.text,
        "language": transcript.language,
        "languages": transcript.languages,
        "segments": transcript.segments,
        "droppedSegments": transcript.dropped_segments,
        "chunks": [_chunk_done_view(chunk) for chunk in transcript.chunks],
    }


def _chunk_done_view(chunk: ChunkDone) -> dict[str, Any]:
    return {"index": chunk.index, "start": chunk.start_s, "duration": chunk.duration_s, "language": chunk.language,
            "node": chunk.node, "startedAt": chunk.started_at, "finishedAt": chunk.finished_at}  # fmt: skip


def chunk_progress_view(chunk: ChunkProgress) -> dict[str, Any]:
    return {"index": chunk.index, "start": chunk.start_s, "duration": chunk.duration_s, "language": chunk.language,
            "text": chunk.text, "segments": chunk.segments, "droppedSegments": chunk.dropped_segments}  # fmt: skip
