"""Admin page /admin/webhooks: add (secret shown once, after a redirect), disable, deliveries."""

from __future__ import annotations

import uuid

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from broker import webhooks
from broker.db import get_db
from broker.errors import InvalidRequest
from broker.keys import get_keys
from broker.web import guard
from broker.web.admin import access, once
from broker.web.admin.worker_status import worker_seen
from broker.webhooks import EVENTS

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def _page(form: dict[str, object] | None = None, error: str = "") -> str:
    with get_db().transaction(write=False) as session:
        hooks = webhooks.list_webhooks(session, access.tenant_id())
        deliveries = webhooks.recent_deliveries(session, access.tenant_id())
        worker = worker_seen(session, guard.now())
    return render_template(
        "admin/webhooks.html", webhooks=hooks, deliveries=deliveries, events=EVENTS,
        worker=worker, form=form or {"url": "", "events": list(EVENTS), "client_cert": ""},
        error=error,
    )


@bp.get("")
def index() -> str:
    """List webhooks and their latest deliveries, with a form to add one."""
    return _page()


@bp.post("")
def add() -> Response | tuple[str, int]:
    """Register a webhook, keep its signing secret for one showing, and redirect there."""
    try:
        with get_db().transaction() as session:
            added = webhooks.add(
                session, get_keys(), access.tenant_id(), url=request.form.get("url", ""),
                events=request.form.getlist("events"),  # the page always names its events
                allow_private=current_app.config["BROKER"].WEBHOOK_ALLOW_PRIVATE,
                actor=access.actor(), ip=access.ip(),
                client_cert=request.form.get("client_cert", "").strip()[:40_000] or None,
                client_key=request.form.get("client_key", "").strip()[:20_000].encode() or None,
            )
            once.keep_for_admin(session, {"webhook_id": str(added.webhook.id),
                                          "url": added.webhook.url, "secret": added.secret})
    except InvalidRequest as refused:
        typed: dict[str, object] = {"url": request.form.get("url", "")[:2000],
                 "events": request.form.getlist("events"),
                 "client_cert": request.form.get("client_cert", "")[:40_000]}
        return _page(typed, f"Not added: {refused.description}"), 400
    return redirect(url_for("admin.webhooks.secret", webhook_id=added.webhook.id), 303)


@bp.get("/<uuid:webhook_id>/secret")
def secret(webhook_id: uuid.UUID) -> str:
    """Show a new signing secret once; a reload finds it gone and says so."""
    kept = once.take_for_admin(("webhook_id", str(webhook_id)))
    return render_template("admin/webhook_secret.html", kept=kept)


@bp.post("/<uuid:webhook_id>/disable")
def disable(webhook_id: uuid.UUID) -> Response:
    """Stop deliveries to a webhook."""
    with get_db().transaction() as session:
        hook = webhooks.disable(
            session, webhook_id, tenant_id=access.tenant_id(), actor=access.actor(),
            ip=access.ip(),
        )
    return access.done(f"Webhook {hook.url} is disabled.", "admin.webhooks.index")
