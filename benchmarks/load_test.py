"""A bounded load test of a running server: N requests from K concurrent clients on loopback.

    python -m benchmarks.load_test [--url http://127.0.0.1:8000] [--requests 200] [--clients 8]

Without `--url` it starts `python -m apps.serve` for `--model` on a free port itself.
`python -m benchmarks.benchmark --serve` runs it and records p50/p95 in the results.

Sends MNIST test digits (drawn dark on a light page, as a person's photo would be) to
`POST /api/predict` and checks every answer against the label the same model gives in this
process, so "correct" means "what the pipeline's predict command would say".
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx2
import numpy as np
from PIL import Image

from mnistpipe.data import processed
from mnistpipe.deploy.imaging import prepare_bytes
from mnistpipe.deploy.onnx_model import classify, load_onnx

REPO = Path(__file__).resolve().parents[1]  # where `python -m apps.serve` runs


@dataclass(frozen=True)
class LoadResult:
    requests: int
    clients: int
    correct: int
    failed: int  # error statuses and timeouts
    p50_ms: float
    p95_ms: float
    requests_per_s: float


def page_png(digit: np.ndarray) -> bytes:
    """A (28, 28) light-on-dark digit as dark ink on a 96x96 light page, PNG-encoded."""
    page = np.full((96, 96), 240, dtype=np.uint8)
    page[20:76, 24:80] = 240 - np.asarray(Image.fromarray(digit).resize((56, 56))) // 1.2
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, format="PNG")
    return buffer.getvalue()


def run_load(
    url: str,
    payloads: list[bytes],
    expected: list[str | None],
    requests: int = 200,
    clients: int = 8,
    timeout_s: float = 30.0,
) -> LoadResult:
    """Send `requests` uploads (cycling through `payloads`) from `clients` threads."""

    def one(index: int, client: httpx2.Client) -> tuple[float, bool, bool]:
        body = payloads[index % len(payloads)]
        started = time.perf_counter()
        try:
            response = client.post(f"{url}/api/predict", files={"file": ("d.png", body)})
        except httpx2.HTTPError:
            return time.perf_counter() - started, False, True
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            return seconds, False, True
        return seconds, response.json()["label"] == expected[index % len(expected)], False

    def worker(indices: range) -> list[tuple[float, bool, bool]]:
        with httpx2.Client(timeout=timeout_s) as client:
            return [one(index, client) for index in indices]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        shares = [range(k, requests, clients) for k in range(clients)]
        outcomes = [outcome for share in pool.map(worker, shares) for outcome in share]
    elapsed = time.perf_counter() - started
    latencies = sorted(seconds * 1000 for seconds, _, _ in outcomes)
    return LoadResult(
        requests=requests,
        clients=clients,
        correct=sum(ok for _, ok, _ in outcomes),
        failed=sum(bad for _, _, bad in outcomes),
        p50_ms=round(statistics.median(latencies), 1),
        p95_ms=round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        requests_per_s=round(requests / elapsed, 1),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model: Path, *extra: str, timeout_s: float = 60) -> Iterator[str]:
    """`python -m apps.serve` on a free loopback port, until the block ends; yields its URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "apps.serve",
        "--model",
        str(model),
        "--port",
        str(port),
        *extra,
    ]
    # The log is a file, not a pipe: a full pipe would block the server.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=REPO, stderr=log, text=True)
        try:
            wait_until_up(f"http://127.0.0.1:{port}", process, log, timeout_s)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=10)


def wait_until_up(url: str, process: subprocess.Popen, log: IO[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx2.get(f"{url}/healthz", timeout=1).raise_for_status()
            return
        except httpx2.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                log.seek(0)
                raise RuntimeError(f"the server did not start: {log.read()}") from None
            time.sleep(0.2)


def expected_labels(model_path: Path, payloads: list[bytes]) -> list[str | None]:
    """What the predict command's code says for each payload, computed in this process: the
    class name, or None where the OOD score flags the image (as the API's `label`)."""
    model = load_onnx(model_path)
    images = np.stack([prepare_bytes(body, "payload") for body in payloads])
    answers = classify(model, images)
    return [None if answer.flagged else model.classes[answer.best] for answer in answers]


def mnist_payloads(data_dir: Path, count: int = 50) -> list[bytes]:
    test = processed.load_split(data_dir, "test")
    return [page_png(image) for image in test.images[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", type=Path, default=Path("models/model.onnx"))
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    payloads = mnist_payloads(args.data)
    expected = expected_labels(args.model, payloads)
    if args.url:
        result = run_load(args.url, payloads, expected, args.requests, args.clients)
    else:
        with running_server(args.model) as url:
            result = run_load(url, payloads, expected, args.requests, args.clients)
    print(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    main()
