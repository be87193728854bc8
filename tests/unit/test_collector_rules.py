"""The fleet's Prometheus rules: valid for promtool, and their unit tests pass, and bite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "prometheus" / "nodeagent-rules.yml"
TESTS = REPO / "prometheus" / "tests" / "nodeagent-rules.test.yml"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Installed with Debian's prometheus package (the unit tier's UNIT_PKGS): not optional.
    assert shutil.which("promtool"), "promtool missing: apt-get install prometheus"
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, check=False, timeout=120, cwd=cwd
    )


def test_rules_are_valid() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 13 rules found" in proc.stdout


def test_rule_unit_tests_pass() -> None:
    proc = promtool("test", "rules", str(TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    text = RULES.read_text()
    assert "avg5m > 90" in text
    (tmp_path / "nodeagent-rules.yml").write_text(text.replace("avg5m > 90", "avg5m > 96"))
    (tmp_path / "tests" / TESTS.name).write_text(TESTS.read_text())
    proc = promtool("test", "rules", str(tmp_path / "tests" / TESTS.name))
    assert proc.returncode != 0
    assert "NodeagentLoadHigh" in proc.stdout + proc.stderr


def test_every_alert_has_a_test() -> None:
    import yaml

    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    tested = {
        t["alertname"]
        for case in yaml.safe_load(TESTS.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts == tested
    assert "NodeagentOpenVPNInstanceDown" in alerts
