"""What keeps one user's work away from another's on a shared server.

- **Upload names**: a file is stored under a name the server makes (``upload-<random>.<ext>``);
  the name the browser sent is kept only as metadata (``uploads/<stored>.json``), so
  ``../../x.h5ad`` or ``/tmp/x.h5ad`` can never choose where a file lands.
- **Capability links**: workspace ids are long random strings (:func:`new_id`, 144 bits); a
  workspace opens only from a link that holds its id, and the home page lists only the
  workspaces of this browser session.
- **Local mode** (``SCHELIX_LOCAL_MODE=1``, one user on their own computer): the home page lists
  every workspace, and large files can be opened by their path on this computer instead of
  being uploaded through the browser.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

from schelix.errors import SchelixError

__all__ = [
    "MAX_NAME",
    "MIN_ID_LENGTH",
    "UPLOAD_TYPES",
    "is_capability",
    "local_mode",
    "new_id",
    "original_name",
    "save_upload",
]

#: File types the app accepts (the extension of the name the browser sent).
UPLOAD_TYPES = (".h5ad", ".h5", ".hdf5", ".zip")
#: Longest file name accepted (most file systems stop at 255 bytes).
MAX_NAME = 255
#: Workspace ids shorter than this (made before ids became capabilities) open only in local mode.
MIN_ID_LENGTH = 24


def local_mode() -> bool:
    """``SCHELIX_LOCAL_MODE`` is set to 1/true/yes: a single user on their own computer."""
    return os.environ.get("SCHELIX_LOCAL_MODE", "").strip().lower() in ("1", "true", "yes", "on")


def new_id() -> str:
    """A fresh workspace id that cannot be guessed (144 random bits, URL-safe, 24 characters)."""
    return secrets.token_urlsafe(18)


def is_capability(wid: str) -> bool:
    """Whether ``wid`` may be opened from a link (long enough to be a capability, or local mode)."""
    return local_mode() or len(str(wid)) >= MIN_ID_LENGTH


def original_name(name: str) -> str:
    """The file name the browser sent, checked: only its last part, printable, not too long.

    Raises
    ------
    SchelixError
        A NUL or control character; longer than :data:`MAX_NAME`; no name; a file type the app
        does not read.
    """
    name = str(name)
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise SchelixError(
            "The file name contains a NUL or control character",
            "rename the file with ordinary letters, digits, '-', '_' and '.', then upload it again",
        )
    base = PureWindowsPath(PurePosixPath(name).name).name.strip()  # no folders, either style
    if len(name) > MAX_NAME or len(base.encode()) > MAX_NAME:
        raise SchelixError(
            f"The file name is {len(name)} characters long (at most {MAX_NAME})",
            "rename the file to a shorter name, then upload it again",
        )
    if not base or base in (".", ".."):
        raise SchelixError("The file has no name", "rename the file, then upload it again")
    if not base.lower().endswith(UPLOAD_TYPES):
        raise SchelixError(
            f"'{base}' is not a file type the app reads",
            "upload an .h5ad file, a 10x .h5 file or a .zip of a 10x folder",
        )
    return base


def save_upload(folder: Path, upload: BinaryIO, name: str) -> tuple[Path, dict[str, Any]]:
    """Stream ``upload`` into ``folder`` under a server-made name; keep ``name`` as metadata.

    Returns the stored path and the metadata (``original``, ``stored``, ``bytes``, ``time``),
    also written next to the file as ``<stored>.json``.
    """
    base = original_name(name)
    ext = next(e for e in UPLOAD_TYPES if base.lower().endswith(e))
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"upload-{secrets.token_hex(8)}{ext}"
    with open(dest, "xb") as fh:  # streamed in chunks, never one more copy in memory
        shutil.copyfileobj(upload, fh, length=16 * 2**20)
    meta = {
        "original": base,
        "stored": dest.name,
        "bytes": dest.stat().st_size,
        "time": time.time(),
    }
    dest.with_name(dest.name + ".json").write_text(json.dumps(meta))
    return dest, meta
