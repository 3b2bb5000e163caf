"""Approvals and segregation of duties, through the CLI and the check a deploy will call."""

from __future__ import annotations

import json

from granite_ops_kit.audit.approvals import segregation_of_duties
from granite_ops_kit.audit.store import open_store
from tests.conftest import run_gkit

DIGEST = "sha256:" + "ab" * 32  # a well-formed manifest digest


def _approve(url, actor, *args):
    result = run_gkit(
        "approve",
        "granite-4.0-h-micro",
        *args,
        "--audit-db",
        url,
        "--json",
        env={"GKIT_ACTOR": actor},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["record"]


def test_approval_is_recorded_with_role_and_controls(audit_url):
    record = _approve(audit_url, "alice", "--as", "release-manager", "--digest", DIGEST)
    assert record["event"] == "approval.recorded" and record["actor"] == "alice"
    assert record["details"]["role"] == "release-manager"
    assert record["subject"]["digest"] == DIGEST
    assert "A.3.2" in record["controls"]


def test_segregation_of_duties(audit_url):
    store = open_store(audit_url)
    none = segregation_of_duties(store, "granite-4.0-h-micro", "bob", "release-manager")
    assert not none.allowed and "no approval as release-manager" in none.reason
    _approve(audit_url, "bob", "--as", "release-manager", "--digest", DIGEST)
    self_only = segregation_of_duties(store, "granite-4.0-h-micro", "bob", "release-manager")
    assert not self_only.allowed and "a second person" in self_only.reason
    _approve(audit_url, "alice", "--as", "release-manager", "--digest", DIGEST)
    ok = segregation_of_duties(
        store, "granite-4.0-h-micro", "bob", "release-manager", digest=DIGEST
    )
    assert ok.allowed and "approved by alice" in ok.reason and ok.approval_seq == 2
    other_digest = segregation_of_duties(
        store, "granite-4.0-h-micro", "bob", "release-manager", digest="sha256:cd"
    )
    assert not other_digest.allowed
    wrong_role = segregation_of_duties(store, "granite-4.0-h-micro", "bob", "ciso")
    assert not wrong_role.allowed


def test_approve_needs_a_role(tmp_path):
    result = run_gkit("approve", "m", "--audit-db", f"sqlite:///{tmp_path / 'a.db'}")
    assert result.returncode == 2 and "--as" in result.stderr


def test_deploy_policy_requires_a_second_person(audit_url):
    import pathlib

    from granite_ops_kit.audit.approvals import deployment_allowed

    policy = json.loads(
        (pathlib.Path(__file__).parents[1] / "policies" / "deploy.json").read_text()
    )
    store = open_store(audit_url)
    assert deployment_allowed(store, policy, "granite-4.0-h-micro", "bob").allowed
    policy["require_approval"]["enabled"] = True
    denied = deployment_allowed(store, policy, "granite-4.0-h-micro", "bob", DIGEST)
    assert not denied.allowed
    _approve(audit_url, "alice", "--as", "release-manager", "--digest", DIGEST)
    assert deployment_allowed(store, policy, "granite-4.0-h-micro", "bob", DIGEST).allowed
    assert not deployment_allowed(store, policy, "granite-4.0-h-micro", "alice", DIGEST).allowed
