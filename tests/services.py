"""Real service processes for the tests and the benchmarks: free ports and `bentoml serve` of the service."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_bentoml(workdir: Path, tracking_uri: str, **env: str) -> tuple[subprocess.Popen, str, Path]:
    """`bentoml serve serving.service:InvoiceService` on a free loopback port, with its own BentoML home and the
    API key and model URI only when given in `env`; returns (process, url, log) once /healthz answers."""
    port = free_port()
    log = workdir / f"bento-{port}.log"
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BENTOML_HOME": str(workdir / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        **env,
    }
    for name in ("INVOICE_API_KEY", "INVOICE_MODEL_URI"):
        if name not in env:
            environment.pop(name, None)
    command = ["serve", "serving.service:InvoiceService", "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "bentoml"), *command],
        cwd=REPO_ROOT,
        env=environment,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            requests.get(f"{url}/healthz", timeout=5)
            return process, url, log
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            time.sleep(0.5)
    stop(process)
    raise AssertionError("bentoml serve did not answer:\n" + log.read_text())


def wait_ready(url: str, seconds: float = 90) -> None:
    """Until /readyz says a model is loaded."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError("service never became ready")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
