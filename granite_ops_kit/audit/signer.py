"""What the holder of the audit signing key checks before it signs anything about the log.

A checkpoint, a pruning summary and an evidence export each put the key's signature on the
log's Merkle root. Whoever can write the store (but holds no key) could rewrite the history
(delete a failure, renumber, recompute every hash, drop the checkpoints that covered it) and
wait for the next signature to vouch for the forgery. So before it signs, the signer:

1. verifies the store as `gkit audit verify` does, every checkpoint and pruning summary
   its own key signed against that key (those by other hosts' keys keep their roots
   checked and their signatures unchecked);
2. checks that the log still extends the last tree it signed for this store: that tree's
   size and root are kept beside the key (`<key>.signed.json`), outside the store, where the
   attacker cannot reach them.

Either failing is exit 1 naming the problem, and nothing is signed.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from granite_ops_kit.audit import checkpoint, merkle
from granite_ops_kit.audit.store import AuditStore
from granite_ops_kit.audit.verify import ANY_NAME, log_leaves, verify_store
from granite_ops_kit.errors import AuditChainBroken

MAX_SIGNED_BYTES = 1 << 20


def signed_trees_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".signed.json")


def _signed_trees(key_path: Path) -> dict:
    from granite_runtime.spec import bounded_read

    path = signed_trees_path(key_path)
    try:
        doc = bounded_read.read_json_object(path, MAX_SIGNED_BYTES, what="signed trees")
    except bounded_read.UnsafeInput as bad:
        if bad.missing:
            return {}
        raise AuditChainBroken(f"{bad.message} It records what {key_path} signed.") from None
    return doc


def store_id(store: AuditStore) -> str:
    """What the signed trees are kept under: the store's URL, a SQLite path made absolute
    (`sqlite:///audit.db` names another store in every folder)."""
    if store.url.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(store.url.removeprefix("sqlite:///")).resolve())
    return store.url


def check_before_signing(
    store: AuditStore, key: Ed25519PrivateKey, key_path: Path, name: str
) -> list[bytes]:
    """The log's leaves, once it verifies and extends what this key last signed for it;
    else AuditChainBroken, and the caller signs nothing."""
    own = {ANY_NAME: checkpoint.public_pem(key)}  # what this key signed, under any name
    verdict = verify_store(store, own, others_ok=True)
    if not verdict.ok:
        raise AuditChainBroken(
            f"{store.url}: {verdict.problem}; nothing was signed (a signature would vouch for it).",
            details=verdict.to_json(),
        )
    leaves = log_leaves(store)
    last = _signed_trees(key_path).get(store_id(store))
    if isinstance(last, dict):
        size, root = last.get("size"), last.get("root")
        if not isinstance(size, int) or size > len(leaves) or _root(leaves[:size]) != root:
            raise AuditChainBroken(
                f"{store.url}: the log no longer extends the tree of {size} records that "
                f"{key_path} signed last (root {root}): records it covered were rewritten "
                "or removed; nothing was signed. If the store was replaced on purpose, remove "
                f"its entry from {signed_trees_path(key_path)}."
            )
    return leaves


def _root(leaves: list[bytes]) -> str:
    return base64.b64encode(merkle.root(leaves)).decode()


def remember_signed(store: AuditStore, key_path: Path, leaves: list[bytes]) -> None:
    """Keep the size and root just signed for this store beside the key (mode 0600, written
    whole), unless a larger tree was signed before (an export of an earlier range)."""
    trees = _signed_trees(key_path)
    last = trees.get(store_id(store))
    if isinstance(last, dict) and isinstance(last.get("size"), int) and last["size"] > len(leaves):
        return
    trees[store_id(store)] = {"size": len(leaves), "root": _root(leaves)}
    path = signed_trees_path(key_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(trees, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Signer:
    """The key that signs for a store, once the store has passed `check_before_signing`."""

    key: Ed25519PrivateKey
    key_path: Path
    name: str  # the key name and log origin of the notes it signs
    leaves: list[bytes]  # the log's, as checked

    @classmethod
    def for_store(cls, store: AuditStore, key_path: Path, name: str, *, create: bool = False):
        """`create`: make the key on first use (a checkpoint); else it must exist."""
        key = (checkpoint.load_or_create_key if create else checkpoint.load_key)(key_path)
        return cls(key, key_path, name, check_before_signing(store, key, key_path, name))

    def signed(self, store: AuditStore, size: int) -> None:
        """Remember that leaves 1..size of the store were just signed."""
        remember_signed(store, self.key_path, self.leaves[:size])
