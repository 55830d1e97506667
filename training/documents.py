"""Uploaded documents to page images, with limits: the service's front door and the DAG's quarantine check.

`load_pages(data, filename, max_bytes=..., max_pixels=..., max_pages=...)` accepts PNG, JPEG and TIFF (each
frame of a multi-page TIFF is a page) and PDF (each page rendered with pypdfium2 at `dpi`). The type comes from
the file's first bytes, never from its name. Anything it cannot read safely raises `DocumentError` with an
HTTP-style status and a message saying what is wrong:

| status | reason | when |
|---|---|---|
| 400 | `empty` | no bytes |
| 415 | `unsupported_type` | not PNG, JPEG, TIFF or PDF |
| 400 | `corrupt_image` / `broken_pdf` | the decoder fails (truncated, garbage, encrypted PDF) |
| 413 | `too_many_bytes` | more than `max_bytes` |
| 413 | `too_many_pixels` | a page over `max_pixels`, checked from the header / page box before decoding |
| 413 | `too_many_pages` | more than `max_pages` pages |

No torch here: the Airflow environment imports this module.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from training.schema import SCALAR_FIELDS

DEFAULT_DPI = 120  # the generator's resolution: an A4 page is 992 x 1403 px
KINDS = {"png": "image", "jpeg": "image", "tiff": "image", "pdf": "pdf"}
# PDFium is not thread-safe; the service decodes uploads on a thread pool.
_PDFIUM_LOCK = threading.Lock()


class DocumentError(ValueError):
    """A document that cannot be read: `status` is the HTTP status to answer, `reason` a stable keyword."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"error": self.message, "reason": self.reason}


@dataclass(frozen=True)
class Limits:
    """What a document may weigh. `from_params()`: env `INVOICE_MAX_BYTES`, `INVOICE_MAX_PIXELS`,
    `INVOICE_MAX_PAGES`, `INVOICE_PDF_DPI` over params.yaml `serve:` over these defaults."""

    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_pages: int = 20
    dpi: int = DEFAULT_DPI

    @classmethod
    def from_params(cls) -> Limits:
        from training.config import load_params, setting

        params = load_params("serve")
        return cls(
            max_bytes=setting("INVOICE_MAX_BYTES", params, "max_bytes", cls.max_bytes),
            max_pixels=setting("INVOICE_MAX_PIXELS", params, "max_pixels", cls.max_pixels),
            max_pages=setting("INVOICE_MAX_PAGES", params, "max_pages", cls.max_pages),
            dpi=setting("INVOICE_PDF_DPI", params, "dpi", cls.dpi),
        )

    def load(self, data: bytes, filename: str | None = None) -> list[Image.Image]:
        return load_pages(
            data,
            filename,
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
            max_pages=self.max_pages,
            dpi=self.dpi,
        )


def sniff(data: bytes) -> str | None:
    """`png`, `jpeg`, `tiff` or `pdf` from the magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if b"%PDF-" in data[:1024]:  # the PDF spec allows leading junk before the header
        return "pdf"
    return None


def _describe(data: bytes) -> str:
    head = data[:16]
    if head.isascii() and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return f"bytes starting {head[:8].hex(' ')}"


def load_pages(
    data: bytes,
    filename: str | None = None,
    *,
    max_bytes: int = Limits.max_bytes,
    max_pixels: int = Limits.max_pixels,
    max_pages: int = Limits.max_pages,
    dpi: int = DEFAULT_DPI,
) -> list[Image.Image]:
    """The document's pages as RGB images, or DocumentError. `filename` only makes messages clearer."""
    name = f"{filename}: " if filename else ""
    if not data:
        raise DocumentError(400, "empty", f"{name}empty document (0 bytes)")
    if len(data) > max_bytes:
        raise DocumentError(
            413, "too_many_bytes", f"{name}{len(data)} bytes is over the limit of {max_bytes}"
        )
    kind = sniff(data)
    if kind is None:
        raise DocumentError(
            415,
            "unsupported_type",
            f"{name}unsupported document type ({_describe(data)}): expected PNG, JPEG, TIFF or PDF",
        )
    if kind == "pdf":
        return _pdf_pages(data, name, max_pixels=max_pixels, max_pages=max_pages, dpi=dpi)
    return _image_pages(data, name, kind, max_pixels=max_pixels, max_pages=max_pages)


