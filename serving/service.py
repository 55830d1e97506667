"""The BentoML service: `POST /extract` reads an invoice (PNG, JPEG, TIFF or PDF) with the champion model.

Two services in one process tree (`bentoml serve serving.service:InvoiceService`):

- `InvoiceService` (public): decodes the upload with `training.documents` (type from the bytes; limits on bytes,
  pixels and pages, all answered as `{"error", "reason"}` JSON with 400/413/415), checks the optional API key,
  merges the pages' predictions and reports which model version answered.
- `InvoiceReader` (internal, `INVOICE_WORKERS` workers, default 1): each worker holds the model and reads pages through an adaptive-batching API, so
  pages of concurrent requests share one forward pass. It loads `INVOICE_MODEL_URI` in a background thread
  (`/readyz` is 503 until then, and so is `/extract`), polls the registry every `INVOICE_MODEL_POLL_S` seconds and,
  when the alias has moved, loads the new version off the request path and swaps one reference: a batch
  already running finishes on the model it started with, the next batch uses the new one.

Environment (over params.yaml `serve:`): `INVOICE_MODEL_URI` (default `models:/invoice-extractor@champion`; a
`models:/name/3` version or a local transformers folder also work), `INVOICE_API_KEY`, `INVOICE_MODEL_POLL_S`,
`INVOICE_MAX_BATCH_SIZE`, `INVOICE_MAX_LATENCY_MS`, `INVOICE_MAX_BYTES`, `INVOICE_MAX_PIXELS`,
`INVOICE_MAX_PAGES`, `INVOICE_PDF_DPI`, `INVOICE_WORKERS` (processes of each service; the reader's split the
CPU cores between them, and `/reload` reaches one of them: the others follow the alias within
`INVOICE_MODEL_POLL_S`), and `MLFLOW_TRACKING_URI` for the registry.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import bentoml
from PIL.Image import Image
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from training.config import load_params, setting
from training.documents import DocumentError, Limits, merge_pages

logger = logging.getLogger("invoice.serving")
DEFAULT_MODEL_URI = "models:/invoice-extractor@champion"
# Open without the API key: probes, metrics and the API description.
OPEN_PATHS = {"/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/", "/docs"}


@dataclass(frozen=True)
class Settings:
    model_uri: str = DEFAULT_MODEL_URI
    api_key: str | None = None
    poll_s: float = 30.0
    max_batch_size: int = 8
    max_latency_ms: int = 60_000
    workers: int = 1
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls) -> Settings:
        params = load_params("serve")
        return cls(
            model_uri=os.environ.get("INVOICE_MODEL_URI") or DEFAULT_MODEL_URI,
            api_key=os.environ.get("INVOICE_API_KEY") or None,
            poll_s=setting("INVOICE_MODEL_POLL_S", params, "poll_s", 30.0),
            max_batch_size=setting("INVOICE_MAX_BATCH_SIZE", params, "max_batch_size", 8),
            max_latency_ms=setting("INVOICE_MAX_LATENCY_MS", params, "max_latency_ms", 60_000),
            workers=setting("INVOICE_WORKERS", params, "workers", 1),
            limits=Limits.from_params(),
        )


SETTINGS = Settings.from_env()
# BentoML wants max_batch_size > 1; INVOICE_MAX_BATCH_SIZE=1 turns batching off (one request per forward pass).
BATCHING: dict[str, Any] = (
    {"batchable": True, "max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms}
    if SETTINGS.max_batch_size > 1
    else {}
)

# ------------------------------------------------------------------ metrics (besides BentoML's own
# bentoml_service_request_total / _request_duration_seconds / _request_in_progress / _adaptive_batch_size)
PAGES_PER_REQUEST = bentoml.metrics.Histogram(
    name="invoice_pages_per_request",
    documentation="Pages per accepted /extract request",
    buckets=(1, 2, 3, 5, 10, 20, 50),
)
REJECTED = bentoml.metrics.Counter(
    name="invoice_rejected_requests",
    documentation="Requests refused before reaching the model, by reason",
    labelnames=["reason"],
)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="invoice_model_batch_size",
    documentation="Pages per forward pass of the model",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
BATCH_SECONDS = bentoml.metrics.Histogram(
    name="invoice_model_batch_seconds",
    documentation="Seconds per forward pass (encoder + greedy decoding of the batch)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
MODEL_VERSION = bentoml.metrics.Gauge(
    name="invoice_model_version",
    documentation="Registered version of the model serving (0 while none is loaded)",
    multiprocess_mode="mostrecent",
)
MODEL_LOADS = bentoml.metrics.Counter(
    name="invoice_model_loads",
    documentation="Model loads (first load and alias moves) by outcome",
    labelnames=["outcome"],
)


# ------------------------------------------------------------------ the model holder


@dataclass(frozen=True)
class Loaded:
    name: str
    version: str
    run_id: str
    model: Any = field(repr=False)
    processor: Any = field(repr=False)

    data_version: str | None = None

    def describe(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "data_version": self.data_version,
        }


def resolve_reference(uri: str):
    """(name, version, run_id) that `uri` points at now: a registry URI or a local model folder."""
    if Path(uri).is_dir():
        return ("local", str(Path(uri).resolve()), "")
    from training.registry import resolve

    ref = resolve(uri)
    return (ref.name, ref.version, ref.run_id)


def load_reference(name: str, version: str, run_id: str) -> Loaded:
    from training.model import load_pretrained
    from training.registry import ModelRef, load

    if name == "local":
        model, processor = load_pretrained(version)
    else:
        model, processor = load(ModelRef(name, version, run_id))
    model.eval()
    return Loaded(name, version, run_id, model, processor, data_version=training_data_version(run_id))


def training_data_version(run_id: str) -> str | None:
    """The data version the run that made the model trained on (its `data_version` param), for lineage."""
    if not run_id:
        return None
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id).data.params.get("data_version")


@bentoml.service(name="invoice_reader", workers=SETTINGS.workers, traffic={"timeout": 600})
class InvoiceReader:
    """Holds the model; pages of concurrent requests are read in one batch."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        if self.settings.workers > 1:  # one share of the cores each, not every worker on all of them
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.settings.workers))
        self.current: Loaded | None = None  # replaced whole, never mutated: readers take one snapshot
        self.last_error: str | None = None
        self._load_lock = threading.Lock()
        self._predict_lock = threading.Lock()
        self._stop = threading.Event()
        MODEL_VERSION.set(0)
        threading.Thread(target=self._watch, name="model-watch", daemon=True).start()

    def _watch(self) -> None:
        """Load the model, then follow the alias: retry every few seconds until a first model is loaded."""
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as error:  # the registry may be down or the alias unset: keep serving
                self.last_error = f"{type(error).__name__}: {error}"
                logger.warning("model refresh failed: %s", self.last_error)
            if self.current is not None and not self._is_alias():
                return  # a fixed version or folder never moves
            self._stop.wait(self.settings.poll_s if self.current else min(self.settings.poll_s, 2.0))

    def _is_alias(self) -> bool:
        return "@" in self.settings.model_uri or not (
            self.settings.model_uri.rsplit("/", 1)[-1].isdigit() or Path(self.settings.model_uri).is_dir()
        )

    def refresh(self) -> dict[str, Any]:
        """Resolve the model URI; when it names another version, load that one and swap it in."""
        with self._load_lock:
            target = resolve_reference(self.settings.model_uri)
            before = self.current
            if before is not None and (before.name, before.version, before.run_id) == target:
                return {"changed": False, "model": before.describe()}
            started = time.perf_counter()
            try:
                loaded = load_reference(*target)
            except Exception:
                MODEL_LOADS.labels(outcome="failed").inc()
                raise
            self.current = loaded  # the swap: one reference assignment
            self.last_error = None
            MODEL_LOADS.labels(outcome="loaded").inc()
            MODEL_VERSION.set(float(loaded.version) if loaded.version.isdigit() else -1)
            logger.info(
                "serving %s version %s (loaded in %.1f s)",
                loaded.name,
                loaded.version,
                time.perf_counter() - started,
            )
            return {
                "changed": True,
                "model": loaded.describe(),
                "previous": before.describe() if before else None,
            }

    def __is_ready__(self) -> bool:
        return self.current is not None

    @bentoml.api(**BATCHING)
    def read(self, pages: list[Image]) -> list[dict[str, Any]]:
        """One forward pass over the pages of every request in the batch; each answer names its model."""
        loaded = self.current
        if loaded is None:
            return [{"error": "not_ready"} for _ in pages]
        from training.predict import predict

        with self._predict_lock:  # one forward pass at a time (BentoML's batcher sends one batch at a time)
            started = time.perf_counter()
            predictions = predict(loaded.model, loaded.processor, pages, batch_size=len(pages))
        BATCH_SECONDS.observe(time.perf_counter() - started)
        BATCH_SIZE.observe(len(pages))
        model = loaded.describe()
        return [{"fields": p.fields, "confidence": p.confidence, "model": model} for p in predictions]

    @bentoml.api
    def reload(self) -> dict[str, Any]:
        return self.refresh()

    @bentoml.api
    def status(self) -> dict[str, Any]:
        current = self.current
        return {"model": current.describe() if current else None, "error": self.last_error}


