"""The error tree. Every failure gitmesh reports to a person is a ``GitmeshError``.

    GitmeshError
    ├── SourceError      the repo, ref or path cannot be read
    ├── PlanError        a plan cannot be made, saved or loaded
    │   └── StalePlan    the live state changed since the plan was made
    ├── ClusterError     the cluster backend refused or failed
    ├── CertsError       the mesh CA's kept state cannot be read
    ├── ConfigError      the controller's configuration file cannot be used
    ├── RolloutError     a rollout cannot be found or moved as asked
    └── MetricsError     the sidecars' stats or Prometheus cannot be read

Invalid manifests are not errors: validation returns diagnostics. Caller
mistakes (a wrong type passed in code) raise TypeError / ValueError instead.
"""

from __future__ import annotations


class GitmeshError(Exception):
    """Something gitmesh cannot do; the message says what and why."""


class SourceError(GitmeshError):
    pass


class PlanError(GitmeshError):
    pass


class StalePlan(PlanError):
    pass


class ClusterError(GitmeshError):
    pass


class CertsError(GitmeshError):
    pass


class ConfigError(GitmeshError):
    """The controller's configuration file cannot be used."""


class RolloutError(GitmeshError):
    pass


class MetricsError(GitmeshError):
    """A metrics source could not be read; a rollout skips its check rather than failing it."""
