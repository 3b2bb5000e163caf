"""Deterministic Granite-architecture checkpoints for tests, demos, sizing and GPU work."""
