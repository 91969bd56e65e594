"""The ``mxisd`` command: run, check-config, keys show, invites."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any

from mxisd_flask.config import WARNINGS, Config, load_config
from mxisd_flask.errors import ConfigError

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging() -> None:
    """Our log lines on standard error, at INFO until the file sets the level.

    Does nothing when the host program has configured logging already.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mxisd", description="Matrix identity server")
    parser.add_argument("--config", help="YAML configuration file (or $MXISD_CONFIG)")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="serve in the foreground under gunicorn")
    run.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    check = commands.add_parser("check-config", help="validate the configuration")
    check.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings (unknown keys) too"
    )
    keys = commands.add_parser("keys", help="signing key commands")
    keys.add_argument("action", choices=["show"])
    keys.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    invites = commands.add_parser(
        "invites", help="list stored invites and how each was resolved"
    )
    invites.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    setup_logging()
    if args.command == "check-config":
        # It prints the file's warnings itself, once each (_report_check).
        logging.getLogger("mxisd_flask.config").setLevel(logging.ERROR)
    path = getattr(args, "sub_config", None) or args.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"mxisd: configuration error: {exc}", file=sys.stderr)
        return 1
    logging.getLogger().setLevel(config.log_level)

    if args.command == "check-config":
        return _report_check(args.strict)
    if args.command == "keys":
        return _show_key(config)
    if args.command == "invites":
        return _list_invites(config)
    return serve(config, path)


def _report_check(strict: bool) -> int:
    for warning in WARNINGS:
        print(f"warning: {warning}", file=sys.stderr)
    if WARNINGS and strict:
        print(f"mxisd: {len(WARNINGS)} warning(s), failing (--strict)", file=sys.stderr)
        return 1
    suffix = f" with {len(WARNINGS)} warning(s)" if WARNINGS else ""
    print(f"configuration OK{suffix}")
    return 0


def _show_key(config: Config) -> int:
    """Print the public key; never creates one (that is the server's job)."""
    from mxisd_flask.crypto.keys import KEY_ID, load_signing_key, public_key_b64

    try:
        key = load_signing_key(config.key_path)
    except FileNotFoundError:
        print(
            f"mxisd: no signing key yet at {config.key_path}; it is created "
            "on the server's first start",
            file=sys.stderr,
        )
        return 1
    except ConfigError as exc:
        print(f"mxisd: {exc}", file=sys.stderr)
        return 1
    print(f"{KEY_ID} {public_key_b64(key)}")
    return 0


def _list_invites(config: Config) -> int:
    """Print every stored invite, oldest first (see invite_report)."""
    from mxisd_flask.services.invite_report import invite_lines
    from mxisd_flask.services.onbind import invite_config
    from mxisd_flask.storage.db import Database

    try:
        expiry = invite_config(config.values)
        db = Database(config.storage)
        db.migrate()  # a server that never ran has no tables yet
        lines = invite_lines(db, expiry)
    except ConfigError as exc:
        print(f"mxisd: configuration error: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    print(f"{len(lines)} invite(s)", file=sys.stderr)
    return 0


def serve(config: Config, path: str | None) -> int:
    """Run gunicorn in the foreground; SIGTERM stops it cleanly."""
    from gunicorn.app.base import BaseApplication

    from mxisd_flask.app import create_app

    # Create the key and schema once before forking, so workers never race.
    from mxisd_flask.services import build_services
    from mxisd_flask.workers import worker_class

    try:
        build_services(config)
    except ConfigError as exc:
        print(f"mxisd: configuration error: {exc}", file=sys.stderr)
        return 1

    try:
        _check_port_free(config.server.hostname, config.server.port)
    except OSError as exc:
        print(f"mxisd: server.port: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1

    class Application(BaseApplication):  # type: ignore[misc]  # untyped base
        def load_config(self) -> None:
            server = config.server
            options: dict[str, Any] = {
                "bind": _bind(server.hostname, server.port),
                "workers": server.workers,
                "threads": server.threads,
                "worker_class": worker_class(server.worker_class, server.threads),
                "keepalive": 75,
                # Each worker listens on a socket of its own, and the kernel
                # spreads new connections over them. With one shared socket,
                # one worker took 15 of 16 keep-alive connections and the
                # other idled (bench/RESULTS.md).
                "reuse_port": True,
                "graceful_timeout": 10,
                "accesslog": None,
                "loglevel": config.log_level.lower(),
            }
            if server.tls_cert_file and server.tls_key_file:
                options["certfile"] = server.tls_cert_file
                options["keyfile"] = server.tls_key_file
            # gunicorn 24+ opens a control socket under $HOME, which a system
            # user lacks and which two instances would share.
            options["control_socket_disable"] = True
            # With reuse_port the master holds no socket and its own
            # "Listening at:" line names none: say where we listen.
            scheme = "https" if "certfile" in options else "http"
            address = f"{scheme}://{options['bind']}"
            options["when_ready"] = lambda arbiter: arbiter.log.info(
                "Serving on %s (%s workers)", address, server.workers
            )
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(config, background=True)

    Application().run()
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Raise OSError if another server listens on our address already.

    Sockets with SO_REUSEPORT (ours, see serve) share a port with any other
    such socket of the same user, so a second instance configured with the
    same port would silently take half the connections. A plain bind, as
    here, still fails against it.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )[0]
    with socket.socket(family, kind, proto) as probe:
        # Connections of a previous run in TIME_WAIT are no conflict.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
