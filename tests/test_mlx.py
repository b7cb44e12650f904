"""The Apple Silicon engine, proven on MLX's CPU build: the converter, the engine, the pipeline."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from config import EngineSettings, Settings, load_settings
from sayit_actors import audio
from sayit_actors.engines import EngineUnavailable, TranscriptionOptions, create_engine
from sayit_actors.engines.mlx_convert import ConversionError, convert, read_ct2
from sayit_actors.engines.model_store import bundled_files
from sayit_actors.engines.textmetrics import word_error_rate
from tests.conftest import SLOTS
from tests.forms import upload
from tests.known_speech import JFK

ENGINES_MAX_WER = 0.25  # between the two engines' greedy transcripts of one clip

mx = pytest.importorskip("mlx.core", reason="MLX is not installed: make test installs its CPU build")
mlx_whisper = pytest.importorskip("mlx_whisper")


@pytest.fixture(scope="module")
def mlx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert("base", tmp_path_factory.mktemp("mlx") / "base")


@pytest.fixture(scope="module")
def mlx_engine(mlx_folder: Path):  # type: ignore[no-untyped-def]
    return create_engine(EngineSettings(engine="mlx", model=str(mlx_folder)), SLOTS, data_dir="unused")


def test_converted_weights_are_every_parameter_mlx_whisper_expects(mlx_folder: Path) -> None:
    from mlx.utils import tree_flatten
    from mlx_whisper.whisper import ModelDimensions, Whisper

    dims = json.loads((mlx_folder / "config.json").read_text())
    assert dims == {
        "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 512, "n_audio_head": 8, "n_audio_layer": 6,
        "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 512, "n_text_head": 8, "n_text_layer": 6,
    }  # fmt: skip
    expected = {k: v.shape for k, v in tree_flatten(Whisper(ModelDimensions(**dims)).parameters())}
    expected.pop("alignment_heads")  # set from the model's config, not a weight
    written = dict(np.load(mlx_folder / "weights.npz"))
    assert {k: v.shape for k, v in written.items()} == expected
    assert all(v.dtype == np.float16 for v in written.values())


def test_conversion_keeps_the_numbers(mlx_folder: Path) -> None:
    source = read_ct2(bundled_files()["model.bin"])
    written = dict(np.load(mlx_folder / "weights.npz"))
    stacked = source["encoder/layer_3/self_attention/linear_0/weight"]
    parts = [written[f"encoder.blocks.3.attn.{p}.weight"] for p in ("query", "key", "value")]
    assert np.array_equal(np.concatenate(parts), stacked)
    key_bias = np.split(source["decoder/layer_2/self_attention/linear_0/bias"], 3)[1]
    assert not key_bias.any()  # Whisper's key has no bias: nothing is dropped
    kv = source["decoder/layer_5/attention/linear_1/weight"]
    cross = [written[f"decoder.blocks.5.cross_attn.{p}.weight"] for p in ("key", "value")]
    assert np.array_equal(np.concatenate(cross), kv)
    conv = source["encoder/conv2/weight"]  # (out, in, kernel) → (out, kernel, in)
    assert np.array_equal(written["encoder.conv2.weight"], conv.transpose(0, 2, 1))
    assert np.array_equal(written["decoder.positional_embedding"], source["decoder/position_encodings/encodings"])
    assert not any("position_encodings" in k or "_positional" in k for k in written if k.startswith("encoder"))
    heads = json.loads((mlx_folder / "sayit.json").read_text())["alignment_heads"]
    assert heads and all(len(pair) == 2 for pair in heads)


def test_converter_refuses_what_it_cannot_convert(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="neither"):
        convert(str(tmp_path / "missing"), tmp_path / "out")
    not_whisper = bytearray(bundled_files()["model.bin"][:64])
    not_whisper[6:17] = b"BertSpec\0\0\0"
    with pytest.raises(ConversionError):
        read_ct2(bytes(not_whisper))
    assert not (tmp_path / "out").exists()


def test_choosing_mlx_without_it_installed_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine without mlx-whisper (every Linux node in production): hide the installed package.
    monkeypatch.setitem(sys.modules, "mlx_whisper", None)
    with pytest.raises(EngineUnavailable, match="pip install 'sayit\\[mlx\\]'"):
        create_engine(EngineSettings(engine="mlx"), 1)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_mlx_transcribes_jfk_through_the_actor_pipeline(
    make_client, settings: Settings, mlx_engine, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    mlx_settings = replace(settings, engine=EngineSettings(engine="mlx", model=mlx_engine.model))
    client: TestClient = await make_client(mlx_settings, engine=mlx_engine)
    health = (await (await client.get("/health")).json())["data"]
    assert health["services"]["whisper"]["engine"] == "mlx"
    data = await _post(client, corpus / "jfk.flac")
    assert word_error_rate(JFK, data["transcription"]) <= 0.1, data["transcription"]  # about 2 words in 22
    assert data["language"] == "en" and data["segments"][-1]["end"] <= 11.5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_two_engines_agree(mlx_engine, engine, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    # mlx-whisper has no beam search: compare both engines decoding greedily. Their float paths
    # differ (and differ between CPUs), so a near tie between two words may go either way:
    # "he could rise and seem to complain" against "he could rise if he seemed to complain" is
    # 3 edits in 19 words. A broken engine, a wrong weight or a wrong mel is far past the bound.
    # Both clips, a pause between them, make one window: MLX's CPU build takes most of a minute
    # for each window's encoder pass.
    options = replace(TranscriptionOptions.from_profile(load_settings({}).profiles["en"]), beam_size=1, patience=1.0)
    pause = np.zeros(audio.SAMPLE_RATE, np.float32)
    clips = [audio.decode(corpus / name) for name in ("stereo_diarization.wav", "jfk.flac")]
    samples = np.concatenate([clips[0], pause, clips[1]])
    assert samples.size < 30 * audio.SAMPLE_RATE
    mlx_text = mlx_engine.transcribe(samples, options).text
    ct2_text = engine.transcribe(samples, options).text
    assert word_error_rate(ct2_text, mlx_text) <= ENGINES_MAX_WER, (mlx_text, ct2_text)
    for heard in (mlx_text, ct2_text):  # each clip's words are in each transcript
        assert "wizard" in heard.lower() and "ask not what your country" in heard.lower(), heard


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_two_engines_detect_the_same_language(mlx_engine, engine, corpus: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    german = audio.decode(corpus / "multilingual.mp3")[31 * audio.SAMPLE_RATE :]
    for samples, expected in ((audio.decode(corpus / "jfk.flac"), "en"), (german, "de")):
        mlx_guess, ct2_guess = mlx_engine.detect_language(samples), engine.detect_language(samples)
        assert mlx_guess.language == ct2_guess.language == expected
        assert mlx_guess.probability == pytest.approx(ct2_guess.probability, abs=0.1)
        assert [lang for lang, _ in mlx_guess.candidates][:2] == [lang for lang, _ in ct2_guess.candidates][:2]


async def _post(client: TestClient, path: Path) -> dict:
    response = await client.post("/api/transcribe", data=upload(path, language="en"))
    assert response.status == 200, await response.text()
    return (await response.json())["data"]
