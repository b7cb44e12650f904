"""The errors the API answers with: one class per stable code, messages in English and Korean.

Library errors (PyAV, soundfile, redis, pykka) are translated into these where they are caught,
so that the edge only ever renders a ``SayitError``.
"""

from __future__ import annotations

from typing import ClassVar


class SayitError(Exception):
    """Base of every error the API reports; ``code`` is stable, the message is for people."""

    code: ClassVar[str] = "INTERNAL"
    status: ClassVar[int] = 500
    message_en: ClassVar[str] = "The server failed to handle the request."
    message_ko: ClassVar[str] = "서버가 요청을 처리하지 못했습니다."

    def __init__(
        self, detail: str | None = None, *, retry_after_s: int | None = None, param: str | None = None
    ) -> None:
        super().__init__(detail or self.message_en)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.param = param  # the request field at fault, for clients that show it (OpenAI's error shape)

    def message(self, lang: str = "en") -> str:
        base = self.message_ko if lang == "ko" else self.message_en
        return f"{base} ({self.detail})" if self.detail and lang != "ko" else base


class FileRequired(SayitError):
    code, status = "FILE_REQUIRED", 400
    message_en = "A file is required: send it as the multipart field 'file'."
    message_ko = "파일이 필요합니다. multipart 필드 'file'로 보내 주세요."


class EmptyFile(SayitError):
    code, status = "EMPTY_FILE", 400
    message_en = "The uploaded file is empty."
    message_ko = "업로드한 파일이 비어 있습니다."


class InvalidFormat(SayitError):
    code, status = "INVALID_FORMAT", 400
    message_en = "The file is not audio in a supported format (WAV, FLAC, MP3, OGG/Opus, M4A, AAC)."
    message_ko = "지원하는 오디오 형식(WAV, FLAC, MP3, OGG/Opus, M4A, AAC)의 파일이 아닙니다."


class InvalidLanguage(SayitError):
    code, status = "INVALID_LANGUAGE", 400
    message_en = "Unsupported language: use ko, en or auto."
    message_ko = "지원하지 않는 언어입니다. ko, en, auto 중 하나를 사용해 주세요."


class InvalidRequest(SayitError):
    code, status = "INVALID_REQUEST", 400
    message_en = "The request is malformed."
    message_ko = "요청 형식이 올바르지 않습니다."


class CallbackNotAllowed(SayitError):
    code, status = "CALLBACK_NOT_ALLOWED", 400
    message_en = "The callbackUrl is not allowed."
    message_ko = "허용되지 않는 callbackUrl입니다."


class IdempotencyConflict(SayitError):
    code, status = "IDEMPOTENCY_CONFLICT", 409
    message_en = "This Idempotency-Key is in use by a request still running, or was used for a different upload."
    message_ko = "이 Idempotency-Key는 아직 처리 중인 요청이 쓰고 있거나 다른 업로드에 사용되었습니다."


class RequestTimeout(SayitError):
    code, status = "REQUEST_TIMEOUT", 408
    message_en = "The upload stalled: no data arrived for too long."
    message_ko = "업로드가 멈췄습니다. 너무 오랫동안 데이터가 도착하지 않았습니다."


class JobTimeout(SayitError):
    code, status = "JOB_TIMEOUT", 504
    message_en = "The job did not finish in time; it goes on and its result can still be fetched."
    message_ko = "작업이 제한 시간 안에 끝나지 않았습니다. 작업은 계속되며 결과는 나중에 조회할 수 있습니다."


class JobFailed(SayitError):
    code, status = "JOB_FAILED", 500
    message_en = "The transcription job failed."
    message_ko = "변환 작업이 실패했습니다."


class Unauthorized(SayitError):
    code, status = "UNAUTHORIZED", 401
    message_en = "A valid API key is required (Authorization: Bearer <key>)."
    message_ko = "유효한 API 키가 필요합니다 (Authorization: Bearer <key>)."


class NotFound(SayitError):
    code, status = "NOT_FOUND", 404
    message_en = "No such route."
    message_ko = "해당 경로가 없습니다."


class MethodNotAllowed(SayitError):
    code, status = "METHOD_NOT_ALLOWED", 405
    message_en = "This method is not allowed on this route."
    message_ko = "이 경로에서 허용되지 않는 메서드입니다."


class JobNotFound(SayitError):
    code, status = "JOB_NOT_FOUND", 404
    message_en = "No job with this id (jobs are kept 24 hours)."
    message_ko = "해당 작업이 없습니다 (작업은 24시간 보관됩니다)."


class FileTooLarge(SayitError):
    code, status = "FILE_TOO_LARGE", 413
    message_en = "The file is too large."
    message_ko = "파일이 너무 큽니다."


class AudioTooLong(SayitError):
    """A few MB of FLAC or Opus can hold many hours: the decoded length is bounded, not only the bytes."""

    code, status = "AUDIO_TOO_LONG", 413
    message_en = "The recording is too long for this server: send it in shorter parts."
    message_ko = "녹음이 너무 깁니다. 더 짧게 나누어 보내 주세요."


class UndecodableAudio(SayitError):
    code, status = "UNDECODABLE_AUDIO", 422
    message_en = "The audio could not be decoded: the file is truncated or corrupt."
    message_ko = "오디오를 디코딩할 수 없습니다. 파일이 잘렸거나 손상되었습니다."


class RateLimited(SayitError):
    """A client (its API key's tenant, or its address) past its uploads a minute or audio an hour."""

    code, status = "RATE_LIMITED", 429
    message_en = "Too many uploads or too much audio for now: retry after Retry-After."
    message_ko = "업로드나 오디오가 너무 많습니다. Retry-After 시간 후에 다시 시도해 주세요."


class ServerBusy(SayitError):
    code, status = "SERVER_BUSY", 503
    message_en = "Every transcription slot is busy and no queue worker is live: retry after Retry-After."
    message_ko = "모든 변환 슬롯이 사용 중이고 대기열 작업자가 없습니다. Retry-After 시간 후에 다시 시도해 주세요."


class NodeBusy(SayitError):
    """Refused before any work: the node already holds as many uploads or event streams as it takes."""

    code, status = "SERVER_BUSY", 503
    message_en = "This server is handling as many requests of this kind as it can: retry after Retry-After."
    message_ko = "서버가 처리할 수 있는 만큼의 요청을 이미 처리하고 있습니다. Retry-After 시간 후에 다시 시도해 주세요."


class QueueFull(SayitError):
    code, status = "QUEUE_FULL", 503
    message_en = "The queue is full: retry after the time in Retry-After."
    message_ko = "대기열이 가득 찼습니다. Retry-After 시간 후에 다시 시도해 주세요."


class ServiceUnavailable(SayitError):
    code, status = "SERVICE_UNAVAILABLE", 503
    message_en = "A part of the service is restarting or unreachable: retry shortly."
    message_ko = "서비스 일부가 재시작 중이거나 연결할 수 없습니다. 잠시 후 다시 시도해 주세요."


class EngineFailure(SayitError):
    code, status = "INTERNAL", 500
    message_en = "Transcription failed inside the engine."
    message_ko = "음성 인식 엔진 내부에서 변환에 실패했습니다."


class Internal(SayitError):
    """An unexpected failure; the detail is logged, never shown."""

    def message(self, lang: str = "en") -> str:
        return self.message_ko if lang == "ko" else self.message_en
