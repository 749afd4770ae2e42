"""Admin page /admin/webhooks: add (secret shown once), disable, recent deliveries."""

from __future__ import annotations

import uuid

from flask import Blueprint, current_app, render_template, request
from werkzeug.wrappers import Response

from broker import webhooks
from broker.db import get_db
from broker.errors import InvalidRequest
from broker.keys import get_keys
from broker.web import guard
from broker.web.admin import access
from broker.web.admin.worker_status import worker_seen
from broker.webhooks import EVENTS

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.get("")
def index() -> str:
    """List webhooks and their latest deliveries, with a form to add one."""
    with get_db().transaction(write=False) as session:
        hooks = webhooks.list_webhooks(session, access.tenant_id())
        deliveries = webhooks.recent_deliveries(session, access.tenant_id())
        worker = worker_seen(session, guard.now())
    return render_template(
        "admin/webhooks.html", webhooks=hooks, deliveries=deliveries, events=EVENTS,
        worker=worker,
    )


@bp.post("")
def add() -> Response | str:
    """Register a webhook and show its signing secret this once."""
    try:
        with get_db().transaction() as session:
            added = webhooks.add(
                session, get_keys(), access.tenant_id(), url=request.form.get("url", ""),
                events=request.form.getlist("events"),  # the page always names its events
                allow_private=current_app.config["BROKER"].WEBHOOK_ALLOW_PRIVATE,
                actor=access.actor(), ip=access.ip(),
            )
    except InvalidRequest as refused:
        return access.done(f"Not added: {refused.description}", "admin.webhooks.index")
    # The secret goes into this answer only: not a URL, not a flash cookie, not a log.
    return render_template("admin/webhook_secret.html", webhook=added.webhook,
                           secret=added.secret)


@bp.post("/<uuid:webhook_id>/disable")
def disable(webhook_id: uuid.UUID) -> Response:
    """Stop deliveries to a webhook."""
    with get_db().transaction() as session:
        hook = webhooks.disable(
            session, webhook_id, tenant_id=access.tenant_id(), actor=access.actor(),
            ip=access.ip(),
        )
    return access.done(f"Webhook {hook.url} is disabled.", "admin.webhooks.index")
