"""RFC 6962 Merkle tree hashes over the records' hashes (the leaves are the raw 32 bytes)."""

from __future__ import annotations

import hashlib


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 section 2.1, computed bottom-up with the same split rule."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [leaf_hash(x) for x in leaves]
    while len(level) > 1:
        # Pairing left to right and promoting an odd last node gives RFC 6962's tree, whose
        # split point k (the largest power of two below n) puts full subtrees on the left.
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]
