"""cert-manager's CertificateRequests on the cluster's client: what ``certs.certmanager`` asks of
the Kubernetes API (``certmanager.Requests``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitmesh.certs.certmanager import GROUP
from gitmesh.kube.client import Client


class CertificateRequests:
    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, namespace: str, request: Mapping[str, Any]) -> dict[str, Any]:
        return self.client.request("POST", _path(namespace), body=request)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self.client.get(f"{_path(namespace)}/{name}")

    def delete(self, namespace: str, name: str) -> None:
        self.client.delete(f"{_path(namespace)}/{name}")


def _path(namespace: str) -> str:
    return f"/apis/{GROUP}/v1/namespaces/{namespace}/certificaterequests"


__all__ = ["CertificateRequests"]
