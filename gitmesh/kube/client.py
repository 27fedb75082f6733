"""The one transport to a Kubernetes API server: requests, server-side apply, watches.

Requests go through the official client's configured ``ApiClient`` (so every kubeconfig auth
method works) with raw JSON bodies: gitmesh needs the apply-patch content type and the dry-run
and field-manager parameters, which the typed APIs do not all offer. A body is encoded once, in
``Client.request``, and sent as those bytes whatever its content type. Object applies, the cluster
watch and gitmesh's own state stores all go through here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import kubernetes.client
import kubernetes.config
import urllib3

from gitmesh.errors import ClusterError
from gitmesh.kube import errors
from gitmesh.objects import ObjectRef

FIELD_MANAGER = "gitmesh"  # gitmesh applies as this field manager (its own state under suffixes)
CONCURRENCY = 8
_TIMEOUT = urllib3.Timeout(connect=5, read=30)  # seconds
_RETRY_FOR = 30.0  # seconds to keep retrying answers of 429 Too Many Requests

T = TypeVar("T")


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "") -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        ns = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{base}{ns}/{self.plural}" + (f"/{name}" if name else "")


NAMESPACE = Resource("", "v1", "namespaces", False)
CONFIGMAP = Resource("", "v1", "configmaps", True)
SECRET = Resource("", "v1", "secrets", True)
CRD = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False)


class Client:
    """One API server, as one kubeconfig context names it; safe to share between threads."""

    def __init__(self, api: kubernetes.client.ApiClient, name: str) -> None:
        self.api = api
        self.name = name
        self.server = api.configuration.host

    def describe(self) -> str:
        """The target as every command names it: ``kube:<context> at <server>``."""
        return f"kube:{self.name} at {self.server}"

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Client:
        """The usual conventions: --kubeconfig, else $KUBECONFIG; --context, else the current one;
        in a pod without either, the in-cluster service account."""
        cfg = kubernetes.client.Configuration()
        try:
            if kubeconfig or context or os.environ.get("KUBECONFIG") or not in_cluster():
                kubernetes.config.load_kube_config(
                    config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False
                )
                _, active = kubernetes.config.list_kube_config_contexts(kubeconfig)
                name = context or active["name"]
            else:
                kubernetes.config.load_incluster_config(client_configuration=cfg)
                name = "in-cluster"
        except (kubernetes.config.ConfigException, OSError, TypeError, KeyError) as e:
            # Name what was asked for and where it was looked up, as kubectl's errors do not.
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            wanted = f"context {context!r}" if context else "the current context"
            raise ClusterError(f"cannot load {wanted} from kubeconfig {where}: {e}") from e
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, CONCURRENCY * 2)
        cfg.retries = False
        return cls(kubernetes.client.ApiClient(cfg), name)

    def close(self) -> None:
        self.api.close()

    def get(
        self, path: str, query: Mapping[str, str] | None = None, ref: ObjectRef | None = None
    ) -> dict[str, Any]:
        return self.request("GET", path, query, ref=ref)

    def apply(
        self,
        path: str,
        body: Mapping[str, Any],
        manager: str,
        *,
        force: bool = False,
        dry_run: bool = False,
        strict: bool = False,
        ref: ObjectRef | None = None,
    ) -> dict[str, Any]:
        """Server-side apply ``body`` at ``path`` as field manager ``manager``."""
        query = {"fieldManager": manager}
        if strict:
            query["fieldValidation"] = "Strict"
        if force:
            query["force"] = "true"
        if dry_run:
            query["dryRun"] = "All"
        return self.request(
            "PATCH", path, query, body=body, content_type="application/apply-patch+yaml", ref=ref
        )

    def delete(self, path: str, ref: ObjectRef | None = None) -> None:
        self.request("DELETE", path, {"propagationPolicy": "Background"}, ref=ref)

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        ref: ObjectRef | None = None,
    ) -> dict[str, Any]:
        """``body`` goes as JSON (which is also YAML, for the apply-patch type), encoded here once.
        The API client's own encoding is not used: it depends on the content type and on its
        version, and encodes a JSON text declared as JSON a second time."""
        method, url, headers, _, _ = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        # The API client's connection pool: its TLS, proxy and credentials, as configured.
        pool = self.api.rest_client.pool_manager
        deadline = time.monotonic() + _RETRY_FOR
        while True:
            try:
                resp = pool.request(method, url, body=payload, headers=headers, timeout=_TIMEOUT)
                data = resp.data
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise errors.unreachable(self.server, e) from e
            # 429 means "not now" (throttled, or a new resource's storage still starting): wait as
            # told, like every Kubernetes client does, for a while.
            if resp.status == 429 and time.monotonic() < deadline:
                time.sleep(min(float(resp.headers.get("Retry-After") or 1), 1.0))
                continue
            if not 200 <= resp.status < 300:
                raise errors.api_error(resp.status, data, ref)
            return json.loads(data) if data else {}

    def watch(self, path: str, resource_version: str, seconds: int) -> Iterator[dict[str, Any]]:
        """The events of a watch from ``resource_version``, until the server ends it after ``seconds``."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(seconds),
            "allowWatchBookmarks": "true",
        }
        method, url, headers, _, _ = self.api.param_serialize(
            "GET",
            path,
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api.call_api(method, url, headers, None, _request_timeout=(5, seconds + 30))
            if resp.status != 200:
                raise errors.api_error(resp.status, resp.read())
            for line in resp.response:
                yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError, kubernetes.client.ApiException) as e:
            raise errors.unreachable(self.server, e) from e
        except ValueError as e:
            raise ClusterError(f"unreadable watch event from {path}: {e}") from e

    def parallel(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """``fn`` over ``items`` on a few threads at once, results in order."""
        items = list(items)
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(CONCURRENCY, len(items))) as pool:
            return list(pool.map(fn, items))


def in_cluster() -> bool:
    """Running in a pod, with its service account mounted."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )
