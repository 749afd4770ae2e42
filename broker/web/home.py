"""The landing page, the stylesheet and the favicon."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, redirect, render_template, url_for
from werkzeug.wrappers import Response

from broker.web import guard

bp = Blueprint("home", __name__)
STATIC = Path(__file__).resolve().parent.parent / "static"


@bp.get("/")
def index() -> Response | str:
    """Offer sign-in when signed out; send signed-in people to their connection."""
    state = guard.current()
    if state.valid:
        return redirect(url_for("connections.index"))
    if state.may_resume:
        return redirect(url_for("auth.login"))
    return render_template("index.html", google_configured=guard.settings().google_configured)


@bp.get("/static/broker.css")
def stylesheet() -> Response:
    """Serve the one stylesheet (no inline styles: the CSP forbids them)."""
    response = Response((STATIC / "broker.css").read_bytes(), mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get("/favicon.ico")  # browsers ask here on their own
@bp.get("/favicon.svg")  # registered first: url_for builds this one
def favicon() -> Response:
    """Serve the icon browsers show in tabs (an SVG: one small file, sharp at every size)."""
    response = Response((STATIC / "favicon.svg").read_bytes(), mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response
