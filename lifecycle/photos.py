"""User photos: read from the event (a URL or base64 text), check, and recompress to a small JPEG.

Shared by the AD target (``thumbnailPhoto``, at most 100 KB) and the Graph target (profile photo, at most
4 MB). Pillow and httpx are imported inside the functions that need them, so importing this module is free.
Every problem with the input (too large, not an image, an unknown host) is ``Permanent`` with a reason a
person can act on; only a photo server that is unreachable or busy is ``Retryable``.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lifecycle.errors import Permanent, Retryable

AD_PHOTO_MAX_BYTES = 100 * 1024  # thumbnailPhoto's rangeUpper (102,400 bytes)
GRAPH_PHOTO_MAX_BYTES = 4 * 1024 * 1024
# Pictures larger than this many pixels are refused before decoding (a "decompression bomb" guard).
MAX_SOURCE_PIXELS = 40_000_000
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")


class PhotoError(Permanent):
    """The photo in the event cannot be used (too large, not an image, not allowed)."""


@dataclass(frozen=True)
class PhotoLoader:
    """Reads a photo source (``url`` or ``base64`` of a step's params) within configured limits."""

    max_bytes: int = 10 * 1024 * 1024
    # Hosts photos may be downloaded from (https only); empty: URLs are refused, base64 still works.
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    ca_file: Path | None = None
    timeout_seconds: float = 20.0

    def __call__(self, params: dict[str, Any]) -> bytes | None:
        """The raw photo bytes, or None when the event carried no photo (its field was absent)."""
        if params.get("base64"):
            return self.decode(str(params["base64"]))
        if params.get("url"):
            return self.download(str(params["url"]))
        return None

    def decode(self, text: str) -> bytes:
        if text.startswith("data:"):
            # A data URL: data:image/png;base64,....
            text = text.partition(",")[2]
        text = "".join(text.split())
        if len(text) * 3 // 4 > self.max_bytes:
            raise PhotoError(f"the photo is larger than {self.max_bytes} bytes (LIFECYCLE_PHOTO_MAX_BYTES)")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PhotoError("the photo field is not valid base64 text") from None

    def download(self, url: str) -> bytes:
        import httpx

        parsed = urlparse(url)
        host = (parsed.hostname or "").lower()
        if parsed.scheme != "https":
            raise PhotoError(f"photo URLs must use https (got {parsed.scheme or 'no scheme'}://)")
        if host not in {h.lower() for h in self.allowed_hosts}:
            raise PhotoError(f"the photo host {host!r} is not in LIFECYCLE_PHOTO_ALLOWED_HOSTS")
        import ssl

        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
        try:
            with (
                httpx.Client(verify=verify, trust_env=False, timeout=self.timeout_seconds) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code in (408, 429) or response.status_code >= 500:
                    retry_after = response.headers.get("retry-after", "")
                    raise Retryable(
                        f"the photo server answered {response.status_code}",
                        retry_after=float(retry_after) if retry_after.isdigit() else None,
                    )
                if response.status_code != 200:
                    raise PhotoError(f"the photo URL answered {response.status_code} ({url})")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise PhotoError(f"the photo is larger than {self.max_bytes} bytes (LIFECYCLE_PHOTO_MAX_BYTES)")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TransportError as exc:
            raise Retryable(f"cannot download the photo from {host}: {exc}") from None


def to_jpeg(data: bytes, *, max_pixels: int, max_bytes: int) -> bytes:
    """The photo as a JPEG that fits in ``max_pixels`` x ``max_pixels`` and ``max_bytes``, metadata stripped.

    The same input always gives the same bytes, which is what lets the photo steps compare before writing.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind = probe.format
            width, height = probe.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise PhotoError("the photo is not an image (JPEG, PNG, GIF, BMP, WebP or TIFF expected)") from None
    if kind not in _FORMATS:
        raise PhotoError(f"the photo is a {kind} image; JPEG, PNG, GIF, BMP, WebP or TIFF expected")
    if width * height > MAX_SOURCE_PIXELS:
        raise PhotoError(f"the photo is {width}x{height} pixels, more than {MAX_SOURCE_PIXELS} pixels in all")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise PhotoError("the photo is damaged and cannot be decoded") from None
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
    else:
        image = image.convert("RGB")
    side = max_pixels
    while side >= 16:
        resized = image.copy()
        resized.thumbnail((side, side), Image.Resampling.LANCZOS)
        for quality in (90, 80, 70, 60, 50, 40):
            out = io.BytesIO()
            resized.save(out, "JPEG", quality=quality, optimize=True)
            if out.tell() <= max_bytes:
                return out.getvalue()
        side = side * 3 // 4
    raise PhotoError(f"the photo cannot be made smaller than {max_bytes} bytes")


def same_picture(wanted: bytes, stored: bytes | None, *, tolerance: float = 6.0) -> bool:
    """Whether ``stored`` (what Microsoft 365 answers for the photo) shows the picture ``wanted`` shows.

    Exchange keeps its own renditions of an upload (resized, re-encoded), so the bytes never match what was
    sent; comparing bytes re-uploaded the photo on every run. Both are compared instead as pictures: same
    aspect ratio, and at 64x64 pixels a mean difference per channel within ``tolerance`` (of 255): a
    re-encoding differs by 1-3 even for pure noise (the worst case), two different noise pictures by ~12.
    """
    if stored is None:
        return False
    if stored == wanted:
        return True
    from PIL import Image, ImageChops, ImageStat, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(wanted)) as a, Image.open(io.BytesIO(stored)) as b:
            if abs(a.width / a.height - b.width / b.height) > 0.02:
                return False
            small_a = a.convert("RGB").resize((64, 64), Image.Resampling.BOX)
            small_b = b.convert("RGB").resize((64, 64), Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError, ValueError, ZeroDivisionError):
        return False
    difference = ImageStat.Stat(ImageChops.difference(small_a, small_b)).mean
    return max(difference) <= tolerance
