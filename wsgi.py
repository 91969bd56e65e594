"""WSGI entry point: ``gunicorn wsgi:app``, with MXISD_CONFIG naming the file."""

from __future__ import annotations

from mxisd_flask.app import create_app
from mxisd_flask.config import load_config

app = create_app(load_config(), background=True)
