"""Delivery: container images, the Helm chart, Kubernetes and Docker targets."""
