"""A user's Gmail connection: connect (incremental consent), disconnect, revoke before delete."""

from broker.connections.connect import ACTION, ConnectService, offered_scopes
from broker.connections.duties import RevocationWindows, purge_inactive, retry_revocations
from broker.connections.revoke import disconnect, revoke_before_delete, revoke_grants

__all__ = ["ACTION", "ConnectService", "disconnect", "offered_scopes", "revoke_before_delete",
           "revoke_grants"]
__all__ += ["RevocationWindows", "purge_inactive", "retry_revocations"]
