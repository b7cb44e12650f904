"""Converting a CTranslate2 Whisper model (the bundled base by default) to mlx-whisper's format.

A Mac runs the same model as every other node without a model hub: this reads CTranslate2's
``model.bin`` and writes a folder mlx-whisper loads, ``config.json`` (the model dimensions)
and ``weights.npz`` (its parameters by name).

CTranslate2's ``model.bin``: a header (binary version, spec name, revision, variable count),
then per variable its name, rank, dims, a dtype code, a byte count and the bytes; then aliases.
What differs from mlx-whisper's layout:
- self-attention's ``linear_0`` holds query, key and value stacked (Whisper's key has no bias:
  its slice of the stacked bias is zero); cross-attention's ``linear_0`` is the query and
  ``linear_1`` key and value stacked; the last linear is the output projection;
- Conv1d weights are (out, in, kernel) there and (out, kernel, in) in MLX;
- the decoder's position encodings are learned weights; the encoder's are sinusoids that
  mlx-whisper computes itself, so they are not written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from sayit_actors.engines import model_store

# CTranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 has no numpy dtype.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
SPEC = "WhisperSpec"


class ConversionError(ValueError):
    """The model is not a CTranslate2 Whisper model this converter understands."""


def read_ct2(model_bin: bytes) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin``, aliases resolved, by name."""
    view = memoryview(model_bin)
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from(fmt, view, offset)
        offset += struct.calcsize(fmt)
        return int(value)

    def text() -> str:
        nonlocal offset
        length = take("<H")
        value = bytes(view[offset : offset + length - 1]).decode()
        offset += length
        return value

    version = take("<I")
    if version < 5:
        raise ConversionError(f"CTranslate2 binary version {version} is too old (5 or newer)")
    spec = text()
    if spec != SPEC:
        raise ConversionError(f"the model is a {spec}, not a {SPEC}")
    take("<I")  # revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = text()
        shape = tuple(take("<I") for _ in range(take("<B")))
        code = take("<B")
        size = take("<I")
        if code not in _DTYPES:
            raise ConversionError(f"{name}: dtype code {code} is not supported (float16/32 and integers are)")
        variables[name] = np.frombuffer(view[offset : offset + size], dtype=_DTYPES[code]).reshape(shape)
        offset += size
    for _ in range(take("<I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    if any(name.endswith("weight_scale") for name in variables):
        raise ConversionError("the model is quantized (int8 weights): convert a float16 or float32 model")
    return variables


def _layers(variables: dict[str, np.ndarray], part: str) -> int:
    layer = re.compile(rf"^{part}/layer_(\d+)/")
    return len({match.group(1) for name in variables if (match := layer.match(name))})


def _linear(variables: dict[str, np.ndarray], src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.weight", variables[f"{src}/weight"]
    yield f"{dst}.bias", variables[f"{src}/bias"]


def _norm(variables: dict[str, np.ndarray], src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.weight", variables[f"{src}/gamma"]
    yield f"{dst}.bias", variables[f"{src}/beta"]


def _qkv(variables: dict[str, np.ndarray], src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    """Self-attention: query, key and value stacked in one linear; the key has no bias."""
    q, k, v = np.split(variables[f"{src}/weight"], 3)
    qb, _, vb = np.split(variables[f"{src}/bias"], 3)
    yield from ((f"{dst}.query.weight", q), (f"{dst}.query.bias", qb), (f"{dst}.key.weight", k))
    yield from ((f"{dst}.value.weight", v), (f"{dst}.value.bias", vb))


def _kv(variables: dict[str, np.ndarray], src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    """Cross-attention: key and value stacked in one linear; the key has no bias."""
    k, v = np.split(variables[f"{src}/weight"], 2)
    _, vb = np.split(variables[f"{src}/bias"], 2)
    yield from ((f"{dst}.key.weight", k), (f"{dst}.value.weight", v), (f"{dst}.value.bias", vb))


def _block(variables: dict[str, np.ndarray], src: str, dst: str, cross: bool) -> Iterator[tuple[str, np.ndarray]]:
    yield from _qkv(variables, f"{src}/self_attention/linear_0", f"{dst}.attn")
    yield from _linear(variables, f"{src}/self_attention/linear_1", f"{dst}.attn.out")
    yield from _norm(variables, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
    if cross:
        yield from _linear(variables, f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
        yield from _kv(variables, f"{src}/attention/linear_1", f"{dst}.cross_attn")
        yield from _linear(variables, f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
        yield from _norm(variables, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
    yield from _linear(variables, f"{src}/ffn/linear_0", f"{dst}.mlp1")
    yield from _linear(variables, f"{src}/ffn/linear_1", f"{dst}.mlp2")
    yield from _norm(variables, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")


def mlx_weights(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mlx-whisper's parameters, by name, from CTranslate2's variables."""
    out: dict[str, np.ndarray] = {}
    for i in (1, 2):  # (out, in, kernel) → (out, kernel, in)
        out[f"encoder.conv{i}.weight"] = np.ascontiguousarray(variables[f"encoder/conv{i}/weight"].transpose(0, 2, 1))
        out[f"encoder.conv{i}.bias"] = variables[f"encoder/conv{i}/bias"]
    for i in range(_layers(variables, "encoder")):
        out.update(_block(variables, f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False))
    out.update(_norm(variables, "encoder/layer_norm", "encoder.ln_post"))
    out["decoder.token_embedding.weight"] = variables["decoder/embeddings/weight"]
    out["decoder.positional_embedding"] = variables["decoder/position_encodings/encodings"]
    for i in range(_layers(variables, "decoder")):
        out.update(_block(variables, f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True))
    out.update(_norm(variables, "decoder/layer_norm", "decoder.ln"))
    return out


def dimensions(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """mlx-whisper's ``ModelDimensions`` of the model."""
    conv1 = variables["encoder/conv1/weight"]
    embeddings = variables["decoder/embeddings/weight"]
    return {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": int(variables["encoder/num_heads"]),
        "n_audio_layer": _layers(variables, "encoder"),
        "n_vocab": int(embeddings.shape[0]),
        "n_text_ctx": int(variables["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(embeddings.shape[1]),
        "n_text_head": int(variables["decoder/num_heads"]),
        "n_text_layer": _layers(variables, "decoder"),
    }


def _source_files(model: str) -> tuple[bytes, dict[str, object]]:
    if model == model_store.BUNDLED:
        files = model_store.bundled_files()
    else:
        folder = model_store.local_model_dir(model)
        if folder is None:
            raise ConversionError(f"{model!r} is neither 'base' (bundled) nor a folder holding a CTranslate2 model.bin")
        files = {
            name: (folder / name).read_bytes() for name in ("model.bin", "config.json") if (folder / name).exists()
        }
    config = json.loads(files.get("config.json", b"{}"))
    return files["model.bin"], config


def convert(model: str, out_dir: Path) -> Path:
    """Write ``model`` (``base`` or a CTranslate2 folder) as an MLX folder at ``out_dir``, atomically."""
    model_bin, ct2_config = _source_files(model)
    variables = read_ct2(model_bin)
    weights = mlx_weights(variables)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mlx-", dir=out_dir.parent))
    try:
        save_npz: Callable[..., None] = np.savez  # numpy's stub types **arrays as its keyword options
        save_npz(staging / "weights.npz", **weights)
        (staging / "config.json").write_text(json.dumps(dimensions(variables), indent=2))
        meta = {"source": model, "alignment_heads": ct2_config.get("alignment_heads")}
        (staging / "sayit.json").write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def ensure_converted(model: str, data_dir: str | Path) -> Path:
    """The MLX folder for ``model`` under ``<data_dir>/mlx/``, converted on first use."""
    name = model if model == model_store.BUNDLED else Path(model).expanduser().resolve().name
    out_dir = Path(data_dir) / "mlx" / name
    if not ((out_dir / "weights.npz").is_file() and (out_dir / "config.json").is_file()):
        convert(model, out_dir)
    return out_dir
