"""The HTTP app of `vitkit serve` (FastAPI): `POST /predict` takes one image, as the multipart field `file` or as a
raw body with an image content type (a VQA model also takes the field `question`; a Seq2Seq model takes text
instead: JSON {"text": ...}, text/plain or the field `text`), and answers the task's prediction row; `GET /health`
says what is served and how requests were batched. Uploads are read into memory up to a limit, never to disk."""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import ConfigError
from .batching import MicroBatcher
from .predictor import ImageDecodeError, Predictor, Upload, decode_image

RAW_TYPES = ("image/", "application/octet-stream")
EXPECTED = "expected multipart/form-data with the image in field 'file', or a raw body with an image/* content type"
TEXT_EXPECTED = "expected a JSON body {\"text\": ...}, a text/plain body, or multipart/form-data field 'text'"


def create_app(predictor: Predictor, *, max_batch: int = 8, batch_timeout_ms: float = 10.0,
               max_upload_mb: float = 10.0) -> FastAPI:
    """The app serving `predictor`, batching concurrent requests and refusing uploads over `max_upload_mb`."""
    batcher = MicroBatcher(predictor.predict, max_batch=max_batch, timeout_s=batch_timeout_ms / 1000)
    limit = int(max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="vitkit serve", lifespan=lifespan)
    app.state.batcher = batcher

    @app.get("/health")
    async def health() -> dict:
        sizes = batcher.batch_sizes
        return {"status": "ok", "task": predictor.task, "model": predictor.model, "format": predictor.format,
                "inputs": predictor.inputs, "max_batch": max_batch, "batch_timeout_ms": batch_timeout_ms,
                "max_upload_mb": max_upload_mb,
                "requests": sum(n * count for n, count in sizes.items()),
                "batches": {str(n): sizes[n] for n in sorted(sizes)}}

    @app.post("/predict")
    async def predict(request: Request, filename: str | None = None) -> dict:
        content_type = request.headers.get("content-type", "")
        body = await read_limited(request, limit)
        if predictor.inputs == "text":
            upload = Upload(filename or "text", text=text_of(body, content_type))
        else:
            upload = await asyncio.to_thread(image_upload, body, content_type, filename, predictor.inputs)
        try:
            prepared = await asyncio.to_thread(predictor.prepare, upload)
        except ConfigError as err:  # e.g. a text longer than the model's max_len
            raise HTTPException(422, str(err)) from err
        return await batcher.submit(prepared, upload.name)

    return app


def image_upload(body: bytes, content_type: str, filename: str | None, inputs: str) -> Upload:
    """The decoded image of a request (415 if it is none) and, for VQA, its multipart field `question`."""
    name, sent_as, data, fields = upload_of(body, content_type, filename)
    question = None
    if inputs == "image+question":
        question = _utf8(fields["question"][2], "field 'question'").strip() if "question" in fields else ""
        if not question:
            raise HTTPException(422, "a VQA model needs a non-empty multipart field 'question' next to 'file'")
    try:
        return Upload(name, image=decode_image(data, name), question=question)
    except ImageDecodeError as err:
        raise HTTPException(415, f"{err} (sent as {sent_as})") from err


def text_of(body: bytes, content_type: str) -> str:
    """The text to translate: a JSON body {"text": ...}, a text/plain body, or the multipart field `text`."""
    if not body:
        raise HTTPException(400, f"empty request body; {TEXT_EXPECTED}")
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            value = json.loads(body).get("text")
        except (ValueError, AttributeError) as err:
            raise HTTPException(400, f"body is not a JSON object ({err}); {TEXT_EXPECTED}") from err
        if not isinstance(value, str):
            raise HTTPException(422, f"JSON body without a string field 'text' (found {value!r}); {TEXT_EXPECTED}")
        return value
    if kind == "multipart/form-data":
        fields = parse_multipart(body, content_type)
        if "text" not in fields:
            raise HTTPException(422, f"multipart upload without field 'text'; {TEXT_EXPECTED}")
        body = fields["text"][2]
    elif kind != "text/plain":
        raise HTTPException(415, f"content type {content_type or 'none'}; {TEXT_EXPECTED}")
    return _utf8(body, "text")


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HTTPException(400, f"{what} is not UTF-8 text ({err}); expected UTF-8") from err


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared Content-Length) passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {int(declared)} bytes; expected at most {limit} (--max-upload-mb)")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"upload over {limit} bytes; expected at most {limit} (--max-upload-mb)")
    return bytes(body)


def upload_of(body: bytes, content_type: str, filename: str | None) -> tuple[str, str, bytes, dict]:
    """(file name, content type it was sent as, image bytes, every multipart field) of a request: the multipart
    field `file`, or the raw body of an image type (no fields)."""
    if not body:
        raise HTTPException(400, f"empty request body; {EXPECTED}")
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        parts = parse_multipart(body, content_type)
        if "file" not in parts:
            found = ", ".join(repr(k) for k in parts) or "no fields"
            raise HTTPException(422, f"multipart upload without field 'file' (found {found}); {EXPECTED}")
        name, sent_as, data = parts["file"]
        if not data:
            raise HTTPException(400, f"field 'file' ({name}) is empty; expected the bytes of an image")
        return filename or name, sent_as, data, parts
    if kind.startswith(RAW_TYPES):
        return filename or "upload", kind, body, {}
    raise HTTPException(415, f"content type {content_type or 'none'}; {EXPECTED}")


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str, str, bytes]]:
    """Field name -> (file name, its content type, bytes) of a multipart/form-data body, parsed in memory by
    python-multipart."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary; expected one in the content type")
    parts: list[dict] = []
    header = [bytearray(), bytearray()]

    def end_header() -> None:
        parts[-1]["headers"][bytes(header[0]).lower()] = bytes(header[1])
        header[0].clear()
        header[1].clear()

    callbacks = {
        "on_part_begin": lambda: parts.append({"headers": {}, "data": bytearray()}),
        "on_part_data": lambda data, start, end: parts[-1]["data"].extend(data[start:end]),
        "on_header_field": lambda data, start, end: header[0].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header[1].extend(data[start:end]),
        "on_header_end": end_header,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as err:
        raise HTTPException(400, f"malformed multipart/form-data body ({err}); {EXPECTED}") from err
    fields = {}
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename", b"upload").decode("utf-8", "replace")
        sent_as = part["headers"].get(b"content-type", b"no content type").decode("latin-1")
        fields[name] = (filename, sent_as, bytes(part["data"]))
    return fields
