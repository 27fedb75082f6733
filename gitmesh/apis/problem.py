"""What a reader finds wrong with an object as written."""

from __future__ import annotations

from dataclasses import dataclass

from gitmesh.mesh.state import ServiceRef
from gitmesh.objects import Path


@dataclass(frozen=True)
class Problem:
    """A diagnostic code, the field it is about, and what is wrong. Validation reports it as a
    diagnostic; the mesh built from a cluster, as a warning."""

    code: str
    path: Path
    message: str
    missing: ServiceRef | None = None  # a Service named but not known: the cluster may still have it
