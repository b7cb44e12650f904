#!/usr/bin/env bash
# Continuous batching on a CUDA GPU: an hour of speech through one node's job path, then through
# faster-whisper's BatchedInferencePipeline directly, on the same GPU with the same model.
#
# CUDA float16, the bundled Whisper base, the GPU's batch size (16 unless BATCH_SIZE says otherwise),
# a slot per window of a full batch (SLOTS, default the batch size). The recording is built from the
# corpus as bench/longform.py builds its recordings (FLAC, so that an hour stays under the upload
# limit), timed from just before the POST until a status poll sees it completed; the pipeline gets
# the same decoded file (decode timed too), its default voice-activity filter and the same batch
# size, beam size and patience. Prints audio seconds per second for both and their ratio, and the
# word error rate of the job's transcript against the pipeline's. Nothing is downloaded.
#
#     bash bench/gpu.sh                  # MINUTES=60 BATCH_SIZE=16 SLOTS=16 RUNS=1
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export GPU_MINUTES=${MINUTES:-60} GPU_BATCH_SIZE=${BATCH_SIZE:-16} GPU_RUNS=${RUNS:-1}
export GPU_SLOTS=${SLOTS:-$GPU_BATCH_SIZE}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

exec "$PYTHON" - <<'PY'
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path("bench").resolve()))
import ctranslate2

if ctranslate2.get_cuda_device_count() == 0:
    sys.exit("CTranslate2 sees no CUDA device (or lacks its CUDA libraries): nothing to measure")

import common
import longform
import soundfile
from faster_whisper import BatchedInferencePipeline

from config import load_settings
from sayit_actors import audio
from sayit_actors.engines.faster import FasterWhisperEngine
from sayit_actors.engines.textmetrics import word_error_rate

minutes, batch, slots, runs = (float(os.environ["GPU_MINUTES"]), int(os.environ["GPU_BATCH_SIZE"]),
                               int(os.environ["GPU_SLOTS"]), int(os.environ["GPU_RUNS"]))
node_env = {"SAYIT_DEVICE": "cuda", "SAYIT_COMPUTE_TYPE": "float16", "SAYIT_BATCH_SIZE": str(batch),
            "MAX_CONCURRENT_CHUNKS": str(slots)}
settings = load_settings({"HF_HUB_OFFLINE": "1", **node_env})
queued = common.server_options(settings, queued=True)

with common.workspace() as folder:
    samples, names = longform.build_recording(longform.load_clips(), minutes)
    flac = folder / f"gpu-{minutes:g}min.flac"
    soundfile.write(flac, samples, audio.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    duration_s = samples.shape[0] / audio.SAMPLE_RATE
    print(f"recording: {duration_s:.0f} s from {len(names)} clips, {flac.stat().st_size / common.MB:.1f} MB FLAC")
    body, content_type = common.multipart_body(flac, "en")
    warm = common.multipart_body(common.CORPUS / "jfk.flac", "en")
    job_walls, pipe_walls = [], []
    with common.sayit_server(folder, **node_env) as server:
        whisper = server.health["services"]["whisper"]
        print(f"node: {whisper}, {server.health['services']['workers']['slots']} slots, batch size {batch}")
        if (whisper.get("device"), whisper.get("computeType")) != ("cuda", "float16"):
            sys.exit(f"the node did not load CUDA float16: {whisper}")
        status, _ = common.request(server.port, "POST", "/api/transcribe", *warm, timeout_s=common.REQUEST_TIMEOUT_S)
        if status != 200:
            sys.exit(f"warm-up answered {status}")
        engine = FasterWhisperEngine.load(settings.engine, workers=1)
        pipeline = BatchedInferencePipeline(engine.whisper_model)
        print(f"pipeline: Whisper {engine.model} {engine.compute_type} on {engine.device}, batch size {batch}")

        def run_pipeline() -> str:
            segments, _ = pipeline.transcribe(
                audio.decode(flac), language=queued.language, beam_size=queued.beam_size, patience=queued.patience,
                temperature=list(queued.temperatures[:1]), without_timestamps=queued.without_timestamps,
                batch_size=batch,
            )
            return " ".join(s.text.strip() for s in segments).strip()

        run_pipeline()  # warm-up: CUDA kernels and allocator
        for r in range(runs):
            for side in ("job", "pipeline") if r % 2 == 0 else ("pipeline", "job"):
                started = time.perf_counter()
                if side == "job":
                    _, wall, data = common.run_job(server.port, body, content_type, poll_s=0.1)
                    job_text = str(data.get("transcription", "")).strip()
                    job_walls.append(wall)
                else:
                    pipe_text = run_pipeline()
                    pipe_walls.append(time.perf_counter() - started)
                wall = (job_walls if side == "job" else pipe_walls)[-1]
                print(f"run {r + 1}/{runs} {side:>8}: {wall:7.1f} s, {duration_s / wall:7.1f} audio-s/s")
    problems = server.log_problems()

job, pipe = sorted(job_walls)[len(job_walls) // 2], sorted(pipe_walls)[len(pipe_walls) // 2]
print(f"job path:  {duration_s / job:.1f} audio-s/s ({job:.1f} s)")
print(f"pipeline:  {duration_s / pipe:.1f} audio-s/s ({pipe:.1f} s)")
print(f"ratio job / pipeline throughput: {pipe / job:.3f} (wall job / pipeline {job / pipe:.3f})")
print(f"WER job vs pipeline: {word_error_rate(pipe_text, job_text) * 100:.2f} %")
common.print_log_problems(problems)
PY
