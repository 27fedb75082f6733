"""gitmesh: a GitOps control plane for an SMI service mesh."""

__version__ = "0.1.0"
