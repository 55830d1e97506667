"""Uploads to page images: every accepted type, and every way a document is refused before it costs much."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from training.documents import DocumentError, Limits, load_pages, sniff


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def page(color: str = "white", size: tuple[int, int] = (200, 300)) -> Image.Image:
    return Image.new("RGB", size, color)


def pdf(pages: int = 1, size: tuple[int, int] = (200, 300)) -> bytes:
    images = [page(size=size) for _ in range(pages)]
    return encoded(images[0], "PDF", save_all=True, append_images=images[1:], resolution=72)


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header (with a correct CRC) claims another size: a decompression bomb."""
    data = bytearray(encoded(page(size=(1, 1)), "PNG"))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_images_give_one_rgb_page(fmt):
    pages = load_pages(encoded(page("red").convert("L" if fmt == "TIFF" else "RGB"), fmt), "x")
    assert len(pages) == 1 and pages[0].mode == "RGB" and pages[0].size == (200, 300)


def test_multi_page_tiff_and_pdf_give_every_page():
    frames = [page(c) for c in ("red", "green", "blue")]
    tiff = encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert [p.getpixel((5, 5)) for p in load_pages(tiff)] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    pages = load_pages(pdf(pages=2), dpi=144)  # 200x300 pt at 144 dpi = 400x600 px
    assert [p.size for p in pages] == [(400, 600), (400, 600)] and pages[0].mode == "RGB"


def test_type_comes_from_the_bytes_not_the_name():
    assert sniff(encoded(page(), "PNG")) == "png" and sniff(b"junk\n%PDF-1.4 ...") == "pdf"
    assert len(load_pages(encoded(page(), "JPEG"), "invoice.pdf")) == 1


@pytest.mark.parametrize(
    ("data", "status", "reason", "words"),
    [
        (b"", 400, "empty", "empty"),
        (b"Dear customer, please pay.\n", 415, "unsupported_type", "text"),
        (b"GIF89a" + bytes(40), 415, "unsupported_type", "expected PNG, JPEG, TIFF or PDF"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), 400, "corrupt_image", "corrupt PNG"),
        (b"%PDF-1.7\n1 0 obj garbage", 400, "broken_pdf", "broken PDF"),
        (png_claiming(20_000, 20_000), 413, "too_many_pixels", "400000000 pixels"),
        (png_claiming(100_000, 100_000), 413, "too_many_pixels", "pixels"),
    ],
)
def test_bad_documents_are_refused_with_a_reason(data, status, reason, words):
    with pytest.raises(DocumentError) as caught:
        load_pages(data, "upload.bin")
    assert (caught.value.status, caught.value.reason) == (status, reason)
    assert words in caught.value.message and caught.value.message.startswith("upload.bin: ")
    assert caught.value.as_dict()["error"] == caught.value.message


def test_truncated_jpeg_is_corrupt():
    data = encoded(page("red", (600, 800)), "JPEG")
    with pytest.raises(DocumentError, match="corrupt JPEG") as caught:
        load_pages(data[: len(data) // 2])
    assert caught.value.status == 400


def test_limits_on_bytes_pages_and_rendered_pixels():
    with pytest.raises(DocumentError, match=r"over the limit of 100$") as caught:
        load_pages(encoded(page(), "PNG"), max_bytes=100)
    assert caught.value.status == 413 and caught.value.reason == "too_many_bytes"
    with pytest.raises(DocumentError, match="3 pages is over the limit of 2") as caught:
        load_pages(pdf(pages=3), max_pages=2)
    assert caught.value.reason == "too_many_pages"
    with pytest.raises(DocumentError, match="page 1 renders to") as caught:  # a PDF page box as a bomb
        load_pages(pdf(size=(14_000, 14_000)), max_pixels=40_000_000)
    assert caught.value.reason == "too_many_pixels"


def test_limits_come_from_params_and_environment(monkeypatch):
    assert Limits.from_params().max_pages == 20
    monkeypatch.setenv("INVOICE_MAX_PAGES", "3")
    limits = Limits.from_params()
    assert limits.max_pages == 3 and limits.max_bytes == 20_000_000
    with pytest.raises(DocumentError, match="4 pages"):
        limits.load(pdf(pages=4))
