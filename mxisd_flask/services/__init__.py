"""The services layer, built once per process by ``build_services``."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mxisd_flask.config.recursion import recursion_config
from mxisd_flask.config.sections import Config
from mxisd_flask.crypto.keys import load_or_create_signing_key
from mxisd_flask.errors import ConfigError
from mxisd_flask.notify.settings import NotifySettings, notify_settings
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.services.accounts import AccountService, TermsService
from mxisd_flask.services.auth import AuthService, auth_config
from mxisd_flask.services.bind import BindService
from mxisd_flask.services.clock import Clock, now_ms
from mxisd_flask.services.directory import DirectoryService, directory_config
from mxisd_flask.services.hash_index import HashIndex
from mxisd_flask.services.homeserver_client import HomeserverClient, client_overrides
from mxisd_flask.services.invite import InviteService
from mxisd_flask.services.keys import KeyService
from mxisd_flask.services.login import LoginService, rewrite_rules
from mxisd_flask.services.lookup import LocalBindingProvider, LookupChain
from mxisd_flask.services.lookups import LookupService
from mxisd_flask.services.notifications import (
    MailSender,
    NotificationService,
    build_handlers,
)
from mxisd_flask.services.onbind import OnbindService, invite_config
from mxisd_flask.services.pepper import PepperService
from mxisd_flask.services.recursion import RecursionPolicy, RemoteLookup
from mxisd_flask.services.server_auth import ServerAuth, ServerKeys, our_names
from mxisd_flask.services.sessions import SessionService
from mxisd_flask.services.worker import BackgroundWorker
from mxisd_flask.storage.db import Database
from mxisd_flask.stores import build_stores
from mxisd_flask.stores.base import IdentityStore

# Seconds between two passes of the background worker (deliveries due,
# then resolution when invite.resolution.timer says so); a bind wakes it.
WORKER_INTERVAL_S = 10


@dataclass
class Services:
    config: Config
    db: Database
    stores: list[IdentityStore]
    chain: LookupChain
    keys: KeyService
    pepper: PepperService
    lookups: LookupService
    sessions: SessionService
    bind: BindService
    invites: InviteService
    accounts: AccountService
    terms: TermsService
    auth: AuthService
    onbind: OnbindService
    worker: BackgroundWorker
    directory: DirectoryService
    notifications: NotificationService
    notify: NotifySettings
    login: LoginService
    server_auth: ServerAuth
    recursion: RecursionPolicy


def build_services(
    config: Config, clock: Clock = now_ms, mail_sender: MailSender | None = None
) -> Services:
    """Wire adapters and services; migrates storage and ensures a pepper."""
    db = Database(config.storage)
    db.migrate()
    signing_key = load_or_create_signing_key(config.key_path)
    keys = KeyService(
        signing_key, config.server.name, config.server.public_url, db, clock
    )
    pepper = PepperService(db, config.hashing, clock)
    pepper.current()
    stores = build_stores(config)
    index = HashIndex(
        stores,
        refresh_s=config.values["hashing.index.refresh"],
        build_timeout_s=config.values["hashing.index.buildTimeout"],
    )
    notifications = NotificationService(config, build_handlers(config, mail_sender))
    sessions = SessionService(
        db, notifications, clock, config.session_ttl_s, config.validation_enabled
    )
    recursion = recursion_config(config)
    outbound = OutboundClient(
        config.outbound_allowed,
        config.outbound_timeout_s,
        config.verify_certs,
        nameservers=recursion.nameservers,
        ca_file=_ca_file(config),
    )
    remote = RemoteLookup(recursion, outbound, via=config.server.name)
    bindings = LocalBindingProvider(db, config.storage.sqlite_bindings_in_memory)
    chain = LookupChain(bindings, stores, index, remote)
    onbind = OnbindService(
        db,
        # invite.resolution.recursive picks one: with the remotes, or local
        # only (our bindings and configured stores).
        (lambda m, a: chain.lookup(m, a, recursive=True), chain.lookup),
        keys,
        outbound,
        config.federation_overrides,
        invite_config(config.values),
        clock,
    )
    worker = BackgroundWorker("onbind", onbind.run_once, WORKER_INTERVAL_S)
    onbind.on_queued = worker.wake
    homeserver = HomeserverClient(
        outbound, client_overrides(config.values), config.domain
    )
    notify = notify_settings(config)
    db.close()  # connections are per thread; serving threads open their own
    return Services(
        config=config,
        db=db,
        stores=stores,
        chain=chain,
        keys=keys,
        pepper=pepper,
        lookups=LookupService(chain, keys, pepper, config.hashing),
        sessions=sessions,
        bind=BindService(
            db,
            sessions,
            keys,
            pepper,
            clock,
            onbind,
            fraud_warnings=notifications if notify.send_fraud_warning else None,
        ),
        invites=InviteService(db, chain, keys, notifications, clock),
        accounts=AccountService(db, outbound, config.federation_overrides, clock),
        terms=TermsService(db, config.policies),
        auth=AuthService(stores, auth_config(config.values, config.domain)),
        onbind=onbind,
        worker=worker,
        directory=DirectoryService(stores, homeserver, directory_config(config.values)),
        notifications=notifications,
        notify=notify,
        login=LoginService(
            chain.lookup, homeserver, rewrite_rules(config.values), config.domain
        ),
        server_auth=ServerAuth(
            ServerKeys(outbound, config.federation_overrides, clock),
            our_names(config.server.name, config.server.public_url),
        ),
        recursion=RecursionPolicy(recursion),
    )


def _ca_file(config: Config) -> str | None:
    path = config.values["federation.caFile"]
    if path is None:
        return None
    path = os.path.join(config.base_dir, os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ConfigError(f"federation.caFile: no such file {path}")
    return str(path)
