"""Opening archives a user brought, as if they were hostile: zip and gzip bombs, path traversal.

:func:`extract_zip` checks every entry before anything is written (count, declared sizes,
compression ratio, names that would land outside the target folder, links), then streams
each entry in chunks and stops as soon as more bytes come out than were declared.
:func:`check_gzip` streams a ``.gz`` file through the decompressor, counting, and stops at the
limit, so a gzip bomb is refused without ever being held in memory or on disk.

Every refusal is a :class:`~schelix.errors.SchelixError` that names the user's file (never a
temporary folder).
"""

from __future__ import annotations

import gzip
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from schelix.errors import SchelixError

__all__ = ["LIMITS", "check_gzip", "extract_zip"]

#: Limits on what an archive may unpack to. A 10x matrix compresses about 3-10x; 200x is
#: far beyond any real one and far below a bomb (a zip bomb is 1,000x and more).
LIMITS = {
    "max_entries": 10_000,
    "max_total_bytes": 32 * 2**30,  # 32 GiB unpacked, and never more than the free disk space
    "max_ratio": 200.0,
    "ratio_free_bytes": 2**20,  # entries under 1 MiB may compress as well as they like
}
_CHUNK = 2**20


def _refuse(name: str, problem: str, fix: str | None = None) -> SchelixError:
    return SchelixError(
        f"'{name}' was not opened: {problem}",
        fix or "re-create the zip from the original 10x folder (matrix, features, barcodes)",
    )


def _member_path(info: zipfile.ZipInfo, name: str) -> PurePosixPath:
    """The entry's relative path; refuses absolute paths, '..', drive letters and links."""
    raw = info.filename.replace("\\", "/")
    path = PurePosixPath(raw)
    if (
        raw.startswith("/")
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
        or "\x00" in raw
    ):
        raise _refuse(name, f"it holds an entry with an unsafe path ({info.filename!r})")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip says nothing (most tools)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(name, f"it holds a link or special file ({info.filename!r})")
    return path


def extract_zip(path: str | Path, dest: str | Path, *, name: str | None = None) -> Path:
    """Extract the zip ``path`` into the folder ``dest``, safely; returns ``dest``.

    Parameters
    ----------
    path
        The zip file.
    dest
        An empty folder to extract into (inside the user's workspace in the app).
    name
        The name to show in messages (the user's file name; default ``path``'s name).

    Raises
    ------
    SchelixError
        Not a zip; too many entries; declared sizes over :data:`LIMITS` or the free disk space;
        an entry compressed more than ``max_ratio``; an entry that unpacks to more than it
        declared; an absolute, ``..`` or link entry; an encrypted or damaged entry.
    """
    path, dest = Path(path), Path(dest)
    name = name or path.name
    if not zipfile.is_zipfile(path):
        raise _refuse(name, "it is not a valid zip file (truncated or corrupt)")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise _refuse(name, f"it is not a readable zip ({err})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > LIMITS["max_entries"]:
            raise _refuse(name, f"it holds {len(infos):,} entries (at most "
                          f"{LIMITS['max_entries']:,} are opened)")  # fmt: skip
        total = sum(i.file_size for i in infos)
        free = shutil.disk_usage(dest).free
        if total > min(LIMITS["max_total_bytes"], free):
            raise _refuse(
                name,
                f"it would unpack to {total / 2**30:.1f} GiB (limit "
                f"{min(LIMITS['max_total_bytes'], free) / 2**30:.1f} GiB here)",
                "upload the 10x .h5 file instead, or open the folder on the server by path",
            )
        paths = []
        for info in infos:
            rel = _member_path(info, name)
            if info.flag_bits & 0x1:
                raise _refuse(
                    name, f"entry {info.filename!r} is encrypted", "zip it without a password"
                )
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > LIMITS["ratio_free_bytes"] and ratio > LIMITS["max_ratio"]:
                raise _refuse(name, f"entry {info.filename!r} is compressed {ratio:,.0f} times "
                              f"(more than {LIMITS['max_ratio']:.0f}): a zip bomb")  # fmt: skip
            paths.append((info, rel))
        root = dest.resolve()
        for info, rel in paths:
            target = (dest / rel).resolve()
            if root not in target.parents and target != root:
                raise _refuse(name, f"entry {info.filename!r} would land outside the folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > info.file_size:
                            raise _refuse(name, f"entry {info.filename!r} unpacks to more than "
                                          "the size it declares")  # fmt: skip
                        out.write(chunk)
            except SchelixError:
                raise
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as err:
                raise _refuse(
                    name, f"entry {info.filename!r} could not be extracted ({err})"
                ) from None
    return dest


def check_gzip(path: str | Path, *, name: str | None = None) -> int:
    """Stream ``path`` (gzip) through the decompressor; refuse it if it unpacks too far.

    Returns the unpacked size in bytes.

    Raises
    ------
    SchelixError
        Corrupt gzip; more than ``max_ratio`` times its size (beyond the first MiB) or more
        than ``max_total_bytes``.
    """
    path = Path(path)
    name = name or path.name
    limit = min(
        LIMITS["max_total_bytes"],
        int(path.stat().st_size * LIMITS["max_ratio"]) + LIMITS["ratio_free_bytes"],
    )
    size = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _refuse(name, f"'{path.name}' unpacks to more than {limit / 2**20:,.0f} "
                                  f"MiB from {path.stat().st_size / 2**20:,.1f} MiB: a gzip bomb")  # fmt: skip
    except SchelixError:
        raise
    except (OSError, EOFError, zlib.error) as err:
        raise _refuse(name, f"'{path.name}' is not a readable gzip file ({err})") from None
    return size
