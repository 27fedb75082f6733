"""mTLS between sidecars, as Envoy resources: SDS secrets, TLS transport sockets, RBAC principals.

Every sidecar is sent two secrets over SDS on its ADS stream: its own
identity's certificate and key (``workload-cert``) and the mesh's root
certificates (``trust-bundle``). The names are the same for every sidecar, as
a sidecar holds one identity's certificate only: so the clusters of every
sidecar are one set of messages, built and encoded once per mesh, and which
certificate the name stands for is the server's choice per proxy. Its inbound listener
requires a client certificate the bundle verifies, and the RBAC filters
admit callers by the SPIFFE ID in it; its outbound clusters present the
sidecar's certificate and accept only a server whose SPIFFE ID belongs to the
service's namespace (a Service selects only pods of its own namespace, so
only identities of that namespace can serve it).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, message, wrappers_pb2

from gitmesh.certs.ca import spiffe_id
from gitmesh.mesh.state import Identity

WORKLOAD_CERT = "workload-cert"
TRUST_BUNDLE = "trust-bundle"
_TLS_SOCKET = "envoy.transport_sockets.tls"


def secrets(cert_pem: str, key_pem: str, bundle: Sequence[str]) -> dict[str, message.Message]:
    """What one sidecar is sent over SDS: its identity's certificate and key, and the bundle."""
    return {
        WORKLOAD_CERT: secret_pb2.Secret(
            name=WORKLOAD_CERT,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_string=cert_pem),
                private_key=base_pb2.DataSource(inline_string=key_pem),
            ),
        ),
        TRUST_BUNDLE: secret_pb2.Secret(
            name=TRUST_BUNDLE,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_string="".join(bundle))
            ),
        ),
    }


def downstream(callers: Sequence[Identity] | None = None, trust_domain: str = "") -> base_pb2.TransportSocket:
    """An inbound listener's TLS: present the sidecar's certificate, require one from the caller, and
    with ``callers``, accept only theirs (the handshake fails for anyone else)."""
    common = tls_pb2.CommonTlsContext(tls_certificate_sds_secret_configs=[_sds(WORKLOAD_CERT)])
    if callers is None:
        common.validation_context_sds_secret_config.CopyFrom(_sds(TRUST_BUNDLE))
    else:
        only = [
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.URI,
                matcher=string_pb2.StringMatcher(exact=spiffe_id(trust_domain, c)),
            )
            for c in callers
        ]
        common.combined_validation_context.CopyFrom(
            tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=only
                ),
                validation_context_sds_secret_config=_sds(TRUST_BUNDLE),
            )
        )
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=common, require_client_certificate=wrappers_pb2.BoolValue(value=True)
    )
    return _socket(context)


def upstream(server_namespace: str, trust_domain: str) -> base_pb2.TransportSocket:
    """An outbound cluster's TLS: present the sidecar's certificate; accept a server of the namespace."""
    server = string_pb2.StringMatcher(prefix=f"spiffe://{trust_domain}/ns/{server_namespace}/sa/")
    san = common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=server)
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[_sds(WORKLOAD_CERT)],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=[san]
                ),
                validation_context_sds_secret_config=_sds(TRUST_BUNDLE),
            ),
        )
    )
    return _socket(context)


def principal(identity: Identity, trust_domain: str) -> rbac_pb2.Principal:
    """An RBAC principal: the peer certificate's SPIFFE ID is ``identity``'s."""
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(
            principal_name=string_pb2.StringMatcher(exact=spiffe_id(trust_domain, identity))
        )
    )


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    ads = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads)


def _socket(context: message.Message) -> base_pb2.TransportSocket:
    packed = any_pb2.Any()
    packed.Pack(context)
    return base_pb2.TransportSocket(name=_TLS_SOCKET, typed_config=packed)


__all__ = ["TRUST_BUNDLE", "WORKLOAD_CERT", "downstream", "principal", "secrets", "upstream"]
