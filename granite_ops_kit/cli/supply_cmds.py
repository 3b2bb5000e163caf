"""`gkit verify`, `gkit sign`, `gkit pull`: thin wrappers over granite_ops_kit.supply.

The steps record their own audit events (artifact.verified / artifact.verification_failed
/ artifact.signed / artifact.pulled) through the recorder these commands give them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import typer

from granite_ops_kit.cli import output
from granite_ops_kit.cli.options import (
    JSON_OPTION,
    POLICY_HELP,
    CertificateChain,
    Identity,
    Issuer,
    PublicKey,
    TrustConfig,
    trust_inputs,
)
from granite_ops_kit.errors import UsageError

PROGRESS_MIN_BYTES = 64 << 20


def recorder():
    """The audit store the commands record into (GKIT_AUDIT_DB, else the default)."""
    from granite_ops_kit.audit.events import StoreRecorder

    return StoreRecorder()


@contextmanager
def hashing_progress():
    """Yields a `progress(total, pieces)` factory; a bar appears only for large models."""
    bars = []

    def start(total: int, pieces: int):
        if total < PROGRESS_MIN_BYTES or output.state.json:
            return None
        bar = output.progress_bytes(f"hashing {pieces} piece(s)")
        bar.start()
        task = bar.add_task("hash", total=total)
        bars.append(bar)
        return lambda n: bar.advance(task, n)

    try:
        yield start
    finally:
        for bar in bars:
            bar.stop()


def _quiet_sigstore() -> None:
    # sigstore logs a warning each time it opens its bundled trust root offline
    logging.getLogger("sigstore").setLevel(logging.ERROR)


def _render_verify(r: dict):
    from granite_ops_kit.audit.events import signer_name

    def render(con):
        con.print(f"[green]verified[/] {r['model_path']}")
        con.print(f"  signature  {r['signature']} ({r['method']}, {r['predicate_type']})")
        con.print(f"  signer     {signer_name(r['signer'])}")
        con.print(
            f"  manifest   {r['manifest_digest']} ({r['files']} files, "
            f"{r['bytes']:,} bytes, {r['serialization']['hash_type']})"
        )
        con.print(f"  policy     {r['policy']['id']}: " + "; ".join(r["policy"]["reasons"]))
        con.print(f"  took       {r['seconds']:.2f} s")

    return render


def verify(
    model_path: Path = typer.Argument(..., help="Model directory, or a single model file."),
    signature: Path = typer.Option(
        None,
        help="Signature bundle; default MODEL_PATH/model.sig "
        "(beside the file for a single-file model).",
    ),
    public_key: PublicKey = None,
    certificate_chain: CertificateChain = None,
    identity: Identity = None,
    issuer: Issuer = None,
    trust_config: TrustConfig = None,
    ignore_paths: list[str] = typer.Option(
        None, help="Path to leave out, relative to the model directory. Repeatable."
    ),
    policy: str = typer.Option("default", help=POLICY_HELP),
    expect_digest: str = typer.Option(
        None,
        help="Also require this manifest digest (sha256:...): the model verified earlier "
        "in a pipeline, e.g. by the initContainer of a deployed chart.",
    ),
    json_: bool = JSON_OPTION,
) -> None:
    """Verify a model's OpenSSF Model Signing signature, then apply a policy.

    The trust method (key, certificate, Sigstore keyless) is read from the bundle; give the
    matching trust input. Sigstore works offline with the shipped public-good root. The
    audit record keeps the trust inputs used (key and root PEMs with their fingerprints,
    identities, issuer), so `gkit deploy` can check the model again with the same ones.

    Examples:

      gkit verify ./granite-4.0-h-micro --policy ibm-granite

      gkit verify ./model --public-key signer.pub

      gkit verify ./model --certificate-chain ca.pem --identity ml-release@example.com

    Exit codes: 0 verified; 1 the signature, the files or the policy said no; 2 bad usage.
    Each run appends an audit event.
    """
    from granite_ops_kit.supply.verify import VerifyRequest
    from granite_ops_kit.supply.verify import verify as verify_model

    output.use_json(json_)
    _quiet_sigstore()
    req = VerifyRequest(
        model_path=model_path,
        signature=signature,
        trust=trust_inputs(public_key, certificate_chain, identity, issuer, trust_config),
        ignore_paths=list(ignore_paths or []),
        policy=policy,
        expect_digest=expect_digest,
    )
    with hashing_progress() as progress:
        result = verify_model(req, progress, recorder()).to_json()
    output.emit(result, _render_verify(result))


def sign(
    model_path: Path = typer.Argument(..., help="Model directory, or a single model file."),
    key: Path = typer.Option(
        ...,
        help="PEM EC private key (P-256/384/521); an encrypted key "
        "reads its password from GKIT_KEY_PASSWORD.",
    ),
    certificate: Path = typer.Option(None, help="PEM signing certificate for KEY (own PKI)."),
    certificate_chain: list[Path] = typer.Option(
        None, help="PEM intermediate/root certificates to include. Repeatable."
    ),
    method: str = typer.Option(
        "files",
        help="files (a digest per file) or shards (per 1 GB piece: parallel on few large files).",
    ),
    hash: str = typer.Option("sha256", "--hash", help="sha256, blake2b or blake3."),
    shard_size: int = typer.Option(1_000_000_000, help="Bytes per shard (--method shards)."),
    signature: Path = typer.Option(
        None, help="Where to write the bundle; default MODEL_PATH/model.sig."
    ),
    ignore_paths: list[str] = typer.Option(None, help="Path to leave out. Repeatable."),
    json_: bool = JSON_OPTION,
) -> None:
    """Sign a model (OpenSSF Model Signing), in a bundle `model_signing verify` accepts.

    Examples:

      gkit sign ./model --key signer.pem

      gkit sign ./model --key leaf.key --certificate leaf.pem --certificate-chain ca.pem
    """
    from granite_ops_kit.supply.sign import SignRequest, to_json
    from granite_ops_kit.supply.sign import sign as sign_model

    output.use_json(json_)
    if method not in ("files", "shards"):
        raise UsageError(f"--method must be files or shards, not '{method}'.")
    req = SignRequest(
        model_path=model_path,
        key=key,
        certificate=certificate,
        certificate_chain=list(certificate_chain or []),
        method=method,
        hash_type=hash,
        shard_size=shard_size,
        signature=signature,
        ignore_paths=list(ignore_paths or []),
    )
    with hashing_progress() as progress:
        result = to_json(sign_model(req, progress, recorder()))

    def render(con):
        con.print(f"[green]signed[/] {result['model_path']} -> {result['signature']}")
        con.print(
            f"  manifest {result['manifest_digest']} ({result['files']} files, "
            f"{result['bytes']:,} bytes) in {result['seconds']:.2f} s"
        )

    output.emit(result, render)


def pull(
    repo_id: str = typer.Argument(
        ..., help="Hugging Face repository, e.g. ibm-granite/granite-4.0-h-micro."
    ),
    revision: str = typer.Option(None, help="Branch, tag or commit; resolved to a commit."),
    dest: Path = typer.Option(None, help="Directory for the model's files; default ./NAME."),
    ready_marker: Path = typer.Option(
        None,
        help="Loader mode (a model volume that outlives the pod): skip the download when "
        "this marker names the same repository and commit; else pull beside DEST, verify, "
        "move into place and only then write the marker.",
    ),
    public_key: PublicKey = None,
    certificate_chain: CertificateChain = None,
    identity: Identity = None,
    issuer: Issuer = None,
    trust_config: TrustConfig = None,
    policy: str = typer.Option("ibm-granite", help=POLICY_HELP),
    json_: bool = JSON_OPTION,
) -> None:
    """Download a model at a pinned commit, then verify its model.sig per policy.

    Resumable, with progress; HF_HUB_OFFLINE=1 serves it from the local Hugging Face cache.
    The result names the commit hash the revision resolved to.
    """
    from granite_ops_kit.supply.pull import pull_and_verify

    output.use_json(json_)
    _quiet_sigstore()
    final = dest or Path.cwd() / repo_id.split("/")[-1]
    with hashing_progress() as progress:
        result = pull_and_verify(
            repo_id,
            revision=revision,
            dest=final,
            trust=trust_inputs(public_key, certificate_chain, identity, issuer, trust_config),
            policy=policy,
            recorder=recorder(),
            progress=progress,
            ready_marker=ready_marker,
        )
    if result.skipped:
        output.emit(result.to_json(), lambda con: con.print(f"[green]already loaded[/] {final}"))
        return

    def render(con):
        con.print(
            f"[green]pulled[/] {repo_id}@{result.commit} -> {result.dest} "
            f"({result.files} files, {result.bytes:,} bytes)"
        )
        _render_verify(result.verification.to_json())(con)

    output.emit(result.to_json(), render)
