"""Photos are checked and recompressed to small JPEGs; bad input gets a reason a person can act on."""

from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image

from lifecycle.photos import AD_PHOTO_MAX_BYTES, PhotoError, PhotoLoader, to_jpeg


def image(width: int, height: int, *, mode: str = "RGB", kind: str = "PNG") -> bytes:
    channels = len(mode)
    picture = Image.frombytes(mode, (width, height), os.urandom(width * height * channels))
    out = io.BytesIO()
    picture.save(out, kind)
    return out.getvalue()


def test_a_large_noisy_picture_becomes_a_jpeg_within_the_ad_limit_and_size() -> None:
    source = image(1200, 800)
    assert len(source) > AD_PHOTO_MAX_BYTES
    jpeg = to_jpeg(source, max_pixels=96, max_bytes=AD_PHOTO_MAX_BYTES)
    assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) <= AD_PHOTO_MAX_BYTES
    assert Image.open(io.BytesIO(jpeg)).size == (96, 64)


def test_the_byte_limit_wins_over_the_pixel_size_when_both_cannot_hold() -> None:
    jpeg = to_jpeg(image(648, 648), max_pixels=648, max_bytes=20_000)
    assert len(jpeg) <= 20_000
    assert max(Image.open(io.BytesIO(jpeg)).size) < 648


def test_transparency_is_flattened_and_the_same_input_gives_the_same_bytes() -> None:
    source = image(200, 200, mode="RGBA")
    first = to_jpeg(source, max_pixels=96, max_bytes=AD_PHOTO_MAX_BYTES)
    assert first == to_jpeg(source, max_pixels=96, max_bytes=AD_PHOTO_MAX_BYTES)
    assert Image.open(io.BytesIO(first)).mode == "RGB"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"plain text, not a picture", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not an image"),
    ],
)
def test_input_that_is_not_an_image_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(PhotoError, match=reason):
        to_jpeg(data, max_pixels=96, max_bytes=AD_PHOTO_MAX_BYTES)


def test_base64_over_the_limit_or_malformed_is_refused_before_decoding() -> None:
    loader = PhotoLoader(max_bytes=1000)
    with pytest.raises(PhotoError, match="larger than 1000 bytes"):
        loader({"base64": base64.b64encode(b"x" * 5000).decode()})
    with pytest.raises(PhotoError, match="not valid base64"):
        loader({"base64": "***"})
    assert loader({}) is None  # the field was absent: no change, no error
    assert loader({"base64": "data:image/png;base64," + base64.b64encode(b"abc").decode()}) == b"abc"


def test_urls_must_be_https_and_on_an_allowed_host() -> None:
    loader = PhotoLoader(allowed_hosts=("photos.example.test",))
    with pytest.raises(PhotoError, match="https"):
        loader({"url": "http://photos.example.test/a.jpg"})
    with pytest.raises(PhotoError, match="not in LIFECYCLE_PHOTO_ALLOWED_HOSTS"):
        loader({"url": "https://169.254.169.254/latest/meta-data"})
