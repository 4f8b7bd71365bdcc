"""`nfsteer lookup`, offline from a topology file and online against an HTTP API."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import REPO, free_port

from cli.main import main

SINGLE = str(REPO / "topologies" / "single.yaml")
TUPLE = ["10.0.0.1", "10.0.0.129", "tcp", "40000", "80"]

TOPOLOGY = """
name: t
switches: {s1: {dpid: 1}}
pools:
  fw:
    kind: firewall
    basis: 7
    instances:
      a: {switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, capacity: 1}
      b: {switch: s1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, capacity: 3}
"""


def lookup(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["lookup", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def lookup_json(capsys, *argv: str) -> dict:
    code, out, err = lookup(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_offline_answer_is_the_switch_slot_and_its_owner(capsys, tmp_path):
    topo = tmp_path / "t.yaml"
    topo.write_text(TOPOLOGY)
    # The switch writes slot 0x536 for this 5-tuple with basis 7 and 4096 slots (see
    # tests/test_hashing.py); with capacities 1:3, slots 0-1023 are a's and the rest b's.
    answer = lookup_json(
        capsys, "--topology", str(topo), "--pool", "fw", "10.1.2.3", "10.9.8.7", "tcp", "1234", "80"
    )
    assert answer["slot"] == 0x536 and answer["n_slots"] == 4096 and answer["basis"] == 7
    assert answer["hash"] % 4096 == 0x536
    assert answer["instance"] == "b"
    back = lookup_json(
        capsys, "--topology", str(topo), "--pool", "fw", "10.9.8.7", "10.1.2.3", "6", "80", "1234"
    )
    assert back["instance"] == "b" and back["slot"] == answer["slot"]


def test_offline_spreads_by_capacity(capsys):
    # single.yaml: fw1..fw3 capacity 1, fw4 capacity 2 -> fw4 serves about 2/5 of flows.
    seen = Counter()
    for sport in range(20000, 20200):
        a = lookup_json(capsys, "--topology", SINGLE, "--pool", "fw", *TUPLE[:3], str(sport), "80")
        seen[a["instance"]] += 1
    assert set(seen) == {"fw1", "fw2", "fw3", "fw4"}
    assert 0.3 < seen["fw4"] / 200 < 0.5


def test_text_output_and_icmp_without_ports(capsys):
    code, out, err = lookup(capsys, "--topology", SINGLE, "--pool", "fw", *TUPLE)
    assert code == 0 and not err
    name = out.split()[0]
    assert name in {"fw1", "fw2", "fw3", "fw4"}
    assert "slot " in out and "of 4096" in out and "hash 0x" in out
    code, out, _ = lookup(
        capsys, "--topology", SINGLE, "--pool", "fw", "10.0.0.1", "10.0.0.2", "icmp"
    )
    assert code == 0 and out.split()[0] in {"fw1", "fw2", "fw3", "fw4"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pool", "nope", *TUPLE], "pool 'nope' is not in"),
        (["--pool", "fw", "10.0.0.999", *TUPLE[1:]], "source address '10.0.0.999'"),
        (["--pool", "fw", *TUPLE[:3], "99999", "80"], "source port '99999'"),
        (["--pool", "fw", *TUPLE[:3], "1", "x"], "destination port 'x'"),
        (["--pool", "fw", *TUPLE[:2], "gre?", "1", "2"], "protocol 'gre?'"),
        (["--pool", "fw", "--api-token", "t", *TUPLE], "--api-token needs --api"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = lookup(capsys, "--topology", SINGLE, *argv)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("nfsteer lookup: ") and message in err


def test_unreadable_or_invalid_file_is_exit_2(capsys, tmp_path):
    code, _, err = lookup(
        capsys, "--topology", str(tmp_path / "missing.yaml"), "--pool", "fw", *TUPLE
    )
    assert code == 2 and "missing.yaml" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nswitches: {s1: {dpid: 0}}\n")
    code, _, err = lookup(capsys, "--topology", str(bad), "--pool", "fw", *TUPLE)
    assert code == 2 and "dpid" in err


class Controller(BaseHTTPRequestHandler):
    """Answers lookups the way the controller's REST API does, and records requests."""

    requests: list = []

    def do_GET(self):
        url = urlsplit(self.path)
        Controller.requests.append((url.path, parse_qs(url.query), dict(self.headers)))
        if self.headers.get("Authorization") != "Bearer s3cret":
            return self._send(401, {"detail": "missing or wrong bearer token"})
        if url.path != "/api/v1/pools/fw/lookup":
            return self._send(404, {"detail": "unknown pool 'nope'"})
        return self._send(200, {"pool": "fw", "instance": "fw3", "slot": 17, "epoch": 5})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Controller)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Controller.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_api_lookup_sends_the_tuple_and_token(capsys, api):
    code, out, err = lookup(
        capsys, "--api", api + "/", "--api-token", "s3cret", "--pool", "fw", *TUPLE
    )
    assert code == 0, err
    assert out.split()[0] == "fw3" and "epoch 5" in out and "slot 17" in out
    path, query, headers = Controller.requests[-1]
    assert path == "/api/v1/pools/fw/lookup"
    assert query == {"src": ["10.0.0.1"], "dst": ["10.0.0.129"], "proto": ["6"]} | {
        "sport": ["40000"],
        "dport": ["80"],
    }
    assert headers["Authorization"] == "Bearer s3cret"
    answer = lookup_json(capsys, "--api", api, "--api-token", "s3cret", "--pool", "fw", *TUPLE)
    assert answer == {"pool": "fw", "instance": "fw3", "slot": 17, "epoch": 5}


