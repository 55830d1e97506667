"""The BentoML service as it runs: a real `bentoml serve` process reading models from a real MLflow server.

One server per module (API key on, small limits, 1-second registry polling) serving two registered micro
models; a second, short-lived server checks readiness and the open (no key) mode.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from services import start_bentoml, stop, wait_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"INVOICE_MAX_BYTES": "2000000", "INVOICE_MAX_PAGES": "3", "INVOICE_MAX_PIXELS": "40000000"}
# BentoML's batching warm-up waits up to ~(5 o_a + o_b) per early request, with o_a, o_b scaled from the
# max latency (2 s and 1 s at the 60 s default): a 10 s budget keeps the first requests quick.


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def versions(mlflow_server, micro_config, tokenizer, generated, tmp_path_factory) -> list[str]:
    """Two untrained micro models (different seeds, 48-token decoding) registered through log_extractor;
    the first holds `champion`."""
    import torch

    import mlflow
    from training.model import build_model, save_model
    from training.predict import Prediction
    from training.registry import resolve, set_alias
    from training.schema import empty_label
    from training.tracking import log_extractor, use_tracking

    use_tracking()
    example = next((generated / "train").glob("*.png"))
    registered = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model, processor = build_model(micro_config.with_overrides(max_length=48), tokenizer)
        folder = tmp_path_factory.mktemp(f"micro{seed}")
        save_model(model, processor, folder)
        with mlflow.start_run(run_name=f"micro-{seed}"):
            logged = log_extractor(folder, example, Prediction(empty_label()))
        registered.append(str(logged["registered_version"]))
    set_alias("champion", resolve(registered[0]))
    return registered


def start_server(tmp_path: Path, mlflow_url: str, **env: str) -> tuple[subprocess.Popen, str, Path]:
    """The service with the tests' limits, 1-second registry polling and a short batching budget."""
    settings = {"INVOICE_MODEL_POLL_S": "1", "INVOICE_MAX_LATENCY_MS": "10000", **LIMITS, **env}
    return start_bentoml(tmp_path, mlflow_url, **settings)


@pytest.fixture(scope="module")
def server(versions, mlflow_server, tmp_path_factory):
    process, url, log = start_server(tmp_path_factory.mktemp("serve"), mlflow_server, INVOICE_API_KEY=KEY)
    try:
        wait_ready(url)
        yield url
    finally:
        stop(process)
        if os.environ.get("SHOW_SERVER_LOG"):
            print(log.read_text())


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def page_png(generated) -> bytes:
    return next((generated / "train").glob("*.png")).read_bytes()


def pdf_of(pages: int, source: bytes) -> bytes:
    image = Image.open(io.BytesIO(source)).convert("RGB")
    return encoded(image, "PDF", save_all=True, append_images=[image] * (pages - 1), resolution=120)


def extract(url: str, data: bytes | None, name: str = "upload", headers=AUTH) -> requests.Response:
    files = {"file": (name, data, "application/octet-stream")} if data is not None else None
    return requests.post(f"{url}/extract", files=files, headers=headers, timeout=120)


# ------------------------------------------------------------------ tests


def test_image_and_pdf_are_read_by_the_champion(server, versions, page_png, generated):
    response = extract(server, page_png, "invoice.png")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"fields", "confidence", "model", "pages", "latency_ms", "page_results"}
    assert body["model"]["name"] == "invoice-extractor" and body["model"]["version"] == versions[0]
    assert len(body["model"]["run_id"]) == 32 and body["pages"] == 1 and body["latency_ms"] > 0
    assert "total" in body["fields"] and "line_items" in body["fields"]
    assert all(0 <= p <= 1 for p in body["confidence"].values())

    twin = next((generated / "train").glob("*.pdf")).read_bytes()  # a generator PDF twin
    assert extract(server, twin, "invoice.pdf").json()["pages"] == 1
    two_pages = extract(server, pdf_of(2, page_png), "two.pdf").json()
    assert two_pages["pages"] == 2 and [p["page"] for p in two_pages["page_results"]] == [1, 2]
    assert {p["model_version"] for p in two_pages["page_results"]} == {versions[0]}
    frames = Image.open(io.BytesIO(page_png)).convert("L")
    tiff = encoded(frames, "TIFF", save_all=True, append_images=[frames], compression="tiff_deflate")
    assert extract(server, tiff, "scan.tiff").json()["pages"] == 2
    jpeg = encoded(Image.open(io.BytesIO(page_png)).convert("RGB"), "JPEG")
    assert extract(server, jpeg, "photo.jpg").status_code == 200


