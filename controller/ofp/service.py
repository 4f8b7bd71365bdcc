"""The controller's Redis-backed services: state store, membership and the REST API.

``start_services(app)`` runs once when the app starts, before any switch gets flows: it
loads the pools' saved state from Redis into ``app.steering`` (so a restarted controller
resumes exactly where it was and switches get only the difference), then starts the
membership threads and the REST API server. It does not raise when Redis is unreachable
(the controller then runs from the topology and reconciles when Redis is back), but it
raises :class:`ServiceError` when the REST API cannot listen: the controller refuses to
start rather than run without it. ``stop_services(app)`` stops them.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.api.routes import ApiServer
    from controller.ofp.app import SteeringApp
    from controller.store.election import Election
    from controller.store.membership import Membership
    from controller.store.pools import Store

log = logging.getLogger("nfsteer.service")


@dataclass
class Services:
    app: SteeringApp
    store: Store | None = None
    membership: Membership | None = None
    election: Election | None = None
    api_server: ApiServer | None = None

    def stop(self) -> None:
        if self.api_server is not None:
            self.api_server.stop()
        if self.election is not None:
            self.election.stop()  # a leader that stops hands over at once
        if self.membership is not None:
            self.membership.stop()
        if self.store is not None:
            self.store.close()


class ServiceError(Exception):
    """A service of the controller could not start; the message says which and why."""


def services_of(app: SteeringApp) -> Services | None:
    """The services started for app (tests, benchmarks)."""
    return app.services


def start_services(app: SteeringApp) -> Services:
    from controller.api.routes import ApiConfigError, ApiServer, check_listen, create_api

    options = app.options
    services = Services(app)
    if options.redis_url:
        from controller.store.election import Election
        from controller.store.membership import Membership
        from controller.store.pools import Store

        services.store = Store.from_url(options.redis_url)
        services.membership = Membership(app, services.store)
        if not services.membership.restore():
            log.warning("redis unreachable at start: running from the topology until it is back")
        # Several controllers may share this Redis: the lease decides which one leads.
        services.election = Election(
            app,
            services.store,
            services.membership,
            controller_id=options.controller_id,
            lease_ms=options.lease_ms,
            renew_ms=options.lease_renew_ms,
        )
    if options.api is not None:  # None: the API is off
        host, port = options.api
        try:
            check_listen(host, options.api_token)
            services.api_server = ApiServer(
                create_api(app, services.membership, services.store, services.election),
                host,
                port,
                app.fatal,
            )
            services.api_server.start()
        except (ApiConfigError, OSError) as e:
            # Running on without the API would leave the operator blind: refuse to start.
            services.api_server = None
            services.stop()
            raise ServiceError(f"REST API: {e}") from None
    if services.election is not None:
        from controller.store.election import ElectionError

        if services.api_server is not None:
            services.election.api_url = advertised_url(host, services.api_server.port)
        try:
            services.election.start()
        except ElectionError as e:
            services.election = None
            services.stop()
            raise ServiceError(str(e)) from None
        services.membership.start()
    app.services = services
    return services


def advertised_url(host: str, port: int) -> str:
    """The API URL other controllers redirect changes to."""
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def stop_services(app: SteeringApp) -> None:
    services, app.services = app.services, None
    if services is not None:
        services.stop()
