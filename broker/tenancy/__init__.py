"""Tenants, their users and API clients (secrets, certificates, signed assertions), policy
editing and key rotation: one module a concern.

Each module below is a service namespace every surface calls (`tenants.create_tenant`, …): the
CLI and the admin pages call the same function for the same action, with the same audit.
"""

from broker.tenancy import (
    assertions,
    certificates,
    client_auth,
    clients,
    key_rotation,
    policy,
    tenants,
    users,
)
from broker.tenancy.client_auth import ClientInfo

__all__ = ["ClientInfo", "assertions", "certificates", "client_auth", "clients", "key_rotation",
           "policy", "tenants", "users"]
