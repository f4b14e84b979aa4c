"""The sample deployment files name real commands and real settings."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from crmsync.cli import app
from crmsync.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTINGS = {f"CRMSYNC_{name.upper()}" for name in Settings.model_fields}


def commands() -> set[tuple[str, ...]]:
    """Every ``crmsync`` command path: ("worker",), ("db", "upgrade"), ..."""
    import typer.main

    group = typer.main.get_command(app)
    found: set[tuple[str, ...]] = set()
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(cmd, "commands", None)
        if sub:
            found |= {(name, s) for s in sub}
        else:
            found.add((name,))
    return found


def known(args: list[str]) -> bool:
    return tuple(args[:1]) in commands() or tuple(args[:2]) in commands()


def test_systemd_units_run_real_commands_with_real_settings() -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert len(units) >= 2
    for unit in units:
        text = unit.read_text()
        (exec_start,) = re.findall(r"^ExecStart=(.+)$", text, re.M)
        argv = shlex.split(exec_start)
        assert argv[0].endswith("/crmsync"), unit.name
        assert known(argv[1:]), f"{unit.name}: unknown command {argv[1:]}"
        assert "EnvironmentFile=/etc/crmsync/crmsync.env" in text
    env = (DEPLOY / "crmsync.env.example").read_text()
    names = set(re.findall(r"^(CRMSYNC_[A-Z_]+)=", env, re.M))
    assert names and names <= SETTINGS, names - SETTINGS


def test_kubernetes_manifest_is_valid_yaml_with_real_commands_and_settings() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "crmsync.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 2 and "Job" in kinds and "Service" in kinds
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            assert set(doc["data"]) <= SETTINGS, set(doc["data"]) - SETTINGS
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert known(container["args"]), container["args"]
                probe = container.get("readinessProbe")
                if probe:
                    assert probe["httpGet"]["path"] == "/healthz"


def test_file_descriptor_limits_leave_room_for_the_connection_cap() -> None:
    """A slowloris on the default 1,024 descriptors took serve down (issue 16.5)."""
    cap = Settings.model_fields["max_connections"].default
    for name in ("crmsync-web.service", "crmsync-worker@.service"):
        text = (DEPLOY / "systemd" / name).read_text()
        (limit,) = re.findall(r"^LimitNOFILE=(\d+)$", text, re.M)
        assert int(limit) >= cap + 1024, name
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "crmsync.yaml").read_text()))
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert int(config["data"]["CRMSYNC_MAX_CONNECTIONS"]) <= 1_000_000 - 1024
    assert config["data"]["CRMSYNC_TRUSTED_PROXIES"]
