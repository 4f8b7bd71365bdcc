"""The topology loader's limits: UTF-8 only, regular files of at most 4 MiB, bounded
nesting and size, no unhashable or duplicate keys, and YAML numbers read as numbers. Every
failure is a ConfigError of one line naming the file, and `nfsteer check` exits with 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli.main import main
from contract.topology import MAX_FILE_BYTES, ConfigError, load_topology

REPO = Path(__file__).resolve().parents[2]
SINGLE = REPO / "topologies" / "single.yaml"
NFSTEER = Path(sys.executable).parent / "nfsteer"


def one_line_error(path: Path) -> str:
    started = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_topology(path)
    assert time.monotonic() - started < 5
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    assert len(text) < 400
    return text


def write(tmp_path: Path, content: bytes | str, name: str = "t.yaml") -> Path:
    p = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    p.write_bytes(content)
    return p


def test_not_utf8(tmp_path):
    assert "UTF-8" in one_line_error(write(tmp_path, b"name: \xff\xfe\n"))
    utf16 = SINGLE.read_text().encode("utf-16")
    assert "UTF-8" in one_line_error(write(tmp_path, utf16))


def test_only_regular_files_of_bounded_size(tmp_path):
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    assert "not a regular file" in one_line_error(zero)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in one_line_error(fifo)  # no hang waiting for a writer
    big = write(tmp_path, "# " + "x" * MAX_FILE_BYTES + "\n")
    assert "larger than 4 MiB" in one_line_error(big)
    assert "not a regular file" in one_line_error(tmp_path)  # a directory


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper"),
        ("a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n", "nested deeper"),
        ("name: x\nswitches: {s1: {dpid: " + "9" * 5000 + "}}\n", "integer too large"),
        ("? [a, b]\n: 1\n", "mapping key"),
        ("? {a: 1}\n: 1\n", "mapping key"),
        ("name: x\nname: y\n", "duplicate key"),
        ("a: [" + "1, " * 25_000 + "1]\n", "more than"),
        ("a: \x00\n", "NUL"),
    ],
    ids=["deep-list", "deep-map", "huge-int", "list-key", "map-key", "dup", "many", "nul"],
)
def test_yaml_limits(tmp_path, text, says):
    assert says in one_line_error(write(tmp_path, text))


def test_trailing_newline_in_mac_and_name_is_rejected(tmp_path):
    data = yaml.safe_load(SINGLE.read_text())
    data["hosts"]["c1"]["mac"] = data["hosts"]["c2"]["mac"] + "\n"
    msg = one_line_error(write(tmp_path, yaml.safe_dump(data)))
    assert "hosts.c1.mac" in msg
    data = yaml.safe_load(SINGLE.read_text())
    data["hosts"]["c1\n"] = data["hosts"].pop("c1")
    assert "hosts" in one_line_error(write(tmp_path, yaml.safe_dump(data)))


def test_exponent_floats_are_numbers(tmp_path):
    text = SINGLE.read_text().replace("capacity: 2", "capacity: 1e-7", 1)
    assert "capacity: 1e-7" in text
    topo = load_topology(write(tmp_path, text))
    assert topo.instance("fw", "fw4").capacity == 1e-7
    text = SINGLE.read_text().replace("capacity: 2", "capacity: 2E+1", 1)
    assert load_topology(write(tmp_path, text)).instance("fw", "fw4").capacity == 20
    # A string that looks like one stays a string where a string is asked for.
    text = SINGLE.read_text().replace("capacity: 2", "capacity: '1e-7'", 1)
    assert "capacity" in one_line_error(write(tmp_path, text))


@pytest.mark.parametrize(
    ("field", "value"),
    [("port", 4294967296), ("port", 0xFFFFFFFD), ("capacity", True), ("ip", "010.0.0.5/24"),
     ("ip", "\u0661\u0660.0.0.5/24"), ("mac", "0e:00:00:00:00:01")],
)  # fmt: skip
def test_instance_values_use_the_shared_types(tmp_path, field, value):
    data = yaml.safe_load(SINGLE.read_text())
    data["pools"]["fw"]["instances"]["fw1"][field] = value
    assert f"pools.fw.instances.fw1.{field}" in one_line_error(
        write(tmp_path, yaml.safe_dump(data))
    )


def test_check_and_controller_exit_2_without_traceback(tmp_path):
    bad = write(tmp_path, b"\xff\xfe")
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    assert main(["check", str(bad)]) == 2
    for argv in (["check", str(zero)], ["controller", "--topology", str(zero), "--api", "off"]):
        r = subprocess.run([str(NFSTEER), *argv], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (argv, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
