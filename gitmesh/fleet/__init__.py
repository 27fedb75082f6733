"""Fleets: a hub of clusters and configurations, agents in the members, compliance at a glance."""
