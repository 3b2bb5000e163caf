"""The one place where failures become exit codes.

Every failure a user can cause is a `GkitError` subclass carrying one sentence that names
the file and the reason; the CLI prints that sentence (or a JSON object with `--json`) and
exits with the class's code. Anything else is a bug and keeps its traceback.

Exit codes (ARCHITECTURE.md): 0 success; 1 the check failed; 2 usage error.
"""

from __future__ import annotations

from contextlib import contextmanager

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class GkitError(Exception):
    """Base of every user-facing failure. `message` is shown as is."""

    exit_code: int = EXIT_CHECK_FAILED
    kind: str = "error"

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_json(self) -> dict:
        return {
            "ok": False,
            "error": {
                "kind": self.kind,
                "message": self.message,
                "exit_code": self.exit_code,
                **({"details": self.details} if self.details else {}),
            },
        }


class UsageError(GkitError):
    """A bad flag or argument, a path that does not exist: the user must change the call."""

    exit_code = EXIT_USAGE
    kind = "usage"


class NotBuiltYet(UsageError):
    """A command group that is planned but not implemented in this version."""

    kind = "not_built_yet"


class CheckFailed(GkitError):
    """The tool ran and the answer is no: a signature, policy, chain or plan failed."""

    exit_code = EXIT_CHECK_FAILED
    kind = "check_failed"


class VerificationFailed(CheckFailed):
    kind = "verification_failed"


class PolicyDenied(CheckFailed):
    kind = "policy_denied"


class AuditChainBroken(CheckFailed):
    kind = "audit_chain_broken"


class PlanDoesNotFit(CheckFailed):
    kind = "plan_does_not_fit"


class ModelFormatError(CheckFailed):
    """A model directory or file is malformed (bad config, missing shard, wrong shape)."""

    kind = "model_format"


@contextmanager
def runtime_errors():
    """Translate the runtime's exceptions into gkit's error hierarchy."""
    try:
        from granite_runtime.spec.errors import ModelLoadError, RequestError, SettingError
    except ImportError as missing:
        raise UsageError(
            f"the runtime is not installed ({missing.name} is missing); install "
            "gkit with the 'runtime' extra: pip install 'granite-ops-kit[runtime]'."
        ) from None
    try:
        yield
    except ModelLoadError as bad:
        raise ModelFormatError(str(bad)) from None
    except RequestError as bad:
        raise UsageError(bad.message) from None
    except SettingError as bad:
        raise UsageError(str(bad)) from None
