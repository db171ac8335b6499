"""The SOC alert rules (promtool check + unit tests) and the dashboard's JSON structure, type-checked
against Grafana's published @grafana/schema types with tsc."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from deploy_tools import CACHE, CHART, tool

RULES = CHART / "rules"
DASHBOARD = CHART / "dashboards" / "shoal-soc.json"


def test_rules_check_and_unit_tests() -> None:
    promtool = tool("promtool")
    for args in (["check", "rules", "shoal.rules.yaml"], ["test", "rules", "shoal.rules.test.yaml"]):
        res = subprocess.run(
            [promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS" in res.stdout


def _typecheck(dashboard: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Every object in the dashboard becomes a typed literal, so tsc's excess-property checks apply:
    the dashboard as `Dashboard`, each panel as `Panel`, each query as a Prometheus query."""
    modules = CACHE / "npm" / "node_modules"
    lines = [
        'import type { Dashboard, Panel, DataQuery } from "@grafana/schema";',
        "type PrometheusQuery = DataQuery & { expr: string; legendFormat?: string; instant?: boolean; range?: boolean };",
        f"export const dashboard: Dashboard = {json.dumps(dashboard)};",
    ]
    for n, panel in enumerate(dashboard["panels"]):
        targets = panel.get("targets", [])
        lines.append(f"export const panel{n}: Panel = {json.dumps({**panel, 'targets': []})};")
        lines.append(f"export const targets{n}: PrometheusQuery[] = {json.dumps(targets)};")
    (tmp_path / "dashboard.ts").write_text("\n".join(lines) + "\n")
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "moduleResolution": "bundler", "module": "esnext",
                            "target": "es2022", "skipLibCheck": True, "typeRoots": [], "baseUrl": ".",
                            "paths": {"@grafana/schema": [str(modules / "@grafana" / "schema")]}},
        "files": ["dashboard.ts"],
    }))  # fmt: skip
    return subprocess.run([tool("tsc"), "-p", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def test_dashboard_matches_grafana_schema(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    res = _typecheck(dashboard, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_schema_check_catches_mistakes(tmp_path: Path) -> None:
    """The type check can fail: a misspelt panel field, and a wrong type in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][0]["gridpos"] = dashboard["panels"][0].pop("gridPos")
    dashboard["refresh"] = 30
    res = _typecheck(dashboard, tmp_path)
    assert res.returncode != 0
    assert "'\"gridpos\"' does not exist in type 'Panel" in res.stdout, res.stdout
    assert "Type 'number' is not assignable to type 'string'" in res.stdout, res.stdout
