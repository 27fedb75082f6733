"""The mesh as a value: identities, services and endpoints, splits, permissions (see ``state``)."""
