"""Topology files (contract/topology.py), `nfsteer check`, and controller options."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.main import main
from contract.topology import ConfigError, load_topology, parse_topology
from controller.ofp.options import Options, OptionsError, parse_hostport

REPO = Path(__file__).resolve().parents[2]
SINGLE = REPO / "topologies" / "single.yaml"
TRIANGLE = REPO / "tests" / "data" / "triangle.yaml"
NFSTEER = Path(sys.executable).parent / "nfsteer"


def base() -> dict:
    return yaml.safe_load(SINGLE.read_text())


def errors_of(data) -> str:
    with pytest.raises(ConfigError) as e:
        parse_topology(data, "t.yaml")
    return str(e.value)


def test_shipped_topologies_load():
    for path in [*sorted((REPO / "topologies").glob("*.yaml")), TRIANGLE]:
        topo = load_topology(path)
        assert topo.switches
    topo = load_topology(SINGLE)
    assert topo.pools["fw"].slots == 4096
    assert topo.instance("fw", "fw4").capacity == 2
    assert topo.switch_by_dpid(1) == "s1" and topo.switch_by_dpid(2) is None
    assert set(topo.attachments()) == {
        "c1",
        "c2",
        "sv1",
        "sv2",
        "store",
        "fw1",
        "fw2",
        "fw3",
        "fw4",
    }
    web = topo.services["web"]
    assert web.match[0].reversed().src == "10.0.0.128/25"


def _set(data: dict, path: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        # unknown keys
        ("colour", "blue", "colour: unknown key"),
        ("switches.s1.vendor", "x", "switches.s1.vendor: unknown key"),
        ("pools.fw.instances.fw1.weight", 3, "pools.fw.instances.fw1.weight: unknown key"),
        ("services.web.match.0.dport", 80, "dport: unknown key"),
        ("pools.fw.nf.colour", "x", "colour"),
        # wrong types
        ("switches.s1.dpid", "1", "switches.s1.dpid"),
        ("pools.fw.slots", "4096", "pools.fw.slots"),
        ("pools.fw.instances.fw1.capacity", True, "capacity: must be a number"),
        ("hosts.c1.port", 1.5, "hosts.c1.port"),
        ("services.web.bidirectional", "yes", "services.web.bidirectional"),
        ("hosts", ["c1"], "hosts"),
        # impossible values
        ("pools.fw.slots", 1000, "power of two"),
        ("pools.fw.slots", 131072, "power of two"),
        ("pools.fw.instances.fw1.capacity", 0, "capacity"),
        ("pools.fw.instances.fw1.capacity", -2, "capacity"),
        ("hosts.c1.port", 0, "hosts.c1.port"),
        ("hosts.c1.port", 0xFFFFFF01, "hosts.c1.port"),
        ("hosts.c1.mac", "02:00:00:00:00", "not a MAC address"),
        ("hosts.c1.mac", "01:00:5e:00:00:01", "multicast"),
        ("hosts.c1.ip", "10.0.0.1", "prefix length"),
        ("hosts.c1.ip", "10.0.0.300/24", "not an IPv4 address"),
        ("switches.s1.steering", "ecmp", "switches.s1.steering"),
        ("switches.s1.dpid", 0, "switches.s1.dpid"),
        ("pools.fw.kind", "router", "pools.fw.kind"),
        ("pools.fw.membership", "dynamic", "pools.fw.membership"),
        ("services.web.match", [], "services.web.match"),
        ("services.web.match.0.src", "10.0.0.1/24", "not an IPv4 prefix"),
        (
            "services.web.match.0",
            {"proto": "icmp", "dst_ports": [80]},
            "need proto tcp or udp",
        ),
        ("services.web.match.0", {"proto": "tcp", "dst_ports": [80, 80]}, "without repeats"),
        ("services.web.match.0", {"proto": "tcp", "dst_ports": [70000]}, "dst_ports"),
        ("services.web.priority", 5000, "services.web.priority"),
        ("name", "a name with spaces", "name"),
        ("pools.fw.basis", 70000, "pools.fw.basis"),
        # undefined references
        ("services.web.pool", "nat", "pool 'nat' is not defined"),
        ("hosts.c1.switch", "s9", "switch 's9' is not defined"),
        ("pools.fw.instances.fw1.switch", "s9", "switch 's9' is not defined"),
        ("services.web.match.0.ingress", ["c9"], "host 'c9' is not defined"),
        ("services.web.match.0.ingress", ["fw1"], "host 'fw1' is not defined"),
        # duplicates
        ("hosts.c2.port", 1, "port s1:1 is already used by hosts.c1"),
        ("pools.fw.instances.fw1.port", 1, "already used"),
        ("hosts.c2.mac", "02:00:00:00:00:01", "is also the MAC of hosts.c1"),
        ("hosts.c2.ip", "10.0.0.1/24", "is also the address of hosts.c1"),
        ("pools.fw.instances.fw1.ip", "10.0.0.1/24", "is also the address of hosts.c1"),
    ],
)
def test_invalid_topologies_are_rejected_with_a_clear_reason(path, value, message):
    text = errors_of(_set(base(), path, value))
    assert text.startswith("t.yaml: ")
    assert message in text


def test_duplicate_names_and_dpids():
    data = base()
    data["hosts"]["fw1"] = dict(
        data["hosts"]["c1"], port=40, mac="02:00:00:00:00:44", ip="10.0.0.44/24"
    )
    assert "name 'fw1' is used by a host and a instance" in errors_of(data)
    data = base()
    data["switches"]["s2"] = {"dpid": 1}
    assert "switches.s2.dpid: 1 is also the dpid of s1" in errors_of(data)
    data = base()
    data["hosts"]["s1"] = dict(
        data["hosts"]["c1"], port=40, mac="02:00:00:00:00:44", ip="10.0.0.44/24"
    )
    assert "name 's1' is used by a switch and a host" in errors_of(data)


def test_link_errors():
    data = base()
    data["switches"]["s2"] = {"dpid": 2}
    data["links"] = [{"a": "s1", "a_port": 1, "b": "s2", "b_port": 1}]
    assert "port s1:1 is already used by links[0].a" in errors_of(data)
    data["links"] = [{"a": "s1", "a_port": 30, "b": "s1", "b_port": 31}]
    assert "links[0]: a link must join two different switches" in errors_of(data)
    data["links"] = [{"a": "s1", "a_port": 30, "b": "s3", "b_port": 31}]
    assert "links[0].b: switch 's3' is not defined" in errors_of(data)


def test_several_problems_are_all_reported():
    data = _set(base(), "hosts.c1.port", 0)
    data = _set(data, "pools.fw.slots", 3)
    text = errors_of(data)
    assert "hosts.c1.port" in text and "pools.fw.slots" in text


def test_not_a_mapping_and_missing_required_keys():
    assert "must hold a mapping" in errors_of(["a", "b"])
    assert "switches: Field required" in errors_of({"name": "x"})
    assert "switches" in errors_of({"name": "x", "switches": {}})


def test_files_duplicate_yaml_keys_and_syntax(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\nswitches:\n  s1: {dpid: 1}\n  s1: {dpid: 2}\n")
    with pytest.raises(ConfigError, match="duplicate key 's1'"):
        load_topology(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\nswitches: [\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: invalid YAML"):
        load_topology(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")


def test_nfsteer_check_in_process(tmp_path, capsys):
    assert main(["check", str(SINGLE), str(TRIANGLE)]) == 0
    out = capsys.readouterr().out
    assert "single.yaml: ok (1 switches, 5 hosts, 1 pools, 4 instances, 1 services)" in out
    assert "triangle.yaml: ok (3 switches" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(_set(base(), "services.web.pool", "nat")))
    assert main(["check", str(SINGLE), str(broken)]) == 2
    captured = capsys.readouterr()
    assert "single.yaml: ok" in captured.out
    assert captured.err.strip() == (
        f"{broken}: services.web.pool: pool 'nat' is not defined in pools"
    )


def test_nfsteer_check_process(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nswitches: {s1: {dpid: 1, colour: red}}\n")
    r = subprocess.run(
        [str(NFSTEER), "check", str(broken)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"{broken}: switches.s1.colour: unknown key"
    assert "Traceback" not in r.stderr


# -- controller options ------------------------------------------------------------------


def test_options_from_environment():
    opts = Options.from_env(
        {
            "NFSTEER_TOPOLOGY": str(SINGLE),
            "NFSTEER_REDIS": "redis://:pw@127.0.0.1:7000/0",
            "NFSTEER_API": "127.0.0.1:9000",
            "NFSTEER_API_TOKEN": "secret",
            "NFSTEER_HEARTBEAT_TTL_MS": "300",
            "NFSTEER_LOG_LEVEL": "debug",
        }
    )
    assert opts.topology == SINGLE
    assert opts.redis_url == "redis://:pw@127.0.0.1:7000/0"
    assert opts.api == ("127.0.0.1", 9000)
    assert opts.listen == ("127.0.0.1", 6653)
    assert (opts.api_token, opts.heartbeat_ttl_ms, opts.log_level) == ("secret", 300, "DEBUG")
    defaults = Options.from_env({"NFSTEER_TOPOLOGY": str(SINGLE)})
    assert (defaults.redis_url, defaults.api, defaults.heartbeat_ttl_ms) == (
        None,
        ("127.0.0.1", 8080),
        500,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "NFSTEER_TOPOLOGY"),
        ({"NFSTEER_TOPOLOGY": "x", "NFSTEER_HEARTBEAT_TTL_MS": "soon"}, "not a number"),
        ({"NFSTEER_TOPOLOGY": "x", "NFSTEER_HEARTBEAT_TTL_MS": "1"}, "heartbeat TTL"),
        ({"NFSTEER_TOPOLOGY": "x", "NFSTEER_LOG_LEVEL": "LOUD"}, "log level"),
        ({"NFSTEER_TOPOLOGY": "x", "NFSTEER_API": "host:80"}, "not an IP address"),
        ({"NFSTEER_TOPOLOGY": "x", "NFSTEER_LISTEN": "127.0.0.1:70000"}, "port"),
        ({"NFSTEER_TOPOLOGY": "x", "NFSTEER_REDIS": "localhost:6379"}, "redis://"),
    ],
)
def test_bad_options_are_rejected(env, message):
    with pytest.raises(OptionsError, match=message):
        Options.from_env(env)


def test_parse_hostport():
    d = ("127.0.0.1", 6653)
    assert parse_hostport("", d) == d
    assert parse_hostport(":7000", d) == ("127.0.0.1", 7000)
    assert parse_hostport("0.0.0.0", d) == ("0.0.0.0", 6653)
    assert parse_hostport("localhost:1", d) == ("127.0.0.1", 1)
    assert parse_hostport("[::1]:6653", d) == ("::1", 6653)


def test_app_reads_options_from_environment(monkeypatch):
    """Under someone else's AppManager the app has only the environment to go by."""
    from controller.ofp.app import SteeringApp

    monkeypatch.setenv("NFSTEER_TOPOLOGY", str(TRIANGLE))
    monkeypatch.setenv("NFSTEER_LOG_LEVEL", "WARNING")
    app = SteeringApp()
    assert app.options.topology == TRIANGLE
    assert set(app.steering.pools["fw"].instances) == {"fw1", "fw2", "fw3"}
    # no switch connected: a change is applied to the state and confirmed at once
    result = app.apply(lambda s: s.set_capacity("fw", "fw1", 2, 0.0), "test")
    assert result.wait(0) and result.changes[0].moved


# Gaps in contract/topology.py, recorded so that they flip to passing when it is fixed.
def test_empty_prefix_is_rejected():
    errors_of(_set(base(), "services.web.match.0.src", ""))


@pytest.mark.parametrize("ip", ["10.0.0.0/24", "10.0.0.255/24"])
def test_host_address_must_not_be_network_or_broadcast(ip):
    errors_of(_set(base(), "hosts.c1.ip", ip))


def test_empty_ingress_is_rejected():
    errors_of(_set(base(), "services.web.match.0.ingress", []))


def test_reserved_virtual_mac_range_is_rejected():
    msg = errors_of(_set(base(), "hosts.c1.mac", "0e:00:0a:00:00:64"))
    assert "hosts.c1.mac" in msg and "reserved" in msg


def test_virtual_address_owned_by_a_host_is_rejected():
    data = base()
    data["pools"]["lb"] = {
        "kind": "lb",
        "nf": {
            "vips": [
                {"vip": "10.0.0.129", "port": 80, "backends": [{"ip": "10.0.0.130", "port": 80}]}
            ]
        },
    }
    msg = errors_of(data)
    assert "pools.lb.nf" in msg and "10.0.0.129" in msg and "hosts.sv1" in msg
