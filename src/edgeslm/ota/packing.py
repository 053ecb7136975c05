"""A bundle's shipping form: a deterministic, flat tar, and an unpacker that trusts nothing in it.

Deterministic (sorted names, zero times and owners, fixed modes) so that a device can rebuild the exact tar of
the bundle it holds from its slot files: that is the base a binary delta is applied to, checked by hash.

The unpacker reads into memory and refuses, before it allocates anything large: any member that is not a regular
file (symlinks, hard links, devices, folders), any name that is not a plain file name (``..``, absolute paths,
sub-folders), duplicates, too many members, and more bytes than a bound (a decompression bomb). Python's own
``tarfile`` ``data`` filter covers part of this for extraction to disk; we never extract to disk, so the rules are
ours and few.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Mapping

from ..errors import BundleError

__all__ = ["MAX_MEMBERS", "pack", "unpack"]

MAX_MEMBERS = 64  # a bundle has a handful of files; more is an attack or a mistake
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # same rule as bundle file names: no folders, no `..`


def pack(files: Mapping[str, bytes]) -> bytes:
    """The canonical tar of a bundle's files: same files in, same bytes out."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            if not _PLAIN_NAME.match(name):
                raise BundleError(f"`{name}` is not a plain file name; bundle files cannot live in subfolders")
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def unpack(data: bytes, *, max_bytes: int) -> dict[str, bytes]:
    """Read a bundle tar (plain or gzip/bz2/xz-compressed) into ``{name: bytes}``; at most ``max_bytes`` in all."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        # Stream mode ("r|*"): members are read in order and never seeked, so a crafted index cannot loop.
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for member in tar:
                if len(files) >= MAX_MEMBERS:
                    raise BundleError(f"bundle archive has more than {MAX_MEMBERS} files; refusing it")
                name = member.name
                if not member.isreg():
                    kind = "symlink" if member.issym() else "hard link" if member.islnk() else "non-file entry"
                    raise BundleError(f"bundle archive holds a {kind} `{name}`; only plain files are allowed")
                if not _PLAIN_NAME.match(name):
                    raise BundleError(
                        f"bundle archive member `{name}` is not a plain file name (absolute path, `..` or folder)"
                    )
                if name in files:
                    raise BundleError(f"bundle archive lists `{name}` twice; refusing the ambiguous archive")
                total += member.size
                if total > max_bytes:
                    raise BundleError(
                        f"bundle archive unpacks to more than {max_bytes} bytes (a decompression bomb or a bundle "
                        "too large for this device); refusing it"
                    )
                stream = tar.extractfile(member)
                content = stream.read(member.size + 1) if stream is not None else b""
                if len(content) != member.size:
                    raise BundleError(f"bundle archive member `{name}` is truncated; re-download the update")
                files[name] = content
    except tarfile.TarError as e:
        raise BundleError(f"bundle archive is not a valid tar ({e}); re-download the update") from e
    except (EOFError, OSError, ValueError) as e:  # gzip/lzma/bz2 raise these on damaged streams
        raise BundleError(f"bundle archive is damaged ({e}); re-download the update") from e
    if not files:
        raise BundleError("bundle archive is empty; re-download the update")
    return files
