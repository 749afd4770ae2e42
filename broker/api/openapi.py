"""The OpenAPI 3.1 document of /api/v1: every request and every error."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from broker import errors
from broker.api import json_errors

bp = json_errors(Blueprint("api_openapi", __name__, url_prefix="/api/v1"))

REASONS = ["revoked_or_expired", "reauth_policy", "unused_too_long", "testing_app_expiry",
           "token_unreadable"]
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
USER = {"type": "object", "required": ["id", "email"], "additionalProperties": False,
        "properties": {"id": {"type": "string", "format": "uuid"}, "email": {"type": "string"}}}


def _error(*codes: type[errors.BrokerError], **extras: Any) -> dict[str, Any]:
    """Return the response object of one status: the error body with its codes and extras."""
    properties: dict[str, Any] = {
        "error": {"type": "string", "enum": sorted({c.error for c in codes})},
        "error_description": {"type": "string"},
        **extras,
    }
    return {
        "description": "; ".join(f"{c.error}: {c.default_description}" for c in codes),
        "content": {"application/json": {"schema": {
            "type": "object", "required": ["error", "error_description"],
            "properties": properties, "additionalProperties": False,
        }}},
    }


URL = {"type": "string", "format": "uri"}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
COMMON = {
    "401": {**_error(errors.InvalidClient),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    "403": _error(errors.IpNotAllowed),
    "413": _error(errors.PayloadTooLarge),
    "429": {**_error(errors.RateLimited), "headers": RETRY_AFTER},
    "500": _error(errors.ServerError),
}

TOKEN_REQUEST = {
    "type": "object", "required": ["user"], "additionalProperties": False,
    "properties": {
        "user": {"type": "string", "minLength": 1, "maxLength": 320,
                 "description": "email address or user id"},
        "scopes": {"type": "array", "minItems": 1, "maxItems": 20,
                   "items": {"type": "string", "maxLength": 200},
                   "description": "full or short scope names; default: allowed ∩ granted"},
        "min_ttl": {"type": "integer", "minimum": 0, "maximum": 3000, "default": 300},
        "rejected_token": {"type": "string", "maxLength": 2048,
                           "description": "an access token Google just refused"},
        "client_id": {"type": "string", "maxLength": 64,
                      "description": "the client a certificate authenticates"},
        "client_assertion_type": {"const": "urn:ietf:params:oauth:client-assertion-type:"
                                           "jwt-bearer"},
        "client_assertion": {"type": "string", "maxLength": 8192,
                             "description": "private_key_jwt: a JWT signed with the client's "
                                            "key, aud the URL of this endpoint"},
    },
}
TOKEN_RESPONSE = {
    "type": "object", "additionalProperties": False,
    "required": ["access_token", "token_type", "expires_at", "expires_in", "scopes", "user"],
    "properties": {
        "access_token": {"type": "string"}, "token_type": {"const": "Bearer"},
        "expires_at": TIME, "expires_in": {"type": "integer", "minimum": 0},
        "scopes": {"type": "array", "items": {"type": "string"}}, "user": USER,
    },
}
EXCHANGE_REQUEST = {
    "type": "object", "additionalProperties": False,
    "required": ["grant_type", "subject_token", "subject_token_type", "login_hint"],
    "properties": {
        "grant_type": {"const": "urn:ietf:params:oauth:grant-type:token-exchange"},
        "subject_token": {"type": "string", "minLength": 1, "maxLength": 8192,
                          "description": "the workload JWT its platform signed"},
        "subject_token_type": {"enum": ["urn:ietf:params:oauth:token-type:jwt",
                                        "urn:ietf:params:oauth:token-type:id_token"]},
        "requested_token_type": {"enum": ["urn:ietf:params:oauth:token-type:access_token",
                                          "urn:broker:token-type:proxy"]},
        "login_hint": {"type": "string", "minLength": 1, "maxLength": 320,
                       "description": "the user's email address or id"},
        "scope": {"type": "string", "description": "space-separated, full or short names"},
        "resource": {"const": "https://gmail.googleapis.com/"},
        "audience": {"type": "string", "description": "only the broker's public URL"},
        "min_ttl": {"type": "integer", "minimum": 0, "maximum": 3000, "default": 300},
        "client_id": {"type": "string", "maxLength": 64},
        "client_assertion_type": {"const": "urn:ietf:params:oauth:client-assertion-type:"
                                           "jwt-bearer"},
        "client_assertion": {"type": "string", "maxLength": 8192},
    },
}
EXCHANGE_RESPONSE = {
    "type": "object", "additionalProperties": False,
    "required": ["access_token", "issued_token_type", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string"},
        "issued_token_type": {"enum": ["urn:ietf:params:oauth:token-type:access_token",
                                       "urn:broker:token-type:proxy"]},
        "proxy_url": {**URL, "description": "with a proxy token: where to use it"},
        "token_type": {"const": "Bearer"}, "expires_in": {"type": "integer", "minimum": 0},
        "scope": {"type": "string"},
    },
}
PROXY_TOKEN_REQUEST = {
    "type": "object", "required": ["user"], "additionalProperties": False,
    "properties": {
        "user": {"type": "string", "minLength": 1, "maxLength": 320,
                 "description": "email address or user id"},
        "ttl": {"type": "integer", "minimum": 60, "maximum": 3600,
                "description": "seconds the proxy token lives (at most BROKER_PROXY_TOKEN_TTL, "
                               "its default)"},
        "client_id": {"type": "string", "maxLength": 64,
                      "description": "with a client certificate: the client it authenticates"},
        "client_assertion_type": {"const": "urn:ietf:params:oauth:client-assertion-type:"
                                           "jwt-bearer"},
        "client_assertion": {"type": "string", "maxLength": 8192},
    },
}
PROXY_TOKEN_RESPONSE = {
    "type": "object", "additionalProperties": False,
    "required": ["proxy_token", "token_type", "expires_at", "expires_in", "proxy_url", "user"],
    "properties": {
        "proxy_token": {"type": "string", "description": "opaque; good only at proxy_url"},
        "token_type": {"const": "Bearer"}, "expires_at": TIME,
        "expires_in": {"type": "integer", "minimum": 60}, "proxy_url": URL, "user": USER,
    },
}
PROXY = (
    "Gmail through the broker: `/proxy/gmail/v1/users/{userId}/…` and "
    "`/proxy/upload/gmail/v1/users/{userId}/…` pass through to Gmail's REST API, path for path "
    "(set google-api-python-client's `api_endpoint` to `{broker}/proxy/`). Authenticate with a "
    "proxy token (`Authorization: Bearer`, from `POST /api/v1/proxy/token` or the token "
    "exchange with `requested_token_type=urn:broker:token-type:proxy`; `userId` `me`) or "
    "with the client's Basic credentials and the user's address as `userId`. Each call passes "
    "the token hand-out's checks and the client's Gmail method allowlist (403 "
    "`method_not_allowed`, naming the method), and Gmail's quota governor (429 `rate_limited` "
    "with Retry-After); paths that match no Gmail method or are ambiguous answer 400 "
    "`egress_refused`, the batch endpoint 400 `batch_not_supported`. Gmail's own answers, "
    "errors included, pass through unchanged but for headers outside an allowlist; the Google "
    "token never leaves the broker."
)
CONNECTION_LIST = {
    "type": "object", "required": ["connections", "next_cursor"], "additionalProperties": False,
    "properties": {
        "connections": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "user", "status", "status_reason", "granted_scopes",
                         "last_refresh_at", "last_used_at"],
            "properties": {
                "id": {"type": "string", "format": "uuid"}, "user": USER,
                "status": {"enum": ["active", "degraded", "needs_reauth", "revoked"]},
                "status_reason": {"type": ["string", "null"]},
                "granted_scopes": {"type": "array", "items": {"type": "string"}},
                "last_refresh_at": NULLABLE_TIME, "last_used_at": NULLABLE_TIME,
            },
        }},
        "next_cursor": {"type": ["string", "null"]},
    },
}


def document() -> dict[str, Any]:
    """Return the OpenAPI document."""
    no_store = {"Cache-Control": {"schema": {"const": "no-store"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Gmail token broker API", "version": "1", "description": PROXY},
        "components": {
            "securitySchemes": {"client": {"type": "http", "scheme": "basic"}},
            "schemas": {"TokenRequest": TOKEN_REQUEST, "TokenResponse": TOKEN_RESPONSE,
                        "ExchangeRequest": EXCHANGE_REQUEST,
                        "ExchangeResponse": EXCHANGE_RESPONSE,
                        "ConnectionList": CONNECTION_LIST,
                        "ProxyTokenRequest": PROXY_TOKEN_REQUEST,
                        "ProxyTokenResponse": PROXY_TOKEN_RESPONSE},
        },
        "security": [{"client": []}],
        "paths": {
            "/api/v1/token": {"post": {
                "operationId": "getToken",
                "summary": "Hand out a user's Google access token, refreshed if needed",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/TokenRequest"}}}},
                "responses": {
                    **COMMON,
                    "200": {"description": "a token valid for min_ttl (or Google's lifetime)",
                            "headers": no_store, "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/TokenResponse"}}}},
                    "400": _error(errors.InvalidRequest),
                    "403": _error(errors.IpNotAllowed, errors.ScopeNotAllowed,
                                  errors.UserSuspended, errors.LoginRequired, login_url=URL),
                    "404": _error(errors.UnknownUser, errors.NotConnected, connect_url=URL),
                    "409": _error(errors.ReauthRequired, errors.ScopeNotGranted,
                                  reason={"enum": REASONS}, reauth_url=URL, consent_url=URL),
                    "415": _error(errors.UnsupportedMediaType),
                    "503": {**_error(errors.UpstreamUnavailable, errors.BrokerMisconfigured,
                                     errors.KeyServiceUnavailable),
                            "headers": RETRY_AFTER},
                },
            }},
            "/api/v1/oauth/token": {"post": {
                "operationId": "exchangeToken",
                "summary": "Exchange a workload JWT for a user's Google access token (RFC 8693)",
                "description": "No client secret: the trust rule the subject token satisfies "
                               "names the API client. Client authentication (Basic or "
                               "private_key_jwt) is optional; when given it must be the "
                               "rule's client. A bad subject token is described only as "
                               "'subject token rejected'.",
                "security": [{}, {"client": []}],
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {"$ref": "#/components/schemas/ExchangeRequest"}}}},
                "responses": {
                    **COMMON,
                    "200": {"description": "a token valid for min_ttl (or Google's lifetime)",
                            "headers": no_store, "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/ExchangeResponse"}}}},
                    "400": _error(errors.InvalidRequest, errors.UnsupportedGrantType,
                                  errors.InvalidTarget),
                    "403": _error(errors.IpNotAllowed, errors.Forbidden, errors.ScopeNotAllowed,
                                  errors.UserSuspended, errors.LoginRequired, login_url=URL),
                    "404": _error(errors.UnknownUser, errors.NotConnected, connect_url=URL),
                    "409": _error(errors.ReauthRequired, errors.ScopeNotGranted,
                                  reason={"enum": REASONS}, reauth_url=URL, consent_url=URL),
                    "415": _error(errors.UnsupportedMediaType),
                    "503": {**_error(errors.UpstreamUnavailable, errors.BrokerMisconfigured,
                                     errors.KeyServiceUnavailable),
                            "headers": RETRY_AFTER},
                },
            }},
            "/api/v1/proxy/token": {"post": {
                "operationId": "getProxyToken",
                "summary": "Issue a short-lived proxy token for Gmail through the broker "
                           "(no Google token leaves the broker)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ProxyTokenRequest"}}}},
                "responses": {
                    **COMMON,
                    "200": {"description": "a proxy token for one user",
                            "headers": no_store, "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/ProxyTokenResponse"}}}},
                    "400": _error(errors.InvalidRequest),
                    "403": _error(errors.IpNotAllowed, errors.UserSuspended,
                                  errors.LoginRequired, login_url=URL),
                    "404": _error(errors.UnknownUser, errors.NotConnected, connect_url=URL),
                    "409": _error(errors.ReauthRequired, errors.ScopeNotGranted,
                                  reason={"enum": REASONS}, reauth_url=URL, consent_url=URL),
                    "415": _error(errors.UnsupportedMediaType),
                    "503": {**_error(errors.KeyServiceUnavailable, errors.DatabaseUnavailable),
                            "headers": RETRY_AFTER},
                },
            }},
            "/api/v1/connections": {"get": {
                "operationId": "listConnections",
                "summary": "List the tenant's connections (no tokens)",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {
                        "enum": ["active", "degraded", "needs_reauth", "revoked"]}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
                ],
                "responses": {
                    **COMMON,
                    "200": {"description": "one page", "headers": no_store,
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/ConnectionList"}}}},
                    "400": _error(errors.InvalidRequest),
                },
            }},
            "/api/v1/openapi.json": {"get": {
                "operationId": "openapi", "security": [],
                "summary": "This document",
                "responses": {"200": {"description": "the OpenAPI document", "content": {
                    "application/json": {"schema": {"type": "object"}}}}},
            }},
        },
    }


@bp.get("/openapi.json")
def serve() -> Response:
    """Serve the OpenAPI document."""
    return jsonify(document())
