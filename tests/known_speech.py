"""Speech of known text from the corpus, and recordings built of it: shared by the long-form tests
and the accuracy benchmark, so that both measure the same recordings against the same text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sayit_actors import audio

SR = audio.SAMPLE_RATE
JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
# The first 30 s of multilingual.mp3: the MIT license as read (the reader skips '(the "Software")').
LICENSE = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files to deal in the Software without restriction, including "
    "without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell "
    "copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the "
    "following conditions: The above copyright notice and this permission notice shall be included in all "
    "copies or substantial portions of the Software."
)
# The German half of multilingual.mp3: the license's German translation as read.
GERMAN = (
    "Jedem, der diese Software und die dazu gehörigen Dokumentationsdateien erhält, wird hiermit unentgeltlich "
    "die Genehmigung erteilt, mit der Software uneingeschränkt zu verfahren. Dies umfasst insbesondere das Recht, "
    "die Software zu verwenden, zu vervielfältigen, zu modifizieren, zusammenzufügen, zu veröffentlichen, zu "
    "verteilen, unterzulizenzieren und/oder Kopien der Software zu verkaufen und diese Rechte unter folgenden "
    "Bedingungen anderen zu übertragen."
)
KOREAN = "그는 이리저리 피하면서 길 한 옆으로 걸어갔다."
PAUSES_S = (0.3, 2.0)


@dataclass(frozen=True)
class Passage:
    """A stretch of the corpus and its known text."""

    name: str
    samples: np.ndarray
    text: str
    language: str


Placed = tuple[tuple[float, Passage], ...]  # (start seconds, passage), in order


def passages(corpus: Path) -> dict[str, Passage]:
    multilingual = audio.decode(corpus / "multilingual.mp3")
    return {
        "license": Passage("license", multilingual[: 30 * SR], LICENSE, "en"),
        "german": Passage("german", multilingual[30 * SR :], GERMAN, "de"),
        "jfk": Passage("jfk", audio.decode(corpus / "jfk.flac"), JFK, "en"),
        "korean": Passage("korean", audio.decode(corpus / "ko" / "leopard_test_ko.wav"), KOREAN, "ko"),
    }


def assemble(
    units: Sequence[Sequence[Passage | np.ndarray]], count: int, seed: int, pauses: tuple[float, float] = PAUSES_S
) -> tuple[np.ndarray, Placed]:
    """``count`` units in turn (a unit: passages, or stretches of other sound, back to back), each
    followed by a pause of a length drawn from ``pauses``; the samples and where each passage starts."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    placed: list[tuple[float, Passage]] = []
    at = 0
    for index in range(count):
        for part in units[index % len(units)]:
            if isinstance(part, Passage):
                placed.append((at / SR, part))
                part = part.samples
            parts.append(part)
            at += part.size
        pause = np.zeros(round(rng.uniform(*pauses) * SR), np.float32)
        parts.append(pause)
        at += pause.size
    return np.concatenate(parts), tuple(placed)
