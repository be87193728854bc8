"""The collector's configuration: the example file, and every problem at its line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.central.collector.config import ConfigError, load_collector_config, read_secrets
from nodeagent.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def secret(tmp: Path, name: str, mode: int = 0o600) -> Path:
    path = tmp / f"{name}.secret"
    path.write_text(f"secret-of-{name}\n")
    path.chmod(mode)
    return path


def example(tmp: Path) -> Path:
    """The shipped example with its paths moved into ``tmp``."""
    for name in ("nl-ams-01", "de-fra-01"):
        secret(tmp, name)
    text = (REPO / "collector.example.yaml").read_text()
    text = text.replace("/etc/nodeagent-collector/", f"{tmp}/")
    text = text.replace("/var/lib/nodeagent-collector/", f"{tmp}/")
    path = tmp / "collector.yaml"
    path.write_text(text)
    return path


def problems(tmp: Path, text: str) -> list[str]:
    path = tmp / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_collector_config(path)
    return [str(p).removeprefix(f"{path}:") for p in e.value.problems]


def test_example_loads(tmp_path: Path) -> None:
    config = load_collector_config(example(tmp_path))
    assert config.listen == ("0.0.0.0:8600",)
    assert config.stale_after == 180.0
    assert config.source == "push"
    ams = config.node("nl-ams-01")
    assert ams is not None
    assert (ams.host, ams.city_short, ams.country_code, ams.lati, ams.longi) == (
        "nl-ams-01.example.net", "AMS", "nl", "52.37", "4.89",
    )  # fmt: skip
    fra = config.node("de-fra-01")
    assert fra is not None and fra.city_short == "FRA" and fra.lati == ""
    assert read_secrets(config) == {
        "nl-ams-01": b"secret-of-nl-ams-01",
        "de-fra-01": b"secret-of-de-fra-01",
    }


def test_every_problem_with_its_line(tmp_path: Path) -> None:
    secret(tmp_path, "open", 0o644)
    found = problems(
        tmp_path,
        "collector:\n"
        "  listen: [nowhere]\n"
        "  stale_after: 500ms\n"
        "  sourc: push\n"
        "  database: /no/such/dir/h.sqlite\n"
        "nodes:\n"
        "  - name: a\n"
        "    host: a.example.net\n"
        "    city: A\n"
        "    country: Aland\n"
        "    country_code: ala\n"
        f"    secret_file: {tmp_path}/open.secret\n"
        "    lati: 91\n"
        "  - {name: a, host: a.example.net, city: B, country: B, country_code: bb}\n",
    )
    assert found == [
        "2: collector.listen[0]: nowhere needs a port, as in 127.0.0.1:9586",
        "3: collector.stale_after: must be at least 1s",
        "4: collector.sourc: unknown key; did you mean source?",
        "5: collector.database: /no/such/dir: No such directory",
        "11: nodes[0].country_code: must be a two-letter country code (ISO 3166-1 alpha-2), "
        "as in nl",
        f"12: nodes[0].secret_file: {tmp_path}/open.secret is accessible by group or others "
        f"(mode 0644); run chmod 600 {tmp_path}/open.secret",
        "13: nodes[0].lati: 91 must be within -90..90",
        "14: nodes[1].secret_file: is required",
        "14: nodes[1].name: a is already used by nodes[0]",
        "14: nodes[1].host: a.example.net is already used by nodes[0]",
    ]


def test_prometheus_source(tmp_path: Path) -> None:
    text = (
        f"collector: {{source: prometheus, database: {tmp_path}/h.sqlite,\n"
        "  prometheus: {url: 'http://127.0.0.1:9090/', interval: 5s}}\n"
        "nodes:\n  - {name: a, host: a.example.net, city: A, country: A, country_code: aa}\n"
    )
    (tmp_path / "p.yaml").write_text(text)
    config = load_collector_config(tmp_path / "p.yaml")
    assert config.prometheus is not None
    assert (config.prometheus.url, config.prometheus.interval) == ("http://127.0.0.1:9090", 5.0)
    assert config.prometheus.node_label == "node"
    assert read_secrets(config) == {}
    assert problems(
        tmp_path,
        "collector: {source: prometheus}\nnodes:\n"
        "  - {name: a, host: h, city: A, country: A, country_code: aa, secret_file: x}\n",
    ) == [
        "1: collector.prometheus: is required with source: prometheus",
        "3: nodes[0].secret_file: is only used with source: push",
    ]


def test_no_nodes_and_no_collector(tmp_path: Path) -> None:
    assert problems(tmp_path, "log: {level: loud}\n") == [
        "1: collector: is required",
        "1: nodes: is required",
        "1: log.level: must be one of debug, info, warning, error",
    ]


def test_cli_exit_78_with_the_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("collector: {listen: 3}\nnodes: []\n")
    assert main(["collector", "-c", str(tmp_path / "bad.yaml")]) == 78
    err = capsys.readouterr().err
    assert f"{tmp_path}/bad.yaml:1: collector.listen: must be a list, not a number" in err
    assert f"{tmp_path}/bad.yaml:2: nodes: must not be empty" in err
    assert main(["collector", "-c", str(example(tmp_path)), "--check"]) == 0


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nodeagent", "collector", "-c", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 78
    assert proc.stderr == f"{tmp_path}/none.yaml: cannot read: No such file or directory\n"