def _image_pages(data: bytes, name: str, kind: str, *, max_pixels: int, max_pages: int) -> list[Image.Image]:
    label = kind.upper()
    try:
        image = Image.open(io.BytesIO(data), formats=[label])  # reads the header only
        frames = getattr(image, "n_frames", 1)
        if frames > max_pages:
            raise DocumentError(
                413, "too_many_pages", f"{name}{frames} pages is over the limit of {max_pages}"
            )
        pages = []
        for index in range(frames):
            image.seek(index)
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise DocumentError(
                    413,
                    "too_many_pixels",
                    f"{name}{width}x{height} = {width * height} pixels is over the limit of {max_pixels}",
                )
            page = ImageOps.exif_transpose(image) if kind == "jpeg" else image
            pages.append(page.convert("RGB"))
        return pages
    except DocumentError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own guard, past 2x Image.MAX_IMAGE_PIXELS
        raise DocumentError(413, "too_many_pixels", f"{name}{error}") from error
    except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as error:
        raise DocumentError(400, "corrupt_image", f"{name}corrupt {label} image: {error}") from error


def _pdf_pages(data: bytes, name: str, *, max_pixels: int, max_pages: int, dpi: int) -> list[Image.Image]:
    import pypdfium2 as pdfium

    scale = dpi / 72
    with _PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as error:
            raise DocumentError(400, "broken_pdf", f"{name}broken PDF: {error}") from error
        try:
            count = len(document)
            if count == 0:
                raise DocumentError(400, "broken_pdf", f"{name}broken PDF: no pages")
            if count > max_pages:
                raise DocumentError(
                    413, "too_many_pages", f"{name}{count} pages is over the limit of {max_pages}"
                )
            pages = []
            for index in range(count):
                page = document[index]
                try:
                    width, height = (round(side * scale) for side in page.get_size())
                    if width * height > max_pixels:
                        raise DocumentError(
                            413,
                            "too_many_pixels",
                            f"{name}page {index + 1} renders to {width}x{height} = {width * height} pixels "
                            f"at {dpi} dpi, over the limit of {max_pixels}",
                        )
                    pages.append(page.render(scale=scale).to_pil().convert("RGB"))
                finally:
                    page.close()
            return pages
        except pdfium.PdfiumError as error:
            raise DocumentError(400, "broken_pdf", f"{name}broken PDF: {error}") from error
        finally:
            document.close()


def merge_pages(results: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """One invoice from its pages. A scalar field takes the non-null value read with the highest confidence
    (the earlier page on a tie); `line_items` are every page's items in page order, with the lowest confidence
    of the pages that contributed some. A field no page shows is null and has no confidence."""
    fields: dict[str, Any] = {name: None for name in SCALAR_FIELDS}
    confidence: dict[str, float] = {}
    for result in results:
        for name in SCALAR_FIELDS:
            value = result["fields"].get(name)
            if value is None:
                continue
            p = result["confidence"].get(name, 0.0)
            if fields[name] is None or p > confidence.get(name, 0.0):
                fields[name], confidence[name] = value, p
    items: list[dict[str, Any]] = []
    for result in results:
        if result["fields"].get("line_items"):
            items.extend(result["fields"]["line_items"])
            p = result["confidence"].get("line_items", 0.0)
            confidence["line_items"] = min(confidence.get("line_items", 1.0), p)
    fields["line_items"] = items or None
    return fields, confidence
