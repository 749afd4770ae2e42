"""A user's Gmail connection: connect (incremental consent), disconnect, revoke before delete."""

from broker.connections.access import (
    AccessChange,
    AccessService,
    JobAccess,
    Removal,
    job_access,
)
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
    "ACTION", "AccessChange", "AccessService", "ConnectService", "JobAccess",
    "OwnConnection", "Removal", "RevocationWindows", "disconnect", "disconnect_user",
    "job_access", "offered_scopes", "own_connection", "purge_inactive", "retry_revocations",
    "revoke_before_delete", "revoke_grants", "tenant_connections",
]
