"""The error hierarchy maps to ARCHITECTURE.md's exit codes."""

from granite_ops_kit import errors
from granite_ops_kit.cli.app import main


def test_exit_codes_per_class():
    assert errors.UsageError("x").exit_code == 2
    assert errors.NotBuiltYet("x").exit_code == 2
    for cls in (
        errors.CheckFailed,
        errors.VerificationFailed,
        errors.PolicyDenied,
        errors.AuditChainBroken,
        errors.PlanDoesNotFit,
        errors.ModelFormatError,
    ):
        assert cls("x").exit_code == 1, cls


def test_to_json_carries_message_and_details():
    err = errors.VerificationFailed("model.sig: signature does not match", details={"file": "a"})
    assert err.to_json() == {
        "ok": False,
        "error": {
            "kind": "verification_failed",
            "message": "model.sig: signature does not match",
            "exit_code": 1,
            "details": {"file": "a"},
        },
    }


def test_main_returns_exit_code_of_a_gkit_error(capsys, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    code = main(["demo-model", str(tmp_path / "taken")])
    assert code == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty" in err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
