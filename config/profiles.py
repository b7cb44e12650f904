"""Language profiles: the decoding settings the app asks for by language.

A profile names a sampling temperature *and* beam-search settings. Whisper samples whenever
the temperature is above zero, and then ``beam_size`` and ``patience`` do nothing. So a
profile is applied as a temperature ladder: the first pass is beam search at temperature 0
(``beam_size``, ``patience``), and the profile's temperature is the first fallback, sampled
with ``best_of`` candidates, followed by steps of ``FALLBACK_STEP`` up to 1.0. A window falls
back only when it fails Whisper's compression-ratio or log-probability checks.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

FALLBACK_STEP = 0.2
LANGUAGES = ("ko", "en", "auto")  # the languages a request may ask for; each has a profile


@dataclass(frozen=True)
class LanguageProfile:
    name: str
    temperature: float
    beam_size: int
    patience: float
    best_of: int
    condition_on_previous_text: bool

    def temperatures(self) -> tuple[float, ...]:
        """Beam search first, then the profile's temperature, then higher ones."""
        ladder = [0.0]
        t = self.temperature
        while t <= 1.0 + 1e-9:
            if t > 0:
                ladder.append(round(t, 2))
            t += FALLBACK_STEP
        return tuple(ladder)

    @property
    def language(self) -> str | None:
        """The language to force, or None to let the model detect it."""
        return None if self.name == "auto" else self.name


def _profile(name: str, raw: dict[str, Any]) -> LanguageProfile:
    try:
        profile = LanguageProfile(
            name=name,
            temperature=float(raw["temperature"]),
            beam_size=int(raw["beam_size"]),
            patience=float(raw["patience"]),
            best_of=int(raw["best_of"]),
            condition_on_previous_text=bool(raw["condition_on_previous_text"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"language profile {name!r}: missing or bad field ({exc})") from exc
    if not 0.0 <= profile.temperature <= 1.0:
        raise ValueError(f"language profile {name!r}: temperature must be within 0..1")
    if profile.beam_size < 1 or profile.best_of < 1 or profile.patience <= 0:
        raise ValueError(f"language profile {name!r}: beam_size, best_of and patience must be positive")
    return profile


def load_profiles(overrides: dict[str, Any] | None = None) -> dict[str, LanguageProfile]:
    """The shipped profiles, with fields overridden per language from a TOML table."""
    text = resources.files("config").joinpath("profiles.toml").read_text(encoding="utf-8")
    raw: dict[str, Any] = tomllib.loads(text)
    for name, fields in (overrides or {}).items():
        if name not in LANGUAGES:
            raise ValueError(f"language profile {name!r}: unknown language (expected one of {', '.join(LANGUAGES)})")
        raw[name] = {**raw.get(name, {}), **fields}
    return {name: _profile(name, raw[name]) for name in LANGUAGES}
