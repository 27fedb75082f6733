"""The Kubernetes client gitmesh shares: one transport for apply, watch and the state stores."""
