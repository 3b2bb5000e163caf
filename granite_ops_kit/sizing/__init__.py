"""Capacity planning: how many sessions of what context fit on which GPUs, with which engine."""
