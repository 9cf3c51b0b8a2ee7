"""Open plain, gzip or xz text files the same way.

Reading detects the compression from the file's magic bytes (a mis-named file still opens);
writing picks it from the suffix (`.gz`, `.xz`).
"""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path
from typing import IO

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"


def open_text_read(path: str | Path) -> IO[str]:
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(6)
    if head.startswith(_GZIP_MAGIC):
        return gzip.open(path, "rt", encoding="utf-8")
    if head.startswith(_XZ_MAGIC):
        return lzma.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def open_text_write(path: str | Path) -> IO[str]:
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8")
    if path.suffix == ".xz":
        return lzma.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")
