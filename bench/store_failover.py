"""Primary kills on the replicated store: how long until NFs and the controller write again,
and whether any acknowledged write is lost.

A store from ``nfsteer store up`` (1 primary, 2 replicas, 3 Sentinels, AOF everysec,
min-replicas-to-write 1, down-after-milliseconds 1000) runs on free loopback ports in a
temporary run directory. Three clients write all the time, through the Sentinel URL:

* two NF state clients with output commit (``store_sync: {replicas: N, timeout_ms: 100}``,
  N = 1 and N = 2, i.e. every replica): batches of 8 new firewall entries; a batch counts
  as acknowledged when the store confirmed it (WAIT reached N replicas) — that is when its
  packets would leave;
* the same NF client without output commit: a batch counts as acknowledged when the
  script's reply arrived (what an NF without store_sync releases packets on);
* the controller's store client: ``save_pool`` (its Lua script) every 20 ms.

Per kill: wait until the store is whole (primary, two replicas in sync, three Sentinels),
then 1-2 s more (a random moment), ``kill -9`` the primary, time from the kill to the first
NF batch that completes after the first one that failed (with and without output commit)
and to the controller's first save after a failed one; then ``nfsteer store up`` starts the
old primary again (it comes back as a replica). At the end every acknowledged entry is
looked up on the final primary.

    .venv/bin/python bench/store_failover.py [--kills 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from contract.nf_settings import FirewallSettings  # noqa: E402
from controller.core.state import InstanceInfo, InstanceState  # noqa: E402
from controller.ops.storenodes import (  # noqa: E402
    SENTINEL_INFO_PERIOD_MS,
    StoreLayout,
    current_primary,
    down,
    healthy,
    node_pid,
    up,
)
from controller.store.pools import PoolSnapshot, Store, StoreUnavailable  # noqa: E402
from nf.firewall import Firewall  # noqa: E402
from nf.state import NFStateUnavailable, NotReplicated, redis_client, redis_store  # noqa: E402

FW = Firewall("bench", FirewallSettings(tcp_syn_timeout=3600))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client(threading.Thread):
    """Writes all the time; records when writes succeed and fail."""

    def __init__(self, name: str):
        super().__init__(daemon=True, name=name)
        self.ok_at: list[float] = []
        self.failed_at: list[float] = []
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def write(self) -> bool:
        raise NotImplementedError

    def run(self) -> None:
        while not self.halt.is_set():
            ok = self.write()
            with self.lock:
                (self.ok_at if ok else self.failed_at).append(time.monotonic())
            time.sleep(0.005)

    def resumed(self, t0: float) -> float | None:
        """Seconds from t0 to the first success after the first failure after t0."""
        with self.lock:
            failed = next((t for t in self.failed_at if t > t0), None)
            if failed is None:
                return None
            return next((t - t0 for t in self.ok_at if t > failed), None)


class NFWriter(Client):
    def __init__(self, url: str, sync: tuple[int, int] | None, tag: str):
        super().__init__(f"nf-{tag}")
        self.store = redis_store(redis_client(url), [FW.script], sync)
        self.tag = tag
        self.acked: list[str] = []
        self.n = 0
        self.not_replicated = 0

    def write(self) -> bool:
        keys = [f"nfsteer:fw:bench:{{{self.tag}{self.n + j}}}" for j in range(8)]
        self.n += 8
        try:
            res = self.store.run(FW.script, FW.cfg(), [((k,), "c001") for k in keys])
        except NFStateUnavailable:
            return False
        except NotReplicated:
            self.not_replicated += 1
            return False
        if res == ["1"] * 8:
            self.acked += keys
            return True
        return False


class ControllerWriter(Client):
    def __init__(self, url: str):
        super().__init__("controller")
        self.store = Store.from_url(url)
        self.epoch = 0
        inst = InstanceInfo(
            name="fw1", pool="bench", mac="02:00:00:00:01:01", ip="10.0.0.201",
            switch="s1", port=11, capacity=1.0, state=InstanceState.ACTIVE,
        )  # fmt: skip
        self.inst = {"fw1": inst}
        self.errors: dict[str, int] = {}

    def write(self) -> bool:
        self.epoch += 1
        snap = PoolSnapshot("bench", "firewall", 64, 0, self.epoch, ["fw1"] * 64, self.inst)
        try:
            return self.store.save_pool(snap) is None
        except (StoreUnavailable, redis.RedisError) as e:
            self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
            return False

    def run(self) -> None:
        while not self.halt.is_set():
            ok = self.write()
            with self.lock:
                (self.ok_at if ok else self.failed_at).append(time.monotonic())
            time.sleep(0.02)


def wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def is_primary(layout: StoreLayout, i: int) -> bool:
    """Node i says it is a primary with its two replicas connected."""
    r = redis.Redis(
        host=layout.announce_ip, port=layout.ports[i], password=layout.password, socket_timeout=1
    )
    try:
        info = r.info("replication")
    except redis.RedisError:
        return False
    finally:
        r.close()
    return info.get("role") == "master" and info.get("connected_slaves") == 2


def lost(layout: StoreLayout, keys: list[str]) -> int:
    primary = current_primary(layout)
    assert primary is not None
    r = redis.Redis(host=primary[0], port=primary[1], password=layout.password, socket_timeout=5)
    missing = 0
    for i in range(0, len(keys), 1000):
        p = r.pipeline(transaction=False)
        for k in keys[i : i + 1000]:
            p.exists(k)
        missing += sum(1 for e in p.execute() if not e)
    return missing


def summary(values: list[float | None]) -> dict:
    v = sorted(x for x in values if x is not None)
    if not v:
        return {"n": 0}
    return {
        "n": len(v),
        "median_s": round(statistics.median(v), 3),
        "p90_s": round(v[min(len(v) - 1, int(0.9 * len(v)))], 3),
        "min_s": round(v[0], 3),
        "max_s": round(v[-1], 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--down-after-ms", type=int, default=1000)
    ap.add_argument(
        "--sentinel-info-period-ms",
        type=int,
        default=SENTINEL_INFO_PERIOD_MS,
        help="how often the Sentinels read the replicas' INFO (Redis' default: 10000)",
    )
    ap.add_argument("--seed", type=int, default=1, help="for the random wait before each kill")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    if args.kills < 1:
        print("bench/store_failover.py: --kills must be at least 1", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("bench/store_failover.py: redis-server is not installed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="nfstore"))
    layout = StoreLayout(
        run_dir=str(tmp / "store"),
        ports=[free_port() for _ in range(3)],
        sentinel_ports=[free_port() for _ in range(3)],
        down_after_ms=args.down_after_ms,
        info_period_ms=args.sentinel_info_period_ms,
    )
    up(layout)
    url = layout.url()
    synced, synced_all = NFWriter(url, (1, 100), "s"), NFWriter(url, (2, 100), "a")
    unsynced = NFWriter(url, None, "u")
    controller = ControllerWriter(url)
    clients = [synced, synced_all, unsynced, controller]
    kills: list[dict] = []
    started = time.monotonic()
    try:
        for c in clients:
            c.start()
        for k in range(args.kills):
            if not wait(lambda: healthy(layout), 60):
                print(f"kill {k + 1}: the store did not become whole again", file=sys.stderr)
                break
            # The replicas acknowledge every second: let every lag settle. Then a random
            # wait, so that the kill falls anywhere in the Sentinels' once-a-second rhythm
            # (a failure does not wait for it; "whole again" is seen on that rhythm).
            time.sleep(1.0 + rng.uniform(0.0, 1.0))
            primary = current_primary(layout)
            i = layout.ports.index(primary[1])
            if not is_primary(layout, i):  # the Sentinels' view lags: ask again
                wait(lambda: is_primary(layout, layout.ports.index(current_primary(layout)[1])), 10)
                primary = current_primary(layout)
                i = layout.ports.index(primary[1])
            t0 = time.monotonic()
            os.kill(node_pid(layout, i), signal.SIGKILL)
            # (output commit to both replicas waits for the killed node to rejoin)
            quick = [c for c in clients if c is not synced_all]
            wait(lambda t0=t0, q=quick: all(c.resumed(t0) is not None for c in q), 30)
            new = current_primary(layout)
            up(layout)  # the killed node returns as a replica
            wait(lambda t0=t0: synced_all.resumed(t0) is not None, 30)
            one = {
                "kill": k + 1,
                "nf_sync_s": synced.resumed(t0),
                "nf_sync_all_s": synced_all.resumed(t0),
                "nf_s": unsynced.resumed(t0),
                "controller_s": controller.resumed(t0),
            }
            one["promoted"] = f"{new[0]}:{new[1]}" if new else None
            kills.append(one)
            print(
                f"kill {k + 1:2}: NF (output commit 1 / 2) {one['nf_sync_s']} / "
                f"{one['nf_sync_all_s']} s, NF {one['nf_s']} s, controller {one['controller_s']} s",
                flush=True,
            )
        time.sleep(1.5)
    finally:
        for c in clients:
            c.halt.set()
        for c in clients:
            c.join(5)
    result = {
        "kills": len(kills),
        "down_after_ms": args.down_after_ms,
        "sentinel_info_period_ms": args.sentinel_info_period_ms,
        "nf_output_commit": summary([k["nf_sync_s"] for k in kills]),
        "nf_output_commit_all": summary([k["nf_sync_all_s"] for k in kills]),
        "nf_without": summary([k["nf_s"] for k in kills]),
        "controller": summary([k["controller_s"] for k in kills]),
        "acked_with_output_commit": len(synced.acked),
        "lost_with_output_commit": lost(layout, synced.acked),
        "acked_with_output_commit_all": len(synced_all.acked),
        "lost_with_output_commit_all": lost(layout, synced_all.acked),
        "acked_without": len(unsynced.acked),
        "lost_without": lost(layout, unsynced.acked),
        "controller_errors": controller.errors,
        "runtime_s": round(time.monotonic() - started, 1),
        "per_kill": kills,
    }
    down(layout)
    shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(
        f"{result['kills']} primary kills (down-after-milliseconds {args.down_after_ms}, "
        f"Sentinels read replicas every {args.sentinel_info_period_ms} ms):"
    )
    for name, key in (
        ("NF batches resume (output commit, 1 replica)", "nf_output_commit"),
        ("NF batches resume (output commit, 2 replicas)", "nf_output_commit_all"),
        ("NF batches resume (no output commit)", "nf_without"),
        ("controller saves resume", "controller"),
    ):
        s = result[key]
        if s["n"]:
            print(
                f"  {name}: median {s['median_s']} s, p90 {s['p90_s']} s, "
                f"range {s['min_s']}-{s['max_s']} s"
            )
    print(
        f"  acknowledged writes lost: {result['lost_with_output_commit_all']} of "
        f"{result['acked_with_output_commit_all']} with output commit to both replicas, "
        f"{result['lost_with_output_commit']} of {result['acked_with_output_commit']} with "
        f"output commit to one, {result['lost_without']} of {result['acked_without']} without"
    )
    print(f"runtime: {result['runtime_s']} s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
