"""The systemd units and `scripts/install.sh`: installed into a temporary root, every unit
passes `systemd-analyze verify` (no systemd needed as PID 1), every file a unit names is
installed, secrets are root-only files never on a command line, and every `nfsteer`
command line a unit runs is accepted by the real argument parser."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port, require, unique_name

from cli import main as cli
from contract.secrets import redis_url

NFSTEER = REPO / ".venv" / "bin" / "nfsteer"
UNITS = {
    "nfsteer-controller.service": "nfsteer-controller.service",
    "nfsteer-nf@.service": "nfsteer-nf@fw1.service",
    "nfsteer-redis@.service": "nfsteer-redis@main.service",
    "nfsteer-sentinel@.service": "nfsteer-sentinel@s1.service",
}
# Options of `nfsteer controller` that read secrets from files; checked against the parser
# when it has them (they come with the controller's secrets-from-files support).
SECRET_FILE_OPTIONS = {"--api-token-file", "--redis-url-file"}


def install(root: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh")],
        env={**os.environ, "DESTDIR": str(root), "NFSTEER_BIN": str(NFSTEER), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def unit_settings(path: Path) -> list[tuple[str, str]]:
    """(key, value) of every setting, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def expand(command: str, env: dict[str, str], instance: str) -> list[str]:
    """ExecStart as systemd splits it: ${VAR} is one word, $VAR splits on spaces."""
    command = command.replace("%i", instance).replace("%d", "/run/credentials/unit")
    words = []
    for word in shlex.split(command):
        if re.fullmatch(r"\$[A-Z_]+", word):
            words += env.get(word[1:], "").split()
        else:
            words.append(re.sub(r"\$\{([A-Z_]+)\}", lambda m: env[m.group(1)], word))
    return words


def problems(root: Path, unit: Path, instance: str) -> list[str]:
    """Files a unit names that are not installed, and secrets in the wrong place."""
    out = []
    for key, value in unit_settings(unit):
        if key == "EnvironmentFile":
            path = value.lstrip("-").replace("%i", instance)
            where = root / path.lstrip("/")
            # A per-instance file is the operator's; its directory must be there.
            target = where.parent if "%i" in value else where
            if not target.exists():
                out.append(f"{unit.name}: {key}={value}: {target} missing")
        elif key == "LoadCredential":
            source = root / value.split(":", 1)[1].lstrip("/")
            if not source.exists():
                out.append(f"{unit.name}: {key}={value}: {source} missing")
        elif key == "ExecStart":
            for word in value.split():
                if (
                    word.startswith(("/etc/", "@"))
                    and not (root / word.lstrip("/")).parent.is_dir()
                ):
                    out.append(f"{unit.name}: {word}: directory not installed")
                if word in ("--api-token", "--redis", "--password"):
                    out.append(f"{unit.name}: a secret on the command line ({word})")
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = install(tmp_path / "root")
    assert r.returncode == 0, r.stderr
    return tmp_path / "root"


def test_units_pass_systemd_analyze_verify(root):
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian systemd)")
    unitdir = root / "etc" / "systemd" / "system"
    assert sorted(p.name for p in unitdir.iterdir()) == sorted(UNITS)
    paths = [str(unitdir / instance) for instance in UNITS.values()]
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stderr


