"""Reading files an attacker may have written: bounded in size, depth and kind.

A model directory, a signature bundle and an audit export are all written by someone else.
A name there may be a link to /dev/zero, a FIFO that never answers, a directory, or a JSON
document nested a hundred thousand levels deep. Every such read goes through here: the file
is opened first (without following a link where the format forbids one, and without
blocking on a FIFO), then checked on the open descriptor to be a regular file within the
size limit, then read with the limit enforced again, since it may grow while read.

Pure Python with no project imports: the control plane (granite_ops_kit) uses it too and
maps `UnsafeInput` to its own error types.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

MAX_JSON_DEPTH = 64  # a Sigstore bundle nests 7 deep, a config.json 3: 64 is generous


class UnsafeInput(ValueError):
    """A file that is not what it claims to be; `message` is one sentence naming it."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bytes(path: Path, limit: int, *, follow_links: bool = True, what: str = "") -> bytes:
    """The whole content of a regular file of at most `limit` bytes, or UnsafeInput."""
    label = f"{what} {path}".strip()
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnsafeInput(f"{label} does not exist.", missing=True) from None
    except OSError as e:
        if not follow_links and os.path.islink(path):
            raise UnsafeInput(
                f"{label} is a symbolic link; it must be a regular file here."
            ) from None
        raise UnsafeInput(f"{label} cannot be opened ({e.strerror}).") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeInput(f"{label} is {_kind(st.st_mode)}, not a regular file.")
        if st.st_size > limit:
            raise UnsafeInput(f"{label} is {st.st_size:,} bytes; the limit is {limit:,}.")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnsafeInput(f"{label} grew past the limit of {limit:,} bytes while read.")
        return b"".join(chunks)
    finally:
        os.close(fd)


def too_deep(doc, max_depth: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def parse_json(data: bytes, label: str, *, max_depth: int = MAX_JSON_DEPTH):
    """JSON with a depth cap; every failure is one sentence naming `label`."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise UnsafeInput(f"{label} is nested deeper than {max_depth} levels.") from None
    except UnicodeDecodeError:
        raise UnsafeInput(f"{label} is not UTF-8 JSON.") from None
    except json.JSONDecodeError as e:
        raise UnsafeInput(
            f"{label}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})."
        ) from None
    except ValueError:  # an integer past Python's digit limit (sys.get_int_max_str_digits)
        raise UnsafeInput(f"{label} holds a number too long to read.") from None
    if too_deep(doc, max_depth):
        raise UnsafeInput(f"{label} is nested deeper than {max_depth} levels.")
    return doc


def read_json(
    path: Path, limit: int, *, follow_links: bool = True, what: str = "", max_depth: int = 64
):
    """`read_bytes` then `parse_json`: the usual way to read a small JSON file safely."""
    data = read_bytes(path, limit, follow_links=follow_links, what=what)
    return parse_json(data, f"{what} {path}".strip(), max_depth=max_depth)


def read_json_object(path: Path, limit: int, *, what: str = "", follow_links: bool = True) -> dict:
    """`read_json` of a file that must hold one JSON object (a config, a policy, a schema)."""
    doc = read_json(path, limit, follow_links=follow_links, what=what)
    if not isinstance(doc, dict):
        raise UnsafeInput(f"{f'{what} {path}'.strip()} is not a JSON object.")
    return doc
