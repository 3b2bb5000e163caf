"""Auditor exports: jsonl, csv, HTML, and an evidence zip verifiable with openssl + coreutils."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import zipfile

import pytest

from granite_ops_kit.audit import checkpoint
from granite_ops_kit.audit.records import Event, Subject
from granite_ops_kit.audit.service import sign_checkpoint
from granite_ops_kit.audit.store import open_store
from tests.conftest import run_gkit


@pytest.fixture
def log(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    for i in range(11):
        store.append(
            Event(
                "artifact.verified" if i % 3 else "capacity.planned",
                Subject(f"model-{i}", "rev", f"sha256:{i:064x}"),
                "failure" if i == 4 else "success",
                reason=f"step {i}",
            )
        )
    sign_checkpoint(store, tmp_path / "key.pem", "test-log")
    store.append(Event("deployment.applied", Subject("model-1"), "success"))
    store.close()
    return url


def _export(url, fmt, path):
    key = ["--key", str(path.parent / "key.pem")] if fmt == "evidence" else []
    result = run_gkit(
        "audit", "export", "--format", fmt, "--output", str(path), "--audit-db", url, "--json", *key
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_jsonl_and_csv(log, tmp_path):
    assert _export(log, "jsonl", tmp_path / "a.jsonl")["records"] == 13
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, 14))
    _export(log, "csv", tmp_path / "a.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "a.csv").read_text())))
    assert len(rows) == 14  # the jsonl export above is itself a record now
    assert rows[4]["outcome"] == "failure" and rows[4]["controls"].startswith("A.10.3")
    # the exports were recorded in the log
    events = [json.loads(x)["event"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert "audit.exported" not in events  # not yet when the jsonl was written
    assert rows[-1]["event"] == "audit.exported"


def test_html_report_counts_and_highlights_failures(log, tmp_path):
    _export(log, "html", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page
    assert page.count('<tr id="r') == 13 and page.count('class="fail"') == 1
    assert "<td>artifact.verified</td><td>7</td>" in page
    assert "<td>A.6.2.4</td><td>AI system verification and validation</td><td>7</td>" in page
    # clauses first, then Annex A, each in numeric order (not "A.10.3" before "A.4.2")
    order = [page.index(f"<tr><td>{c}</td>") for c in ("8.1", "A.4.2", "A.6.2.4", "A.10.3")]
    assert order == sorted(order)
    assert f"<code>sha256:{1:064x}</code>" in page  # the manifest digest column
    assert 'class="status bad"' in page and "checkpoint signatures NOT checked" in page


def test_html_report_names_the_chain_and_its_signer(log, tmp_path):
    from granite_ops_kit.audit.checkpoint import fingerprint, load_key, public_pem

    pin = tmp_path / "pin.pem"
    pin.write_text(public_pem(load_key(tmp_path / "key.pem")))
    result = run_gkit(
        "audit",
        "export",
        "--format",
        "html",
        "--output",
        str(tmp_path / "r.html"),
        "--audit-db",
        log,
        "--public-key",
        str(pin),
    )
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "r.html").read_text()
    assert 'class="status ok"' in page and "Chain verified: 13 records, 1 checkpoint(s)" in page
    assert fingerprint(pin.read_text()) in page


def test_html_report_fits_1400_px_in_headless_chromium(tmp_path):
    """Long paths, digests and reasons wrap inside the page; a screenshot is kept."""
    import shutil

    chromium = shutil.which("chromium")
    assert chromium, "chromium is installed by scripts/install-system-packages.sh"
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    for i in range(4):
        store.append(
            Event(
                "artifact.verified",
                Subject(
                    f"/very/long/path/to/models/{'granite-4.0-h-small-' * 4}{i}",
                    digest=f"sha256:{i:064x}",
                ),
                "success",
                reason="key signature by " + "x" * 180 + " verified",
            )
        )
    store.close()
    _export(url, "html", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    probe = tmp_path / "probe.html"  # a copy that reports its own width (the report has no JS)
    probe.write_text(
        page.replace(
            "</body>",
            "<script>document.title = 'W' + document.documentElement.scrollWidth;</script></body>",
        )
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    width = int(dom.stdout.split("<title>W", 1)[1].split("<", 1)[0])
    assert width <= 1400, width
    shot = tmp_path / "report-1400.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", (tmp_path / "r.html").as_uri()],
        capture_output=True,
        timeout=120,
    )
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == 1400


def _unzip(path, dest):
    with zipfile.ZipFile(path) as z:
        z.extractall(dest)
    return dest


def test_evidence_zip_verifies_with_openssl_and_coreutils_only(log, tmp_path):
    _export(log, "evidence", tmp_path / "e.zip")
    folder = _unzip(tmp_path / "e.zip", tmp_path / "e")
    ok = subprocess.run(
        ["bash", "verify.sh"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert ok.returncode == 0, ok.stderr
    assert "13 hashes and links OK" in ok.stdout
    assert "checkpoint: 13 records, root, manifest and signature OK" in ok.stdout
    key = checkpoint.load_key(tmp_path / "key.pem")
    expected = checkpoint.fingerprint(checkpoint.public_pem(key))
    assert f"signer key sha256: {expected}" in ok.stdout
    pinned = subprocess.run(["bash", "verify.sh", expected], cwd=folder, capture_output=True)
    assert pinned.returncode == 0, pinned.stderr
    other = subprocess.run(["bash", "verify.sh", "ab" * 32], cwd=folder, capture_output=True)
    assert other.returncode == 1 and b"not the expected" in other.stderr


@pytest.mark.parametrize(
    "tamper,message",
    [
        ("record", "differs from manifest"),
        ("record+manifests", "a record's bytes do not match its hash"),
        ("signature", "the checkpoint signature does not verify"),
    ],
)
def test_evidence_tampering_fails_the_recipe(log, tmp_path, tamper, message):
    import hashlib

    _export(log, "evidence", tmp_path / "e.zip")
    folder = _unzip(tmp_path / "e.zip", tmp_path / "e")
    target = folder / (
        "records/00000005.json" if tamper.startswith("record") else "checkpoint/signature.bin"
    )
    data = target.read_bytes()
    target.write_bytes(
        data.replace(b"failure", b"success")
        if tamper.startswith("record")
        else bytes([data[0] ^ 1]) + data[1:]
    )
    if tamper == "record+manifests":  # the forger also fixes the manifest, not the hashes
        lines = (folder / "manifest.sha256").read_text().splitlines()
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        fixed = [
            f"{digest}  records/00000005.json" if ln.endswith("records/00000005.json") else ln
            for ln in lines
        ]
        (folder / "manifest.sha256").write_text("\n".join(fixed) + "\n")
    bad = subprocess.run(["bash", "verify.sh"], cwd=folder, capture_output=True, text=True)
    assert bad.returncode == 1
    assert message in bad.stderr


def test_unknown_format_is_a_usage_error(log, tmp_path):
    result = run_gkit(
        "audit", "export", "--format", "pdf", "--output", str(tmp_path / "x"), "--audit-db", log
    )
    assert result.returncode == 2 and "unknown export format 'pdf'" in result.stderr
    assert not (tmp_path / "x").exists()


def test_cyclonedx_ml_bom_is_strictly_valid(log, tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    _export(log, "cyclonedx", tmp_path / "bom.json")
    text = (tmp_path / "bom.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6"
    models = bom["components"]
    assert len(models) == 6  # six distinct verified models, the failed one left out
    assert all(c["type"] == "machine-learning-model" and c["modelCard"] for c in models)
    assert models[0]["hashes"][0]["alg"] == "SHA-256"
    # The validator is strict: an unknown field in the model card is refused.
    models[0]["modelCard"]["madeUp"] = 1
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom)) is not None


@pytest.mark.parametrize(
    "details",
    [
        {"resources": ["not an object"]},
        {"resources": [{"name": "x", "algorithm": "sha256"}]},  # no digest
        {"resources": [{"name": "x", "algorithm": "sha256", "digest": "zz"}]},
        {"model": "not an object"},
        {"model": {"name": ["a"], "supplier": 5, "license": {"x": 1}}},
        {"architecture": 7},
    ],
    ids=["resource-text", "no-digest", "bad-digest", "model-text", "model-fields", "arch"],
)
def test_an_appended_verification_with_odd_details_leaves_the_bom_valid(log, tmp_path, details):
    """Whoever can write the store can append a 'verified' record holding anything in its
    details: the BOM takes only what has the shape gkit writes, and still validates."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    store = open_store(log)
    digest = "sha256:" + "ab" * 32
    odd = Event("artifact.verified", Subject("/odd", digest=digest), "success", details=details)
    store.append(odd)
    store.close()
    _export(log, "cyclonedx", tmp_path / "bom.json")
    text = (tmp_path / "bom.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    odd = next(c for c in json.loads(text)["components"] if c["hashes"][0]["content"] == "ab" * 32)
    assert odd["name"] == "odd" and odd.get("components", []) == []


def test_csv_cells_that_start_like_a_formula_stay_text(log, tmp_path):
    """Anyone who can write the store can put a formula in a field; the auditor's
    spreadsheet must show it as text."""
    store = open_store(log)
    formula = Event("artifact.verified", Subject("=cmd|'/c calc'!A0"), "success", reason="@SUM(1)")
    store.append(formula)
    store.close()
    _export(log, "csv", tmp_path / "a.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "a.csv").read_text())))
    last = next(r for r in rows if r["reason"].endswith("SUM(1)"))
    assert last["subject"] == "'=cmd|'/c calc'!A0" and last["reason"] == "'@SUM(1)"
    assert last["event"] == "artifact.verified"  # other cells as they were


def test_html_report_says_which_verifications_this_hosts_key_attested(log, tmp_path):
    from granite_ops_kit.audit import attestation
    from granite_ops_kit.audit.service import default_key_path

    key = checkpoint.load_or_create_key(default_key_path())  # this host's, as verify makes
    trust = {"public_keys": [{"fingerprint": "ab" * 32, "pem": "PEM"}]}
    digest = "sha256:" + "ef" * 32
    claim = attestation.attest(key, "/attested", digest, trust)
    store = open_store(log)
    details = {"trust": trust, "trust_attestation": claim}
    store.append(Event("artifact.verified", Subject("/attested", digest=digest), "success",
                       reason="checked", details=details))  # fmt: skip
    store.close()
    _export(log, "html", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert page.count("checked (trust inputs attested by this host&#x27;s audit key)") == 1
    # the fixture's verifications were appended without one, as by hand
    assert page.count("(trust inputs NOT attested by this host&#x27;s audit key)") == 6


def test_html_report_escapes_every_field_a_record_holds(log, tmp_path):
    """A record written straight into the store can hold markup in any text field, its hash
    included (verify names it as edited; the report must still not run it)."""
    store = open_store(log)
    record = next(r for _, r in store.rows() if r["seq"] == 2)
    script = "<script>alert(1)</script>"
    hostile = {**record, "hash": script, "reason": script, "actor": script, "host": script}
    store.db.execute("UPDATE audit_records SET record = ? WHERE seq = 2", (json.dumps(hostile),))
    store.close()
    _export(log, "html", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and page.count("&lt;script&gt;") >= 4


def test_html_report_renders_in_headless_chromium(log, tmp_path):
    import shutil

    import numpy as np
    from matplotlib import image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by make venv"
    _export(log, "html", tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,900",
            f"--screenshot={shot}",
            (tmp_path / "r.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 1200
    assert pixels.std() > 0.05  # not blank
    red = (pixels[..., 0] > 0.95) & (pixels[..., 1] < 0.92) & (pixels[..., 2] < 0.92)
    assert red.sum() > 500  # the failed record's row is highlighted
    assert len(np.unique((pixels * 255).astype(int).reshape(-1, 3), axis=0)) > 20


def _recompute_unsigned_lists(folder) -> None:
    """What a forger without the key can do: rebuild every list that no signature covers."""
    import hashlib

    records = sorted((folder / "records").iterdir())
    rows = [json.loads(p.read_bytes()) for p in records]
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in records]
    (folder / "hashes.sha256").write_text(
        "".join(f"{h}  records/{p.name}\n" for h, p in zip(hashes, records, strict=True))
    )
    (folder / "chain.tsv").write_text(
        "".join(f"{r['seq']}\t{r['prev_hash']}\t{h}\n" for r, h in zip(rows, hashes, strict=True))
    )
    listed = [ln.split("  ", 1)[1] for ln in (folder / "manifest.sha256").read_text().splitlines()]
    (folder / "manifest.sha256").write_text(
        "".join(
            f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
            for name in listed
        )
    )


def _verify_sh(folder) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "verify.sh"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_evidence_with_the_newest_record_forged_fails(log, tmp_path):
    _export(log, "evidence", tmp_path / "e.zip")
    folder = _unzip(tmp_path / "e.zip", tmp_path / "e")
    newest = sorted((folder / "records").iterdir())[-1]
    newest.write_bytes(newest.read_bytes().replace(b'"success"', b'"failure"'))
    _recompute_unsigned_lists(folder)
    bad = _verify_sh(folder)
    assert bad.returncode == 1 and "does not sign this manifest.sha256" in bad.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("remove checkpoint", "no checkpoint in this export"),
        ("remove a record", "records/00000003.json is missing (listed in manifest.sha256)"),
        ("add a file", "extra.txt is not listed in manifest.sha256"),
        ("link a file", "is a symbolic link"),
    ],
)
def test_evidence_missing_or_uncovered_parts_fail(log, tmp_path, damage, message):
    import shutil

    _export(log, "evidence", tmp_path / "e.zip")
    folder = _unzip(tmp_path / "e.zip", tmp_path / "e")
    if damage == "remove checkpoint":
        shutil.rmtree(folder / "checkpoint")
    elif damage == "remove a record":
        (folder / "records" / "00000003.json").unlink()
    elif damage == "add a file":
        (folder / "extra.txt").write_text("unsigned")
    else:
        target = folder / "records.jsonl"
        target.unlink()
        target.symlink_to("/dev/zero")
    bad = _verify_sh(folder)
    assert bad.returncode == 1 and message in bad.stderr, bad.stderr


def test_evidence_export_without_a_signing_key_is_refused(log, tmp_path):
    out = tmp_path / "e.zip"
    result = run_gkit(
        "audit",
        "export",
        "--output",
        str(out),
        "--audit-db",
        log,
        "--key",
        str(tmp_path / "no.pem"),
    )
    assert result.returncode == 2 and "no audit signing key" in result.stderr
    assert not out.exists() and not (tmp_path / "no.pem").exists()


def test_cyclonedx_names_a_verified_model_with_supplier_licence_and_files(tmp_path, tiny_hybrid):
    import shutil

    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from tests import pki

    model = tmp_path / "granite-tiny"
    shutil.copytree(tiny_hybrid, model)
    (model / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n")
    key = pki.new_key()
    pki.write_key(key, tmp_path / "k.pem")
    pub = pki.write_public(key, tmp_path / "k.pub")
    db = f"sqlite:///{tmp_path / 'audit.db'}"
    env = {"GKIT_AUDIT_DB": db}
    assert run_gkit("sign", str(model), "--key", str(tmp_path / "k.pem"), env=env).returncode == 0
    verified = run_gkit("verify", str(model), "--public-key", str(pub), "--json", env=env)
    assert verified.returncode == 0, verified.stderr
    digest = json.loads(verified.stdout)["manifest_digest"]
    _export(db, "cyclonedx", tmp_path / "bom.json")
    text = (tmp_path / "bom.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    (component,) = json.loads(text)["components"]
    assert component["name"] == "granite-tiny" and component["version"] == digest
    assert component["licenses"] == [{"license": {"name": "apache-2.0"}}]
    assert component["supplier"]["name"].startswith("key sha256:")
    files = {c["name"]: c["hashes"][0]["content"] for c in component["components"]}
    assert set(files) >= {"config.json", "model.safetensors", "README.md"}
    import hashlib

    assert files["config.json"] == hashlib.sha256((model / "config.json").read_bytes()).hexdigest()
    # this host's audit key signed the verification's trust inputs; a record appended by
    # hand, the same in every other field, is marked as not attested
    props = {p["name"]: p["value"] for p in component["properties"]}
    assert props["gkit:verification:attested"].startswith("yes (key sha256 ")
    store = open_store(db)
    record = next(r for r in store.records() if r["event"] == "artifact.verified")
    details = {k: v for k, v in record["details"].items() if k != "trust_attestation"}
    subject = Subject(record["subject"]["name"] + "-copy", digest="sha256:" + "cd" * 32)
    store.append(Event("artifact.verified", subject, "success", details=details))
    store.close()
    _export(db, "cyclonedx", tmp_path / "bom2.json")
    components = json.loads((tmp_path / "bom2.json").read_text())["components"]
    said = {
        c["version"]: {p["name"]: p["value"] for p in c["properties"]}["gkit:verification:attested"]
        for c in components
    }
    assert said[digest].startswith("yes") and said["sha256:" + "cd" * 32].startswith("no")
