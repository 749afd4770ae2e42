"""Tenants, their users and API clients, policy editing and key rotation: one module a concern.

Each module below is a service namespace every surface calls (`tenants.create_tenant`, …).
"""

from broker.tenancy import (
    client_admin,
    client_auth,
    clients,
    key_rotation,
    policy,
    tenants,
    user_admin,
    users,
)
from broker.tenancy.client_auth import ClientInfo

__all__ = [
    "ClientInfo", "client_admin", "client_auth", "clients", "key_rotation", "policy", "tenants",
    "user_admin", "users",
]
