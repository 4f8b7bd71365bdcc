"""Store URLs and the redis-py clients they make, shared by the controller and the NFs.

Three kinds of store:

* ``redis://[:PASSWORD@]HOST:PORT[/DB]`` (also ``rediss://``, ``unix://``): one server.
* ``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE``: a replicated store
  whose primary is found through Sentinel (``nfsteer store up`` starts one). The password
  is used for the Sentinels and the data nodes alike. A connection re-asks the Sentinels
  for the primary whenever it is made again, so a client that drops a connection on an
  error follows a failover; a demoted primary's ``READONLY`` reply drops the connection
  (redis-py's ``SentinelManagedConnection``).
* ``redis+cluster://[:PASSWORD@]HOST:PORT``: any node of a Redis Cluster.

Every client gets explicit, short timeouts: redis-py's defaults wait for seconds, which on a
packet path is an outage of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # -> TLS
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
PLAIN_SCHEMES = ("redis", "rediss", "unix")


class StoreURLError(ValueError):
    """A store URL that cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    username: str | None
    password: str | None
    tls: bool


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StoreURLError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_sentinel_url(url: str) -> SentinelURL:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise StoreURLError(f"{url!r} is not a redis+sentinel:// URL")
    hosts, slash, service = rest.partition("/")
    if not slash or not service or "/" in service:
        raise StoreURLError("a redis+sentinel:// URL ends with /SERVICE (the monitored name)")
    username = password = None
    if "@" in hosts:
        auth, _, hosts = hosts.rpartition("@")
        user, colon, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    sentinels = tuple(_hostport(h) for h in hosts.split(",") if h)
    if not sentinels:
        raise StoreURLError("a redis+sentinel:// URL needs at least one HOST:PORT")
    return SentinelURL(sentinels, service, username, password, SENTINEL_SCHEMES[scheme])


def check_url(url: str) -> None:
    """Raise StoreURLError for a URL of no known kind (before anything is started)."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise StoreURLError(f"{url!r} is not a URL (redis://, redis+sentinel://, ...)")
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url)
    elif scheme not in CLUSTER_SCHEMES and scheme not in PLAIN_SCHEMES:
        known = ", ".join(f"{s}://" for s in (*PLAIN_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES))
        raise StoreURLError(f"unknown store URL scheme {scheme!r} (one of {known})")


def make_client(url: str, **kwargs: Any) -> Any:
    """A redis-py client for ``url``: ``redis.Redis`` (one server, or the Sentinel-managed
    primary) or ``RedisCluster``. ``kwargs`` are connection settings (timeouts, retry,
    decode_responses, client_name...)."""
    import redis

    check_url(url)
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        from redis.cluster import RedisCluster

        kwargs.pop("retry_on_error", None)
        kwargs.pop("health_check_interval", None)
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **kwargs)
    if scheme in SENTINEL_SCHEMES:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        from redis.sentinel import Sentinel

        s = parse_sentinel_url(url)
        auth = {"username": s.username, "password": s.password}
        if s.tls:
            auth["ssl"] = True
        # The Sentinel connections get the same timeouts and retry policy: redis-py's
        # default retries a dead Sentinel with sleeps of up to seconds.
        timeouts = {k: v for k, v in kwargs.items() if k.startswith("socket_") or k == "retry"}
        timeouts.setdefault("retry", Retry(NoBackoff(), 0))
        sentinel = Sentinel(
            list(s.sentinels), sentinel_kwargs={**timeouts, **auth}, **kwargs, **auth
        )
        client = sentinel.master_for(s.service)
        client.nfsteer_sentinel = sentinel  # kept for check_reachable() and closing
        return client
    return redis.Redis.from_url(url, **kwargs)


def check_reachable(client: Any, url: str) -> None:
    """One round trip to the store at start-up; a wrong address, service name or password
    becomes one StoreURLError line naming it (the caller exits with status 2)."""
    import redis

    sentinel = getattr(client, "nfsteer_sentinel", None)
    if sentinel is not None:
        s = parse_sentinel_url(url)
        reached, known = 0, set()
        for node in sentinel.sentinels:
            try:
                known |= set(node.sentinel_masters())
                reached += 1
            except redis.AuthenticationError:
                raise StoreURLError("wrong password for the Sentinels") from None
            except redis.ResponseError as e:
                if "NOAUTH" in str(e) or "AUTH" in str(e):
                    raise StoreURLError("wrong password for the Sentinels") from None
                raise StoreURLError(f"Sentinel error: {e}") from None
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                continue
        addrs = ",".join(f"{h}:{p}" for h, p in s.sentinels)
        if not reached:
            raise StoreURLError(f"no Sentinel answers at {addrs}")
        if s.service not in known:
            names = ", ".join(sorted(known)) or "none"
            raise StoreURLError(
                f"the Sentinels at {addrs} monitor no service {s.service!r} (they know: {names})"
            )
    try:
        client.ping()
    except redis.AuthenticationError:
        raise StoreURLError("wrong password for the store") from None
    except redis.ResponseError as e:
        raise StoreURLError(f"store refused: {e}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise StoreURLError(f"store unreachable at {redacted(url)}: {e}") from None


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        auth, _, tail = rest.partition("@")
        user = auth.partition(":")[0]
        return f"{scheme}://{user}:***@{tail}"
    return url


def close_client(client: Any) -> None:
    client.close()
    sentinel = getattr(client, "nfsteer_sentinel", None)
    if sentinel is not None:
        for node in sentinel.sentinels:
            node.close()
