"""Real service processes for the tests and the benchmarks: free ports, `bentoml serve` of the service and a
Label Studio."""

from __future__ import annotations

import os
import secrets
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


def start_label_studio(workdir: Path, document_root: Path) -> tuple[subprocess.Popen, str, str]:
    """`label-studio start` from its own environment on a free loopback port, with its SQLite store in
    `workdir`, an admin user and a legacy API token, serving local files under `document_root`; returns
    (process, url, token) once /health answers (a first start migrates its database: about a minute)."""
    port, token = free_port(), secrets.token_hex(20)
    log = workdir / f"label-studio-{port}.log"
    environment = {
        **os.environ,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
    }
    command = [
        *("start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)),
        *("--data-dir", str(workdir / "data"), "--username", "reviewer@invoices.local"),
        *("--password", secrets.token_hex(8), "--user-token", token, "--enable-legacy-api-token"),
    ]
    process = subprocess.Popen(
        [str(REPO_ROOT / ".venvs" / "label-studio" / "bin" / "label-studio"), *command],
        cwd=workdir,
        env=environment,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if requests.get(f"{url}/health", timeout=5).ok:
                return process, url, token
        except requests.RequestException:
            pass
        time.sleep(1)
    stop(process)
    raise AssertionError("label-studio did not answer:\n" + log.read_text()[-4000:])


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
