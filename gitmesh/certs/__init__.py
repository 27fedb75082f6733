"""The mesh certificate authority: SPIFFE workload certificates, renewal and root rotation.

Returns certificates and keys as PEM values; turning them into SDS secrets is
the xDS layer's job, so nothing here imports ``gitmesh.xds``.
"""
