"""granite-ops-kit: verify, size, package, deploy and audit IBM Granite 4.0 models."""

__version__ = "0.1.0"
