"""WSGI entry point for gunicorn: `broker.wsgi:app`."""

from broker import create_app

app = create_app()
