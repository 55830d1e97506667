"""Real service processes for the tests and the benchmarks: free ports, `mlflow server`, `bentoml serve` of the
service, a Label Studio, and databases of the machine's PostgreSQL."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import sqlalchemy as sa

from training.results import create_database

REPO_ROOT = Path(__file__).resolve().parents[1]
# The PostgreSQL server every machine of this kind (and CI) runs: trust auth on the loopback.
POSTGRES_URL = os.environ.get("INVOICE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new, uniquely named database on the machine's PostgreSQL; dropped (connections and all) afterwards."""
    url = f"{POSTGRES_URL}/{prefix}_{secrets.token_hex(4)}"
    create_database(url)
    try:
        yield url
    finally:
        server = sa.create_engine(f"{POSTGRES_URL}/postgres", isolation_level="AUTOCOMMIT")
        with server.connect() as connection:
            connection.execute(sa.text(f'drop database if exists "{sa.make_url(url).database}" with (force)'))
        server.dispose()


def start_mlflow(root: Path, backend_store_uri: str) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port, serving artifacts from `root`/artifacts; returns (process, url)
    once /health answers."""
    port = free_port()
    log = root / f"mlflow-{port}.log"
    command = [
        *(
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--artifacts-destination",
            str(root / "artifacts"),
        ),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), *command],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", process, log, "mlflow server")
    return process, url


def wait_for(url: str, process: subprocess.Popen, log: Path, what: str, seconds: float = 300) -> None:
    """Until `url` answers 2xx; fails with the log's tail if the process dies or time runs out."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert process.poll() is None, f"{what} exited:\n{log.read_text()[-4000:]}"
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            pass
        time.sleep(0.5)
    stop(process)
    raise AssertionError(f"{what} did not answer:\n{log.read_text()[-4000:]}")


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
    wait_for(f"{url}/healthz", process, log, "bentoml serve", seconds=90)
    return process, url, log


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
    wait_for(f"{url}/health", process, log, "label-studio")
    return process, url, token


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