def png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    data = bytearray(encoded(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD_INPUTS = {
    "no file": (None, 400, "empty"),
    "empty file": (b"", 400, "empty"),
    "text file": (b"Invoice 42: please pay 100 EUR\n", 415, "unsupported_type"),
    "corrupt image": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, 400, "corrupt_image"),
    "broken pdf": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", 400, "broken_pdf"),
    "too many bytes (Content-Length)": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 2_200_000, 413, "too_many_bytes"),
    "too many bytes (file)": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 2_010_000, 413, "too_many_bytes"),
    "decompression bomb": (png_claiming(30_000, 30_000), 413, "too_many_pixels"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_json_4xx_and_the_service_keeps_serving(server, case, page_png):
    data, status, reason = BAD_INPUTS[case]
    response = extract(server, data, "bad.bin")
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason and body["error"]
    assert extract(server, page_png).status_code == 200


def test_too_many_pages(server, page_png):
    response = extract(server, pdf_of(4, page_png), "long.pdf")
    assert response.status_code == 413 and response.json() == {
        "error": "4 pages is over the limit of 3",
        "reason": "too_many_pages",
    }


def test_api_key(server, page_png):
    missing = extract(server, page_png, headers={})
    assert missing.status_code == 401 and missing.json()["reason"] == "unauthorized"
    assert "missing API key" in missing.json()["error"]
    wrong = extract(server, page_png, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]
    assert requests.post(f"{server}/reload", timeout=30).status_code == 401
    assert extract(server, page_png).status_code == 200
    for path in ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json"):
        assert requests.get(f"{server}{path}", timeout=10).status_code == 200, path


def test_openapi_lists_the_api(server):
    paths = requests.get(f"{server}/docs.json", timeout=10).json()["paths"]
    assert {"/extract", "/reload", "/model"} <= set(paths)
    schema = paths["/extract"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "file" in schema["properties"]


@pytest.mark.slow
def test_alias_switch_under_load_drops_nothing(server, versions, page_png):
    """8 clients in a loop while `champion` moves to the second version: every request succeeds, and once a
    client has seen the new version it never sees the old one again."""
    from training.registry import resolve, set_alias

    seen: list[list[str]] = [[] for _ in range(8)]
    failures: list[str] = []
    switched_at: list[float] = []
    stop_at = [time.time() + 90]

    def client(index: int) -> None:
        session = requests.Session()
        while time.time() < stop_at[0]:
            response = session.post(
                f"{server}/extract", files={"file": ("p.png", page_png)}, headers=AUTH, timeout=120
            )
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")
                continue
            seen[index].append(response.json()["model"]["version"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        while sum(map(len, seen)) < 16:
            time.sleep(0.2)
        set_alias("champion", resolve(versions[1]))
        switched_at.append(time.time())
        while not all(s and s[-1] == versions[1] for s in seen) and time.time() < stop_at[0]:
            time.sleep(0.2)
        stop_at[0] = min(stop_at[0], time.time() + 2)  # a few more requests on the new version
    finally:
        for thread in threads:
            thread.join()
    assert not failures, failures[:3]
    assert all(s[-1] == versions[1] for s in seen), "every client ends on the new version"
    for s in seen:
        first_new = s.index(versions[1])
        assert set(s[first_new:]) == {versions[1]}, s
    assert {v for s in seen for v in s} == set(versions)

    # /reload: move the alias back and pick it up now instead of at the next poll
    set_alias("champion", resolve(versions[0]))
    reloaded = requests.post(f"{server}/reload", headers=AUTH, timeout=60).json()
    assert reloaded["model"]["version"] == versions[0]
    assert extract(server, page_png).json()["model"]["version"] == versions[0]
    assert requests.post(f"{server}/reload", headers=AUTH, timeout=60).json()["changed"] is False

    metrics = requests.get(f"{server}/metrics", timeout=10).text
    buckets = {
        line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("invoice_model_batch_size_bucket")
    }
    assert buckets["1.0"] < buckets["+Inf"], "concurrent requests shared forward passes"


def test_metrics(server, page_png, versions):
    extract(server, b"plain text", "t.txt")
    extract(server, page_png)
    metrics = requests.get(f"{server}/metrics", timeout=10).text
    for name in (
        "invoice_pages_per_request_bucket",
        "invoice_model_batch_size_bucket",
        "invoice_model_batch_seconds_count",
        'invoice_rejected_requests_total{reason="unsupported_type"}',
        "invoice_model_loads_total",
        "bentoml_service_request_duration_seconds_bucket",
    ):
        assert name in metrics, name
    lines = metrics.splitlines()
    served = [
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("bentoml_service_request_total{")
        and 'endpoint="/extract"' in line
        and 'http_response_code="200"' in line
    ]
    assert served and sum(served) >= 1
    assert any(line.startswith("invoice_model_version ") for line in lines)


@pytest.mark.slow
def test_readiness_waits_for_a_model_and_no_key_means_open(versions, mlflow_server, tmp_path, page_png):
    """Pointed at an alias nobody holds yet, the service is alive but not ready and /extract says 503; once
    the alias is set, the poller loads it. Without INVOICE_API_KEY no request needs a key."""
    from training.registry import resolve, set_alias

    process, url, _ = start_server(
        tmp_path, mlflow_server, INVOICE_MODEL_URI="models:/invoice-extractor@staging"
    )
    try:
        time.sleep(2)
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{url}/readyz", timeout=5).status_code == 503
        response = extract(url, page_png, headers={})
        assert response.status_code == 503 and response.json()["reason"] == "not_ready"
        assert requests.post(f"{url}/model", timeout=10).json()["model"] is None
        set_alias("staging", resolve(versions[1]))
        wait_ready(url, seconds=60)
        response = extract(url, page_png, headers={})
        assert response.status_code == 200 and response.json()["model"]["version"] == versions[1]
    finally:
        stop(process)


def test_bento_builds_without_network(tmp_path):
    """`make bento`: the bento holds the service, the training package and params.yaml; no package is locked
    again and no model is inside, so building needs no network (every proxy here points at a closed port)."""
    environment = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        # BentoML calls uv while writing the bento's install script; the ML environment has no pip to fetch it
        "PATH": f"{REPO_ROOT / '.venvs' / 'tools' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        **{name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
    }
    built = subprocess.run(
        [
            str(Path(sys.executable).parent / "bentoml"),
            "build",
            "-f",
            "serving/bentofile.yaml",
            ".",
            "-o",
            "tag",
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = tmp_path / "bentoml" / "bentos" / name / version
    assert name == "invoice-extractor"
    for path in ("src/serving/service.py", "src/training/documents.py", "src/params.yaml", "bento.yaml"):
        assert (bento / path).exists(), path
    assert "serving.service:InvoiceService" in (bento / "bento.yaml").read_text()