def test_api_errors_are_clear(capsys, api):
    code, _, err = lookup(capsys, "--api", api, "--pool", "fw", *TUPLE)
    assert code == 2 and "401" in err and "--api-token" in err and err.count("\n") == 1
    code, _, err = lookup(capsys, "--api", api, "--api-token", "s3cret", "--pool", "nope", *TUPLE)
    assert code == 2 and "unknown pool 'nope'" in err
    closed = f"http://127.0.0.1:{free_port()}"
    code, _, err = lookup(capsys, "--api", closed, "--pool", "fw", *TUPLE)
    assert code == 1 and f"cannot reach the controller at {closed}" in err
    assert err.count("\n") == 1
    code, _, err = lookup(capsys, "--api", "127.0.0.1:8080", "--pool", "fw", *TUPLE)
    assert code == 2 and "http://" in err


def test_installed_command(tmp_path: Path):
    exe = REPO / ".venv" / "bin" / "nfsteer"
    r = subprocess.run(
        [str(exe), "lookup", "--topology", SINGLE, "--pool", "fw", *TUPLE, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["instance"] in {"fw1", "fw2", "fw3", "fw4"}
    r = subprocess.run(
        [str(exe), "lookup", "--topology", SINGLE, "--pool", "fw", "1.2.3", *TUPLE[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "1.2.3" in r.stderr


@pytest.mark.redis
def test_api_lookup_against_the_real_controller(capsys, tmp_path, redis_server):
    """The controller's REST API and the offline computation give the same answer."""
    from controller.ofp.launcher import start_in_thread
    from controller.ofp.options import Options
    from controller.ofp.service import services_of

    topo = tmp_path / "t.yaml"
    topo.write_text(TOPOLOGY)
    options = Options(
        topology=topo, redis_url=redis_server.url, listen=("127.0.0.1", 0), api=("127.0.0.1", 0)
    )
    app, stop = start_in_thread(options)
    try:
        services = services_of(app)
        assert services is not None and services.api_server is not None
        url = f"http://127.0.0.1:{services.api_server.port}"
        for sport in range(40000, 40020):
            ft = ["10.1.2.3", "10.9.8.7", "udp", str(sport), "53"]
            online = lookup_json(capsys, "--api", url, "--pool", "fw", *ft)
            offline = lookup_json(capsys, "--topology", str(topo), "--pool", "fw", *ft)
            assert online["instance"] == offline["instance"]
            assert online["slot"] == offline["slot"] and online["epoch"] >= 1
        code, _, err = lookup(capsys, "--api", url, "--pool", "nope", *TUPLE)
        assert code == 2 and "nope" in err and err.count("\n") == 1
    finally:
        stop()


CHAIN = REPO / "topologies" / "chain.yaml"


def test_offline_service_lookup_answers_per_hop(capsys):
    fwd = ["10.0.0.1", "10.0.0.129", "tcp", "40000", "5001"]
    chain = lookup_json(capsys, "--topology", str(CHAIN), "--service", "web", *fwd)
    assert chain["direction"] == "forward"
    assert [h["pool"] for h in chain["hops"]] == ["fw", "nat"]
    for hop in chain["hops"]:  # each hop: the pool's own answer for the same 5-tuple
        alone = lookup_json(capsys, "--topology", str(CHAIN), "--pool", hop["pool"], *fwd)
        assert (hop["instance"], hop["slot"]) == (alone["instance"], alone["slot"])
    # A reply to the NAT's public address meets the NAT first; the firewall after it sees
    # the translated 5-tuple, which only the NAT knows.
    back = ["10.0.0.129", "10.0.0.240", "tcp", "5001", "20000"]
    rev = lookup_json(capsys, "--topology", str(CHAIN), "--service", "web", *back)
    assert rev["direction"] == "reverse"
    assert [h["pool"] for h in rev["hops"]] == ["nat", "fw"]
    nat = lookup_json(capsys, "--topology", str(CHAIN), "--pool", "nat", *back)
    assert rev["hops"][0]["instance"] == nat["instance"]
    assert rev["hops"][1]["instance"] is None and rev["hops"][1]["five_tuple"] is None
    code, out, _ = lookup(capsys, "--topology", str(CHAIN), "--service", "web", *back)
    assert code == 0 and "1. nat: nat" in out and "2. fw: after the NAT" in out
    code, _, err = lookup(capsys, "--topology", str(CHAIN), "--service", "nope", *fwd)
    assert code == 2 and "service 'nope' is not in" in err and err.count("\n") == 1


@pytest.mark.redis
def test_api_service_lookup_against_the_real_controller(capsys, tmp_path, redis_server):
    """The REST API shows a service's chain and answers per hop as the offline lookup does."""
    import httpx

    from controller.ofp.launcher import start_in_thread
    from controller.ofp.options import Options
    from controller.ofp.service import services_of

    topo = tmp_path / "chain.yaml"
    topo.write_text(CHAIN.read_text().replace("membership: registered", "membership: static"))
    options = Options(
        topology=topo, redis_url=redis_server.url, listen=("127.0.0.1", 0), api=("127.0.0.1", 0)
    )
    app, stop = start_in_thread(options)
    try:
        services = services_of(app)
        assert services is not None and services.api_server is not None
        url = f"http://127.0.0.1:{services.api_server.port}"
        shown = httpx.get(f"{url}/api/v1/services/web").json()
        assert shown["chain"] == ["fw", "nat"] and shown["bidirectional"] is True
        assert [s["name"] for s in httpx.get(f"{url}/api/v1/services").json()] == ["web"]
        assert httpx.get(f"{url}/api/v1/services/nope").status_code == 404
        for sport in range(40000, 40010):
            for ft in (
                ["10.0.0.1", "10.0.0.129", "tcp", str(sport), "5001"],
                ["10.0.0.129", "10.0.0.240", "tcp", "5001", str(sport)],
            ):
                online = lookup_json(capsys, "--api", url, "--service", "web", *ft)
                offline = lookup_json(capsys, "--topology", str(topo), "--service", "web", *ft)
                assert online["direction"] == offline["direction"]
                assert [(h["pool"], h["instance"], h["slot"]) for h in online["hops"]] == [
                    (h["pool"], h["instance"], h["slot"]) for h in offline["hops"]
                ]
        code, out, _ = lookup(capsys, "--api", url, "--service", "web", *TUPLE)
        assert code == 0 and "1. fw: fw" in out and "epoch" in out
    finally:
        stop()
