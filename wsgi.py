"""WSGI entry point: ``gunicorn wsgi:app``, with MXISD_CONFIG naming the file."""

from __future__ import annotations

import logging

from mxisd_flask.app import create_app
from mxisd_flask.cli import setup_logging
from mxisd_flask.config import load_config

# gunicorn's command line sets up only gunicorn's own loggers: without this,
# our INFO lines would be dropped and warnings printed bare.
setup_logging()
config = load_config()
logging.getLogger().setLevel(config.log_level)
app = create_app(config, background=True)
