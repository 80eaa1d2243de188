"""A photo's own facts: when it was taken, which camera, its pixel size and file size.

Read once, when a file is indexed (from the header only, no pixel is decoded), and stored with
its index entry, so the app can show them and filter by them without touching the file again.
The date taken is EXIF ``DateTimeOriginal`` (else ``DateTimeDigitized``, else the IFD0
``DateTime``); a file without one falls back to its modification time, and ``taken_from`` says
which. Dates are local wall-clock times as ISO text ``YYYY-MM-DDTHH:MM:SS`` (what cameras
record, without a zone), so date ranges are plain string comparisons.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .images import ImageError

EXIF_IFD = 0x8769
DATETIME_ORIGINAL, DATETIME_DIGITIZED, DATETIME = 0x9003, 0x9004, 0x0132
MAKE, MODEL = 0x010F, 0x0110
ORIENTATION = 0x0112
FROM_EXIF, FROM_FILE = "exif", "file"
_EXIF_DATE = re.compile(r"\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


@dataclass(frozen=True)
class PhotoMeta:
    """What the metadata database keeps about one photo (None where the file does not say)."""

    taken: str | None  # ISO local time, YYYY-MM-DDTHH:MM:SS
    taken_from: str | None  # "exif" or "file" (the modification time)
    camera_make: str | None
    camera_model: str | None
    width: int | None  # as displayed (EXIF rotation applied)
    height: int | None
    file_bytes: int
    mtime_ns: int

    @property
    def camera(self) -> str | None:
        return camera_name(self.camera_make, self.camera_model)


def camera_name(make: str | None, model: str | None) -> str | None:
    """'Apple' + 'iPhone 13' -> 'Apple iPhone 13'; 'Canon' + 'Canon EOS 80D' -> 'Canon EOS 80D'."""
    if not make and not model:
        return None
    if make and model and model.lower().startswith(make.lower()):
        return model
    return " ".join(x for x in (make, model) if x)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is None:
        return None
    s = str(value).replace("\x00", "").strip()
    return s or None


def parse_exif_date(value: object) -> str | None:
    """EXIF '2021:06:05 10:11:12' -> '2021-06-05T10:11:12'; None for blanks and impossible dates."""
    s = _text(value)
    m = _EXIF_DATE.match(s or "")
    if not m:
        return None
    try:
        return dt.datetime(*(int(x) for x in m.groups())).isoformat()
    except ValueError:  # '0000:00:00 00:00:00', what cameras write when the clock was never set
        return None


def file_time(mtime_ns: int) -> str:
    """A modification time as the same local ISO text as an EXIF date."""
    return dt.datetime.fromtimestamp(mtime_ns / 1e9).replace(microsecond=0).isoformat()


def read_photo_meta(path: str | os.PathLike) -> PhotoMeta:
    """The facts of one file from its header; :class:`ImageError` when it is not a readable image."""
    st = Path(path).stat()
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            sub = exif.get_ifd(EXIF_IFD)
            w, h = img.size
            if exif.get(ORIENTATION) in (5, 6, 7, 8):  # EXIF rotation by 90 degrees swaps the sides
                w, h = h, w
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: unreadable header ({e})") from e
    taken = next((d for d in (parse_exif_date(sub.get(DATETIME_ORIGINAL)), parse_exif_date(sub.get(DATETIME_DIGITIZED)),
                              parse_exif_date(exif.get(DATETIME))) if d), None)
    return PhotoMeta(taken or file_time(st.st_mtime_ns), FROM_EXIF if taken else FROM_FILE, _text(exif.get(MAKE)),
                     _text(exif.get(MODEL)), int(w), int(h), int(st.st_size), int(st.st_mtime_ns))


def try_photo_meta(path: str | os.PathLike) -> PhotoMeta | None:
    """:func:`read_photo_meta`, or only the file's size and time when its header is unreadable (None if gone)."""
    try:
        return read_photo_meta(path)
    except ImageError:
        try:
            st = Path(path).stat()
        except OSError:
            return None
        return PhotoMeta(file_time(st.st_mtime_ns), FROM_FILE, None, None, None, None, int(st.st_size),
                         int(st.st_mtime_ns))
    except OSError:
        return None


def parse_date_bound(value: str | None, end: bool = False) -> str | None:
    """A filter bound ('2021', '2021-06', '2021-06-05' or a full ISO time) as ISO text comparable with
    stored dates; ``end`` makes a partial date inclusive (2021-06 -> up to the end of June).
    ValueError with the accepted forms for anything else."""
    if value is None or not str(value).strip():
        return None
    s = str(value).strip()
    m = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", s)
    try:
        if m:
            y, mo, d = int(m[1]), int(m[2] or 1), int(m[3] or 1)
            start = dt.datetime(y, mo, d)
            if not end:
                return start.isoformat()
            if m[3]:
                nxt = start + dt.timedelta(days=1)
            elif m[2]:
                nxt = dt.datetime(y + (mo == 12), mo % 12 + 1, 1)
            else:
                nxt = dt.datetime(y + 1, 1, 1)
            return (nxt - dt.timedelta(seconds=1)).isoformat()
        return dt.datetime.fromisoformat(s).replace(tzinfo=None, microsecond=0).isoformat()
    except ValueError:
        raise ValueError(f"date {value!r}: use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS") from None
