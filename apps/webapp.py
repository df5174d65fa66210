"""The web page and HTTP API around one exported model (FastAPI; `python -m apps.serve` runs it).

`POST /api/predict` takes an image as the multipart field `file`, turns it into MNIST's format
with the predict command's own code (`imaging.prepare_bytes`) and answers
`{label, index, confidence, probabilities, ood_score, ood_threshold, flagged, message, input}`:
the class name (from the model's metadata) and its index, the best class's calibrated
probability, every class's, the out-of-distribution score and the model's threshold, and
`input`, the 28x28 image the model saw. When the score is above the threshold the image does
not look like the training data: `flagged` is true, `label` and `index` are null and `message`
says so, unless the query asks `?guess=true`.
`POST /api/number` reads the uploaded image as a row of digits (a house number, a year) and
answers `{number, unknown, digits, ood_threshold}`: `number` is a string ("007" keeps its
zeros) with "?" at each position the model flags (its guess with `?guess=true`), `unknown`
lists those positions (0-based), and each of `digits` left to right has its `label` (null
when flagged), `confidence`, `ood_score`, `flagged`, `box` ([left, top, right, bottom] in px
of the image as decoded) and `input`, the 28x28 image the model saw.
Requests that arrive together are classified in one forward pass (`Batcher`). Errors are JSON
`{"error": message}`: 400 for no file, an empty file or a non-image, 413 for an upload over the
size limit or a decompression bomb, 422 when the image is blank, faint or a mere speck.
Nothing in a request is ever used as a path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from mnistpipe.deploy.imaging import ImageError, ImageTooLargeError, NoInkError, prepare_bytes
from mnistpipe.deploy.numbers import number_answer, row_of_bytes
from mnistpipe.deploy.onnx_model import Answer, Answers, OnnxClassifier, classify
from mnistpipe.deploy.serving import ServeParams

STATIC_DIR = Path(__file__).with_name("static")
T = TypeVar("T")
FORM_OVERHEAD = 64 * 1024  # bytes of multipart framing allowed beyond the file itself


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    largest: int = 0


@dataclass
class Batcher:
    """Collects images from concurrent requests and classifies them together.

    The first image of a batch waits up to `wait_s` for others (at most `max_batch` in all);
    the forward pass runs in a worker thread so the server keeps accepting requests.
    """

    classify: Callable[[np.ndarray], Sequence[Answer]]  # (N, 28, 28) uint8 -> N answers
    max_batch: int
    wait_s: float
    stats: BatchStats = field(default_factory=BatchStats)
    _queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def start(self) -> asyncio.Task:
        """Begin serving batches on the running event loop (a server's loop, or a test's)."""
        self._queue = asyncio.Queue()
        return asyncio.create_task(self.run())

    async def submit(self, image: np.ndarray) -> Answer:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    remaining = max(0.0, deadline - time.monotonic())
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            images = np.stack([image for image, _ in batch])
            try:
                answers = await asyncio.to_thread(self.classify, images)
            except Exception as exc:  # never leave a request waiting forever
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.requests += len(batch)
            self.stats.batches += 1
            self.stats.largest = max(self.stats.largest, len(batch))
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():  # the client may have gone
                    future.set_result(answer)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_upload(request: Request, limit: int) -> bytes | JSONResponse:
    """The bytes of the multipart field `file`, or the error response for this request."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        return error(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,}")
    body = bytearray()
    async for chunk in request.stream():  # counted as it comes: no length header is trusted
        body += chunk
        if len(body) > limit + FORM_OVERHEAD:
            return error(413, f"upload is over the limit of {limit:,} bytes")

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except Exception as exc:  # malformed multipart, too many parts
        return error(400, f"expected a multipart form with a field 'file' ({exc})")
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error(400, "expected a multipart form with a field 'file' holding an image")
        data = await upload.read()
    finally:
        await form.close()  # removes spooled temporary files
    if len(data) > limit:
        return error(413, f"upload of {len(data):,} bytes is over the limit of {limit:,}")
    return data


async def read_image(
    request: Request, limit: int, convert: Callable[[bytes, str], T]
) -> T | JSONResponse:
    """The upload turned into the model's input by `convert` (the predict command's
    `prepare_bytes` or `row_of_bytes`), or the error response: 413 for a decompression bomb,
    422 for no digit on it, 400 for anything else unreadable."""
    data = await read_upload(request, limit)
    if isinstance(data, JSONResponse):
        return data
    try:
        # Decoding can take a while (up to 40 Mpx): off the event loop.
        return await asyncio.to_thread(convert, data, "upload")
    except ImageTooLargeError as exc:
        return error(413, str(exc))
    except NoInkError as exc:
        return error(422, str(exc))
    except ImageError as exc:
        return error(400, str(exc))


def create_app(model: OnnxClassifier, health: dict[str, Any], params: ServeParams) -> FastAPI:
    """The app for one model; `health` is what `GET /healthz` reports beside its status."""
    limit = int(params.max_upload_mb * 1024 * 1024)
    batcher = Batcher(
        lambda images: classify(model, images), params.max_batch, params.batch_wait_ms / 1000
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = batcher.start()
        yield
        task.cancel()

    app = FastAPI(title=f"{model.metadata.dataset} classifier", lifespan=lifespan)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        stats = batcher.stats
        batching = {"requests": stats.requests, "batches": stats.batches, "largest": stats.largest}
        return {"status": "ok", **health, "batching": batching}

    @app.post("/api/predict")
    async def predict(request: Request) -> Any:
        image = await read_image(request, limit, prepare_bytes)
        if isinstance(image, JSONResponse):
            return image
        answer = await batcher.submit(image)
        answered = not answer.flagged or request.query_params.get("guess") == "true"
        probabilities = answer.probabilities.tolist()
        return {
            "label": model.classes[answer.best] if answered else None,
            "index": answer.best if answered else None,
            "confidence": round(probabilities[answer.best], 6),
            "probabilities": {
                name: round(p, 6) for name, p in zip(model.classes, probabilities, strict=True)
            },
            "ood_score": round(answer.score, 4),
            "ood_threshold": model.metadata.ood_threshold,
            "flagged": answer.flagged,
            "message": (
                f"this does not look like {model.metadata.subject}" if answer.flagged else None
            ),
            "input": image.tolist(),  # (28, 28) 0-255: what the model saw
        }

    @app.post("/api/number")
    async def number(request: Request) -> Any:
        digits = await read_image(request, limit, row_of_bytes)
        if isinstance(digits, JSONResponse):
            return digits
        answers = await asyncio.gather(*(batcher.submit(digit.image) for digit in digits))
        scores = np.array([answer.score for answer in answers], dtype=np.float32)
        probabilities = np.stack([answer.probabilities for answer in answers])
        found = Answers(probabilities, scores, model.metadata.ood_threshold)
        guess = request.query_params.get("guess") == "true"
        answer = number_answer(digits, found, model.classes, guess)
        for each, digit in zip(answer["digits"], digits, strict=True):
            each["input"] = digit.image.tolist()  # (28, 28) 0-255: what the model saw
        return answer | {"ood_threshold": model.metadata.ood_threshold}

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