# ------------------------------------------------------------------ the public service


class ModelInfo(BaseModel):
    name: str
    version: str
    run_id: str
    data_version: str | None = Field(None, description="the labeled-data version the model was trained on")


class PageResult(BaseModel):
    page: int
    fields: dict[str, Any]
    confidence: dict[str, float]
    model_version: str


class Extraction(BaseModel):
    fields: dict[str, Any] = Field(description="canonical invoice fields; null where no page shows one")
    confidence: dict[str, float] = Field(description="per field: lowest token probability of its value")
    model: ModelInfo = Field(description="the registered version that read the document")
    pages: int
    latency_ms: float
    page_results: list[PageResult] = Field(description="each page's own reading, before merging")


def error_response(status: int, message: str, reason: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status_code=status, headers=headers or None)


class GuardMiddleware:
    """API key (`Authorization: Bearer <INVOICE_API_KEY>`) on everything but probes, metrics and docs; uploads
    larger than the byte limit refused from their Content-Length before any parsing (413)."""

    def __init__(self, app, api_key: str | None = None, max_bytes: int = 20_000_000) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        # multipart framing around the file: allow some slack, the exact check is on the file itself
        self.max_body = max_bytes + 64 * 1024

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None:
            supplied = headers.get(b"authorization", b"")
            scheme, _, token = supplied.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                REJECTED.labels(reason="unauthorized").inc()
                message = "missing API key" if not supplied else "wrong API key"
                response = error_response(
                    401,
                    f"{message}: send 'Authorization: Bearer <key>'",
                    "unauthorized",
                    **{"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            REJECTED.labels(reason="too_many_bytes").inc()
            await _drain(receive, limit=4 * self.max_body)
            response = error_response(
                413, f"request body of {int(length)} bytes is over the limit", "too_many_bytes"
            )
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


async def _drain(receive, limit: int) -> None:
    """Read (and drop) the body so the client sees the answer instead of a reset connection."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


@bentoml.service(name="invoice_extractor", workers=SETTINGS.workers, traffic={"timeout": 600})
class InvoiceService:
    """Invoice extraction over HTTP: a document in, canonical fields with per-field confidence out."""

    reader = bentoml.depends(InvoiceReader)

    def __init__(self) -> None:
        self.settings = Settings.from_env()

    def _reject(self, ctx: bentoml.Context, error: DocumentError) -> JSONResponse:
        REJECTED.labels(reason=error.reason).inc()
        ctx.response.status_code = error.status
        return error_response(error.status, error.message, error.reason)

    @bentoml.api(route="/extract")
    # `Path = None`, not `Path | None`: BentoML 1.4 does not parse an optional file; None means no file sent.
    async def extract(self, ctx: bentoml.Context, file: Path = None) -> Extraction:  # noqa: RUF013
        """Read one invoice. Send it as multipart field `file` (PNG, JPEG, TIFF or PDF; every PDF page and TIFF
        frame is read). Bad documents get 400/413/415 with `{"error", "reason"}`; 503 until a model is loaded."""
        started = time.perf_counter()
        if file is None:
            return self._reject(
                ctx, DocumentError(400, "empty", "no document: send it as the multipart form field 'file'")
            )
        data = await anyio.Path(file).read_bytes()
        try:
            pages = await anyio.to_thread.run_sync(self.settings.limits.load, data, None)
        except DocumentError as error:
            return self._reject(ctx, error)
        # BentoML hands a PIL image to the reader process in its `format`, PNG when it has none: encoding and
        # decoding a page as PNG costs ~40 ms, as uncompressed PPM ~6 ms.
        for page in pages:
            page.format = "PPM"
        try:
            results = await self.reader.to_async.read(pages)
        except aiohttp.ClientConnectionError:
            # A kept-alive connection to the reader closed as this request went out: reading is idempotent, so
            # send it again once on a fresh connection rather than fail the invoice.
            results = await self.reader.to_async.read(pages)
        if any("error" in result for result in results):
            REJECTED.labels(reason="not_ready").inc()
            ctx.response.status_code = 503
            return error_response(503, "no model loaded yet: retry when /readyz answers 200", "not_ready")
        PAGES_PER_REQUEST.observe(len(pages))
        fields, confidence = merge_pages(results)
        return Extraction(
            fields=fields,
            confidence=confidence,
            model=ModelInfo(**results[-1]["model"]),
            pages=len(pages),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            page_results=[
                PageResult(
                    page=index + 1,
                    fields=result["fields"],
                    confidence=result["confidence"],
                    model_version=result["model"]["version"],
                )
                for index, result in enumerate(results)
            ],
        )

    @bentoml.api(route="/reload")
    async def reload(self) -> dict[str, Any]:
        """Resolve the model URI now and load the version it names if it changed (the poller does this every
        `INVOICE_MODEL_POLL_S` seconds)."""
        try:
            return await self.reader.to_async.reload()
        except Exception as error:  # registry unreachable, alias unset, broken artifact: say so
            return error_response(503, f"reload failed: {error}", "reload_failed")

    @bentoml.api(route="/model")
    async def model(self) -> dict[str, Any]:
        """The version serving now (null before the first load) and the last refresh error."""
        return await self.reader.to_async.status()


InvoiceService.add_asgi_middleware(
    GuardMiddleware, api_key=SETTINGS.api_key, max_bytes=SETTINGS.limits.max_bytes
)

if __name__ == "__main__":  # pragma: no cover - `python serving/service.py` prints the settings
    print(json.dumps(asdict(SETTINGS), default=str, indent=2))
