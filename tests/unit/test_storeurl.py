"""Store URLs and the replicated store's configuration files (pure logic)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.storeurl import StoreURLError, check_url, parse_sentinel_url, redacted
from controller.ofp.options import Options, OptionsError
from controller.ops.storenodes import StoreLayout, node_conf, sentinel_conf


def test_sentinel_urls_name_every_sentinel_the_service_and_the_password():
    s = parse_sentinel_url("redis+sentinel://:pw%40x@10.0.0.1:26379,[::1]:26380/nfsteer")
    assert s.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (s.service, s.password, s.username, s.tls) == ("nfsteer", "pw@x", None, False)
    s = parse_sentinel_url("rediss+sentinel://user:pw@h:1/svc")
    assert (s.username, s.password, s.tls) == ("user", "pw", True)


@pytest.mark.parametrize(
    "url, message",
    [
        ("redis+sentinel://h:1", "ends with /SERVICE"),
        ("redis+sentinel://h:1/", "ends with /SERVICE"),
        ("redis+sentinel://h:1/a/b", "ends with /SERVICE"),
        ("redis+sentinel:///svc", "at least one HOST:PORT"),
        ("redis+sentinel://h/svc", "is not HOST:PORT"),
        ("redis+sentinel://h:99999/svc", "is not HOST:PORT"),
        ("redis+sentinel://h:x/svc", "is not HOST:PORT"),
        ("http://h:1/svc", "unknown store URL scheme"),
        ("localhost:6379", "is not a URL"),
    ],
)
def test_bad_urls_are_one_line(url, message):
    with pytest.raises(StoreURLError, match=message):
        check_url(url)


@given(st.text(max_size=60))
def test_any_text_is_a_url_or_one_clear_error(text):
    try:
        check_url("redis+sentinel://" + text)
    except StoreURLError as e:
        assert "\n" not in str(e)


def test_controller_options_take_every_kind_of_store_url(tmp_path):
    topo = tmp_path / "t.yaml"
    for url in ("redis://h:1/0", "redis+sentinel://:p@h:1,h:2/s", "redis+cluster://h:1"):
        assert Options(topology=topo, redis_url=url).redis_url == url
    with pytest.raises(OptionsError, match=r"Redis URL: .*is not HOST:PORT"):
        Options(topology=topo, redis_url="redis+sentinel://h/s")


def test_passwords_stay_out_of_logs():
    assert redacted("redis+sentinel://:secret@h:1,h:2/s") == "redis+sentinel://:***@h:1,h:2/s"
    assert redacted("redis://h:1/0") == "redis://h:1/0"


def test_every_node_persists_and_refuses_writes_without_a_replica(tmp_path):
    layout = StoreLayout(run_dir=str(tmp_path), password="pw", down_after_ms=1000)
    primary = node_conf(layout, 0, None).splitlines()
    replica = node_conf(layout, 1, layout.ports[0]).splitlines()
    for conf in (primary, replica):
        assert {"appendonly yes", "appendfsync everysec", "min-replicas-to-write 1"} <= set(conf)
        assert "requirepass pw" in conf and "masterauth pw" in conf
    assert not any(line.startswith("replicaof") for line in primary)
    assert f"replicaof 127.0.0.1 {layout.ports[0]}" in replica
    sentinel = sentinel_conf(layout, 0).splitlines()
    assert f"sentinel monitor nfsteer 127.0.0.1 {layout.ports[0]} 2" in sentinel
    assert "sentinel down-after-milliseconds nfsteer 1000" in sentinel
    # each Sentinel knows the two others and both replicas from the start
    assert sum(line.startswith("sentinel known-sentinel") for line in sentinel) == 2
    assert sum(line.startswith("sentinel known-replica") for line in sentinel) == 2
    assert layout.url() == (
        "redis+sentinel://:pw@127.0.0.1:26380,127.0.0.1:26381,127.0.0.1:26382/nfsteer"
    )
