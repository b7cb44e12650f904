"""Every Redis key SayIt uses, built here and nowhere else.

All keys start with ``sayit:``:

| key | type | what | kept |
|---|---|---|---|
| ``sayit:stats:<YYYY-MM-DD>`` | hash | requests, successes, failures, processing_ms, audio_ms | 90 days |
"""

from __future__ import annotations

import datetime as dt

PREFIX = "sayit:"
STATS_TTL_S = 90 * 24 * 3600


def stats(day: dt.date) -> str:
    return f"{PREFIX}stats:{day.isoformat()}"