def test_a_wrong_path_or_key_in_a_unit_fails_verify(root, tmp_path):
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian systemd)")
    unit = (root / "etc/systemd/system/nfsteer-controller.service").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "nfsteer-controller.service").write_text(unit.replace(str(NFSTEER), "/nonexistent"))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(bad / "nfsteer-controller.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "/nonexistent" in r.stderr
    (bad / "nfsteer-controller.service").write_text(unit.replace("EnvironmentFile=", "EnvFile="))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(bad / "nfsteer-controller.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Unknown key 'EnvFile'" in r.stderr  # exit status 0: the test checks the output
    moved = unit.replace("/etc/nfsteer/secrets/api-token", "/etc/nfsteer/api-token")
    (bad / "nfsteer-controller.service").write_text(moved)
    assert problems(root, bad / "nfsteer-controller.service", "x") == [
        "nfsteer-controller.service: LoadCredential=api-token:/etc/nfsteer/api-token: "
        f"{root}/etc/nfsteer/api-token missing"
    ]


def test_every_file_a_unit_names_is_installed_and_restart_is_on_failure(root):
    unitdir = root / "etc" / "systemd" / "system"
    for name, instance in UNITS.items():
        unit = unitdir / name
        assert problems(root, unit, instance.split("@")[-1].split(".")[0]) == []
        settings = dict(unit_settings(unit))
        assert settings["Restart"] == "on-failure", name
        assert settings.get("User") or settings.get("DynamicUser") == "yes", name


def test_secrets_are_root_only_and_kept_by_a_second_install(root):
    etc = root / "etc" / "nfsteer"
    for d in (etc / "secrets", etc / "nf"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    token = etc / "secrets" / "api-token"
    for f in (token, etc / "secrets" / "redis-url"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    before = token.read_text()
    (etc / "controller.env").write_text((etc / "controller.env").read_text() + "# edited\n")
    r = install(root)
    assert r.returncode == 0, r.stderr
    assert token.read_text() == before
    assert (etc / "controller.env").read_text().endswith("# edited\n")


def test_nfsteer_command_lines_are_accepted_by_the_parser(root, monkeypatch):
    unitdir = root / "etc" / "systemd" / "system"
    share = root / "usr" / "local" / "share" / "nfsteer"
    envs = {
        "nfsteer-controller.service": env_file(root / "etc/nfsteer/controller.env"),
        "nfsteer-nf@.service": env_file(share / "examples" / "nf.env.example"),
    }
    controller_help = subprocess.run(
        [str(NFSTEER), "controller", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    known = {o for o in SECRET_FILE_OPTIONS if o in controller_help}
    for name, env in envs.items():
        (command,) = [v for k, v in unit_settings(unitdir / name) if k == "ExecStart"]
        argv = expand(command, env, "fw1")
        for key, value in env.items():  # what systemd puts in the service's environment
            monkeypatch.setenv(key, value)
        parser = cli.build_parser()
        assert argv[0] == str(NFSTEER)
        args, unknown = parser.parse_known_args(argv[1:])
        pending = SECRET_FILE_OPTIONS - known
        leftover = [w for w in unknown if w not in pending and not w.startswith("/run/")]
        assert leftover == [], f"{name}: {leftover}"
        assert args.log_format == env.get("NFSTEER_LOG_FORMAT", "text")
        if name.startswith("nfsteer-nf@"):  # the Redis URL comes from the 0600 file
            assert redis_url(args) == env["NFSTEER_REDIS"] and "--redis" not in argv


def test_install_refuses_a_missing_nfsteer(tmp_path):
    r = install(tmp_path / "root", NFSTEER_BIN="/nonexistent/nfsteer")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "install: /nonexistent/nfsteer is not executable (run make setup, or set NFSTEER_BIN)"
    )
    assert not (tmp_path / "root").exists()


def run_unit_command(root: Path, unit: str, env: dict[str, str], instance: str, credentials: Path):
    """The unit's ExecStart as systemd would start it: its environment file's variables in
    the environment, %d the credentials directory; options the parser lacks are dropped."""
    (command,) = [
        v for k, v in unit_settings(root / "etc/systemd/system" / unit) if k == "ExecStart"
    ]
    argv = expand(command, env, instance)
    argv = [w.replace("/run/credentials/unit", str(credentials)) for w in argv]
    help_text = subprocess.run(
        [argv[0], argv[1], "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for option in SECRET_FILE_OPTIONS:
        if option in argv and option not in help_text:
            i = argv.index(option)
            del argv[i : i + 2]
    return subprocess.Popen(
        argv,
        env={"PATH": os.environ["PATH"], **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_the_units_command_lines_start_a_controller_and_an_nf(root, redis_server, tmp_path):
    """What systemd would run, run here: the controller answers on its API and logs JSON;
    the NF registers in Redis with the URL from its 0600 environment file, and drains and
    exits 0 on SIGTERM (systemctl stop)."""
    import httpx
    import redis as redis_py
    import yaml
    from nf_support import FW, veth_pair, write_topology

    from contract import keys

    require(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2")
    etc = root / "etc" / "nfsteer"
    topo = write_topology(etc / "topology.yaml", "fw", "firewall", FW)
    api = f"127.0.0.1:{free_port()}"
    env = {**env_file(etc / "controller.env"), "NFSTEER_TOPOLOGY": str(topo)}
    env.update(NFSTEER_API=api, NFSTEER_LISTEN=f"127.0.0.1:{free_port()}")
    (etc / "secrets" / "redis-url").write_text(redis_server.url + "\n")
    ctl = run_unit_command(root, "nfsteer-controller.service", env, "", etc / "secrets")
    share = root / "usr" / "local" / "share" / "nfsteer"
    r = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert ctl.poll() is None, ctl.communicate()[1]
            try:
                if httpx.get(f"http://{api}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "controller API did not answer"
            time.sleep(0.1)
        with veth_pair(unique_name("su")) as (_, nf_if):
            nf_env = env_file(share / "examples" / "nf.env.example")
            nf_env.update(
                NFSTEER_NF_INTERFACE=nf_if,
                NFSTEER_TOPOLOGY=str(topo),
                NFSTEER_REDIS=redis_server.url,
            )
            nf_env["NFSTEER_NF_ARGS"] += " --drain-grace 0.5"  # no controller moves its slots
            env_path = etc / "nf" / "fw7.env"
            env_path.write_text("".join(f"{k}={v}\n" for k, v in nf_env.items()))
            env_path.chmod(0o600)
            nf = run_unit_command(root, "nfsteer-nf@.service", env_file(env_path), "fw7", tmp_path)
            try:
                deadline = time.monotonic() + 15
                while not r.exists(keys.instance("fw", "fw7")):
                    assert nf.poll() is None, nf.communicate()[1]
                    assert time.monotonic() < deadline, "the NF did not register"
                    time.sleep(0.05)
                assert redis_server.url not in " ".join(nf.args)  # not on its command line
            finally:
                nf.send_signal(signal.SIGTERM)
                _, nf_err = nf.communicate(timeout=20)
            assert nf.returncode == 0, nf_err
            assert not r.exists(keys.instance("fw", "fw7"))  # drained and deregistered
            assert all(json.loads(line)["instance"] == "fw7" for line in nf_err.splitlines())
    finally:
        ctl.send_signal(signal.SIGTERM)
        _, ctl_err = ctl.communicate(timeout=20)
        r.close()
    assert ctl.returncode == 0, ctl_err
    assert all(json.loads(line)["level"] for line in ctl_err.splitlines())
    assert yaml.safe_load(topo.read_text())["pools"]["fw"]["kind"] == "firewall"
