"""EXIF blocks for test photos: orientation, camera make and model, date taken (what instdisc.photometa reads)."""

from __future__ import annotations

from PIL import Image


def exif(orientation: int | None = 1, make: str | None = None, model: str | None = None,
         taken: str | None = None) -> bytes:
    """The EXIF bytes of a JPEG with these tags (None: the tag is left out); ``taken`` as ``YYYY:MM:DD HH:MM:SS``."""
    e = Image.Exif()
    if orientation is not None:
        e[0x0112] = orientation
    if make:
        e[0x010F] = make
    if model:
        e[0x0110] = model
    if taken:
        e[0x8769] = {0x9003: taken}
    return e.tobytes()
