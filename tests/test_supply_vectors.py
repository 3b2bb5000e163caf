"""The reference project's cross-version vectors: all 13 verify offline (README inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_gkit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "oms-upstream"  # see its README
KEYS = FIXTURES / "keys"
IBM_ISSUER = "https://sigstore.verify.ibm.com/oauth2"
SIGSTORE = ["--identity", "stefanb@us.ibm.com", "--issuer", IBM_ISSUER]
CERT = ["--certificate-chain", str(KEYS / "ca-cert.pem")]
KEY = ["--public-key", str(KEYS / "signing-key-pub.pem")]
IGNORE = ["--ignore-paths", "ignore-me"]
TWO_FILES = "sha256:61d4849d9d90076d6215f4d525f13d6574af8e3f67aef3e6f36fc40a14fdd226"

# directory, model path inside it, arguments, method, manifest digest, file count
VECTORS = [
    ("v0.2.0-certificate", "", CERT, "certificate", TWO_FILES, 2),
    ("v0.3.1-certificate", "", CERT, "certificate", TWO_FILES, 2),
    ("v1.0.0-certificate", "", CERT, "certificate", TWO_FILES, 2),
    ("v1.0.1-certificate", "", CERT + IGNORE, "certificate", TWO_FILES, 2),
    ("v1.1.0-certificate", "", CERT + IGNORE, "certificate", TWO_FILES, 2),
    ("v0.3.1-elliptic-key", "signme-1", KEY, "key", None, 1),
    ("v1.0.0-elliptic-key", "signme-1", KEY, "key", None, 1),
    ("v1.0.1-elliptic-key", "", KEY + IGNORE, "key", None, 2),
    ("v1.1.0-elliptic-key", "", KEY + IGNORE, "key", None, 2),
    ("v0.3.1-sigstore", "", SIGSTORE, "sigstore", TWO_FILES, 2),
    ("v1.0.0-sigstore", "", SIGSTORE, "sigstore", TWO_FILES, 2),
    ("v1.0.1-sigstore", "", SIGSTORE + IGNORE, "sigstore", TWO_FILES, 2),
    ("v1.1.0-sigstore", "", SIGSTORE + IGNORE, "sigstore", TWO_FILES, 2),
]


@pytest.fixture(scope="module")
def conformance_policy(tmp_path_factory) -> Path:
    """The default policy without its weight-file rule: the vectors sign two text files."""
    policy = json.loads((REPO / "policies" / "default.json").read_text())
    policy.update(id="oms-conformance", require_weight_file=False)
    path = tmp_path_factory.mktemp("policy") / "oms-conformance.json"
    path.write_text(json.dumps(policy))
    return path


@pytest.mark.parametrize(
    ("vector", "inside", "args", "method", "digest", "files"), VECTORS, ids=[v[0] for v in VECTORS]
)
def test_upstream_vector_verifies_offline(
    vector, inside, args, method, digest, files, conformance_policy
):
    model = FIXTURES / vector / inside if inside else FIXTURES / vector
    result = run_gkit(
        "verify",
        str(model),
        "--signature",
        str(FIXTURES / vector / "model.sig"),
        *args,
        "--policy",
        str(conformance_policy),
        "--json",
        env={"HF_HUB_OFFLINE": "1", "no_proxy": "*", "https_proxy": "http://127.0.0.1:9"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["ok"] is True and out["method"] == method and out["files"] == files
    if digest:
        assert out["subject_digest"] == digest  # what model_signing computes
    assert out["manifest_digest"].startswith("sha256:") and out["manifest_digest"] != digest
    legacy = vector == "v0.2.0-certificate"
    assert out["predicate_type"].endswith("Digests/v0.1" if legacy else "signature/v1.0")


def test_sigstore_vector_identity_is_matched_exactly():
    result = run_gkit(
        "verify",
        str(FIXTURES / "v1.1.0-sigstore"),
        "--identity",
        "stefanb@us.ibm.co",
        "--issuer",
        IBM_ISSUER,
    )
    assert result.returncode == 1
    assert "signed by stefanb@us.ibm.com, which is not one of stefanb@us.ibm.co" in result.stderr


def test_ibm_granite_policy_refuses_a_signer_off_its_list():
    result = run_gkit(
        "verify", str(FIXTURES / "v1.1.0-sigstore"), "--policy", "ibm-granite", "--json"
    )
    assert result.returncode == 1
    err = json.loads(result.stdout)["error"]
    assert "stefanb@us.ibm.com" in err["message"] and "Granite-sign@ibm.com" in err["message"]
