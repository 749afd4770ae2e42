"""A user's Gmail connection: connect (incremental consent), disconnect, revoke before delete."""

from broker.connections.connect import ACTION, ConnectService, offered_scopes
from broker.connections.duties import RevocationWindows, purge_inactive, retry_revocations
from broker.connections.lookup import (
    OwnConnection,
    disconnect_user,
    own_connection,
    tenant_connections,
)
from broker.connections.revoke import disconnect, revoke_before_delete, revoke_grants

__all__ = [
    "ACTION", "ConnectService", "OwnConnection", "RevocationWindows", "disconnect",
    "disconnect_user", "offered_scopes", "own_connection", "purge_inactive",
    "retry_revocations", "revoke_before_delete", "revoke_grants", "tenant_connections",
]
