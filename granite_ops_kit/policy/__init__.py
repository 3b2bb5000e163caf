"""Policy decisions: shipped policies are JSON data evaluated by Rego rules (regopy)."""
