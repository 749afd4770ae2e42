"""WSGI entry point for gunicorn: `broker.wsgi:app`."""

import gc

from broker import create_app

app = create_app()
# What is loaded by now lives as long as the worker: a full collection re-scanning those
# ~100,000 objects held the GIL for tens of milliseconds, stalling all the worker's threads.
gc.freeze()
