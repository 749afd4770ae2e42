"""`/.well-known/oauth-authorization-server` (RFC 8414): how jobs authenticate to the broker."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from broker.jwks import ALGORITHMS
from broker.tenancy import clients

bp = Blueprint("metadata", __name__)


@bp.get("/.well-known/oauth-authorization-server")
def authorization_server() -> Response:
    """Publish the token endpoint, the client authentication methods and the mTLS alias."""
    settings = current_app.config["BROKER"]
    base = str(settings.PUBLIC_URL).rstrip("/")
    document: dict[str, object] = {
        "issuer": base,
        "token_endpoint": base + "/api/v1/token",
        "token_endpoint_auth_methods_supported": list(clients.METHODS),
        # private_key_jwt: the assertion's `aud` is the URL of the endpoint it is sent to.
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        # Google's access tokens cannot be bound to a client certificate (RFC 8705 §3).
        "tls_client_certificate_bound_access_tokens": False,
    }
    if settings.MTLS_URL:
        document["mtls_endpoint_aliases"] = {
            "token_endpoint": str(settings.MTLS_URL).rstrip("/") + "/api/v1/token"}
    response = jsonify(document)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
