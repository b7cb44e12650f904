"""The bundled model's folder: written once, whole, by whichever node gets there first."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from config import load_settings
from sayit_actors import audio
from sayit_actors.engines import TranscriptionOptions, model_store
from sayit_actors.engines.faster import FasterWhisperEngine


def test_the_bundled_model_is_written_once_and_whole(tmp_path: Path) -> None:
    folder = model_store.bundled_dir(tmp_path)
    files = model_store.bundled_files()
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == files
    written = (folder / "model.bin").stat().st_mtime_ns
    assert model_store.bundled_dir(tmp_path) == folder
    assert (folder / "model.bin").stat().st_mtime_ns == written  # not written again
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]  # no staging folder left


def test_nodes_sharing_a_data_directory_may_write_it_at_once(tmp_path: Path) -> None:
    folders: list[Path] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            folders.append(model_store.bundled_dir(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(folders)) == 1 and len(folders) == 3
    assert (folders[0] / "model.bin").stat().st_size == len(model_store.bundled_files()["model.bin"])
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folders[0].name]


@pytest.mark.slow
def test_a_data_directory_that_cannot_be_written_loads_the_model_from_memory(
    tmp_path: Path, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data directory should be")
    settings = load_settings({"SAYIT_BATCH_LANES": "1"})
    engine = FasterWhisperEngine.load(settings.engine, workers=1, data_dir=not_a_folder)
    assert "loading it from memory" in caplog.text
    options = TranscriptionOptions.from_profile(settings.profiles["en"])
    assert "your country" in engine.transcribe(audio.decode(corpus / "jfk.flac"), options).text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing half-written beside it
