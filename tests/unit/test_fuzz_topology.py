"""Fuzzing the topology loader: mutations of the shipped topology files and the test data
files, at the byte level and at the level of YAML values. Every outcome is a Topology or a
ConfigError of lines naming the file; never another exception. Bounded by max_examples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.topology import ConfigError, Topology, load_topology

REPO = Path(__file__).resolve().parents[2]
FILES = sorted([*(REPO / "topologies").glob("*.yaml"), *(REPO / "tests" / "data").glob("*.yaml")])
TEXTS = [p.read_bytes() for p in FILES]
DATA = [yaml.safe_load(t) for t in TEXTS]
CASES = int(os.environ.get("NFSTEER_FUZZ_CASES", "500"))
FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RAN = {"bytes": 0, "values": 0}

ODD_VALUES = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            0,
            -1,
            1e-7,
            2**32,
            2**40,
            2**64,
            10**400,
            float("inf"),
            float("nan"),
            "",
            "x\n",
            "s1\n",
            "010.0.0.5",
            "\u0661\u0660.0.0.5",
            "10.0.0.0/24",
            "0e:00:00:00:00:01",
            "01:00:5e:00:00:01",
            "02:00:00:00:00:01\n",
            [],
            {},
            [[]],
            {"a": {"b": {}}},
            "x" * 5000,
        ]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
)


def outcome(path: Path) -> None:
    try:
        topo = load_topology(path)
    except ConfigError as e:
        lines = str(e).split("\n")
        assert all(line.startswith(f"{path}: ") for line in lines), str(e)[:500]
        return
    assert isinstance(topo, Topology)


@FUZZ
@given(
    which=st.integers(0, len(TEXTS) - 1),
    edits=st.lists(
        st.tuples(
            st.floats(0, 1),
            st.sampled_from(["flip", "insert", "delete"]),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_byte_mutations(tmp_path_factory, which, edits):
    RAN["bytes"] += 1
    data = bytearray(TEXTS[which])
    for where, how, blob in edits:
        i = int(where * (len(data) - 1))
        if how == "flip":
            data[i] ^= blob[0] or 1
        elif how == "insert":
            data[i:i] = blob
        else:
            del data[i : i + len(blob)]
    path = tmp_path_factory.mktemp("fuzz") / "t.yaml"
    path.write_bytes(bytes(data))
    outcome(path)


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, (*prefix, i))
    return out


def replace(node: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {k: (replace(v, rest, value) if k == head else v) for k, v in node.items()}
    return [replace(v, rest, value) if i == head else v for i, v in enumerate(node)]


@FUZZ
@given(data=st.data(), which=st.integers(0, len(DATA) - 1))
def test_value_mutations(tmp_path_factory, data, which):
    RAN["values"] += 1
    doc = DATA[which]
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(paths_of(doc)))
        if data.draw(st.booleans()) and target:
            # Rename a key instead of replacing a value.
            parent = target[:-1]
            node = doc
            for p in parent:
                node = node[p]
            if isinstance(node, dict):
                new_key = data.draw(st.one_of(st.text(max_size=12), st.integers(), st.none()))
                renamed = {(new_key if k == target[-1] else k): v for k, v in node.items()}
                doc = replace(doc, parent, renamed)
                continue
        doc = replace(doc, target, data.draw(ODD_VALUES))
    path = tmp_path_factory.mktemp("fuzz") / "t.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    outcome(path)


def test_report_fuzz_counts():
    print(f"topology fuzz cases: {RAN}")
