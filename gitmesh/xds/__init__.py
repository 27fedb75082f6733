"""Serving Envoy configuration over xDS v3 (ADS, state of the world and delta).

The cache holds one consistent snapshot per proxy and knows nothing about gRPC;
the server speaks the protocol and knows nothing about SMI. Translating the mesh
into Envoy resources is a separate step that hands snapshots to the cache.
"""
