"""Fetch one media value's encoded bytes, reading only where the config allows.

A column value is embedded bytes, a Hugging Face `{bytes, path}` struct or a path/URI. Paths are
read only inside `input.media_roots` and with a scheme in `input.allowed_schemes`: data never makes
the pipeline read an arbitrary file or URL.

- An empty (or whitespace) path string and a struct whose bytes and path are both null mean "no
  media" (None), the same as a null value; embedded zero-length bytes are media_empty.
- Relative paths are joined to each root in order; the first existing file inside a root wins.
  Object-store URIs (s3://, gs://) are normalised textually (`..` collapsed) and must share the
  root's scheme and bucket and sit under its prefix; the normalised key is what gets read, and the
  filesystem is built from the (trusted) root URI, never from the data's URI.
"""
from __future__ import annotations

import functools
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Field

from stages.config import ConfigSection
from stages.media.errors import MediaError

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class MediaSourceConfig(ConfigSection):
    """Where media named by path may be read from (the run config's `input` section holds these)."""

    media_roots: list[str] = Field(
        default_factory=list,
        description="Directories (or URI prefixes) media paths named by the data may be read from. "
        "Empty: media must be embedded bytes; a path in the data is an error, never a file read.",
    )
    allowed_schemes: list[str] = Field(
        default_factory=lambda: ["file", "s3", "gs"],
        description="URI schemes a media path may use; http(s) is off unless listed here.",
    )


def load_media_bytes(
    value: Any, *, media_roots: list[str], allowed_schemes: list[str], max_bytes: int
) -> bytes | None:
    """Encoded bytes for one column value, or None when the row has no such media."""
    if value is None:
        return None
    if isinstance(value, dict):
        embedded, path = value.get("bytes"), value.get("path")
        if embedded is not None and not isinstance(embedded, (bytes, bytearray, memoryview)):
            raise MediaError("media_unsupported", f"struct field 'bytes' holds {type(embedded).__name__}")
        value = embedded if embedded is not None else path
        if value is None:
            return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bounded(bytes(value), max_bytes, "embedded bytes")
    if isinstance(value, str):
        if not value.strip():
            return None
        return _read_path(value.strip(), media_roots, [s.lower() for s in allowed_schemes], max_bytes)
    raise MediaError(
        "media_unsupported",
        f"expected bytes, a path string or a {{bytes, path}} struct, got {type(value).__name__}",
    )


def _bounded(data: bytes, max_bytes: int, what: str) -> bytes:
    if not data:
        raise MediaError("media_empty", f"{what}: zero bytes")
    if len(data) > max_bytes:
        raise MediaError("media_too_large", f"{what}: {len(data)} bytes, over max_media_bytes={max_bytes}")
    return data


@dataclass(frozen=True)
class _Place:
    """A normalised location: local (`scheme` file, absolute real path) or an object-store URI."""

    scheme: str
    bucket: str
    path: str
    root: str = ""  # the media root it was checked against (its filesystem reads it)

    def inside(self, other: "_Place") -> bool:
        if (self.scheme, self.bucket) != (other.scheme, other.bucket):
            return False
        base = other.path.rstrip("/") + "/"
        return self.path == other.path or self.path.startswith(base)

    def text(self) -> str:
        return self.path if self.scheme == "file" else f"{self.scheme}://{self.bucket}{self.path}"


def _place(text: str, trusted: bool = False) -> _Place:
    """Parse and normalise a path or URI; local paths are resolved (`..`, symlinks).

    Only a trusted text (a configured media root) may carry a query string (`?region=...`).
    """
    if "\x00" in text:
        raise MediaError("media_path_forbidden", f"NUL byte in path {text!r}")
    match = _URI.match(text)
    if not match:
        return _Place("file", "", os.path.realpath(text))
    parts = urlsplit(text)
    if not trusted and (parts.query or parts.fragment):
        raise MediaError("media_path_forbidden", f"query strings and fragments are not accepted: {text!r}")
    scheme, path = match.group(1).lower(), unquote(parts.path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise MediaError("media_path_forbidden", f"file URI with a host: {text!r}")
        return _Place("file", "", os.path.realpath(path))
    return _Place(scheme, parts.netloc, posixpath.normpath("/" + path.lstrip("/")))


_REMOTE = ("http", "https")


def _read_path(text: str, roots: list[str], schemes: list[str], max_bytes: int) -> bytes:
    match = _URI.match(text)
    scheme = match.group(1).lower() if match else ("file" if os.path.isabs(text) else None)
    if scheme in _REMOTE:
        raise MediaError(
            "media_scheme_forbidden",
            f"remote http(s) fetching is not supported (download the media or embed its bytes): {text!r}",
        )
    if scheme is not None and scheme not in schemes:
        raise MediaError("media_scheme_forbidden", f"{text!r}: scheme {scheme!r} is not in allowed_schemes {schemes}")
    if not roots:
        raise MediaError(
            "media_path_forbidden",
            f"input.media_roots is empty, so media must be embedded bytes; refusing to read {text!r}",
        )
    candidates = _candidates(text, [_place(root, trusted=True) for root in roots], roots)
    if not candidates:
        raise MediaError("media_path_forbidden", f"{text!r} resolves outside every media root {roots}")
    permitted = [c for c in candidates if c.scheme in schemes and c.scheme not in _REMOTE]
    if not permitted:
        raise MediaError(
            "media_scheme_forbidden", f"{text!r}: scheme {candidates[0].scheme!r} is not in allowed_schemes {schemes}"
        )
    for place in permitted:
        data = _read_file(place, max_bytes)
        if data is not None:
            return data
    raise MediaError("media_not_found", f"no file at {text!r} under media roots {roots}")


def _candidates(text: str, roots: list[_Place], raw_roots: list[str]) -> list[_Place]:
    """Normalised locations `text` may denote, each inside a root (relative paths: one per root)."""
    relative = not _URI.match(text) and not os.path.isabs(text)
    found = []
    for root, raw in zip(roots, raw_roots):
        if relative:
            joined = os.path.join(root.path, text) if root.scheme == "file" else posixpath.join(root.path, text)
            place = _place(joined if root.scheme == "file" else f"{root.scheme}://{root.bucket}{joined}")
        else:
            place = _place(text)
        if place.inside(root):
            found.append(_Place(place.scheme, place.bucket, place.path, raw))
    return found


@functools.lru_cache(maxsize=32)
def _root_filesystem(root: str) -> tuple[Any, str]:
    """(pyarrow filesystem, base path) for a media root; built once per worker."""
    from pyarrow import fs

    if not _URI.match(root) or root.lower().startswith("file://"):
        return fs.LocalFileSystem(), ""
    filesystem, base = fs.FileSystem.from_uri(root)
    return filesystem, base


def _read_file(place: _Place, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when nothing is there."""
    from pyarrow import fs

    try:
        filesystem, base = _root_filesystem(place.root)
        if place.scheme == "file":
            path = place.path
        else:
            rest = place.path[len(_place(place.root, trusted=True).path.rstrip("/")) :]
            path = base.rstrip("/") + "/" + rest.lstrip("/")
        info = filesystem.get_file_info(path)
        if info.type != fs.FileType.File:
            return None
        if info.size is not None and info.size > max_bytes:
            raise MediaError("media_too_large", f"{place.text()}: {info.size} bytes, over max_media_bytes={max_bytes}")
        with filesystem.open_input_file(path) as handle:
            data = handle.read(max_bytes + 1)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError("media_unreadable", f"cannot read {place.text()}", exc) from exc
    return _bounded(data, max_bytes, place.text())

