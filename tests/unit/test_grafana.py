"""deploy/grafana/runstream.json asks only for metrics the code exports (imported for real: the
names come from the registry, not from a list kept by hand)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "runstream.json"
_NAME = re.compile(r"\b(runstream_[a-z0-9_]+)")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def _exported() -> dict[str, set[str]]:
    """Every series name the runstream packages register → the labels it carries."""
    for package in ("partition", "agents", "api"):
        for mod in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            importlib.import_module(mod.name)
    out: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("runstream_"):
            continue
        collector = REGISTRY._names_to_collectors[family.name + _SUFFIXES[family.type][0]]
        labels = set(getattr(collector, "_labelnames", ())) | {"le", "instance", "job", "pod"}
        for suffix in _SUFFIXES[family.type]:
            out[family.name + suffix] = labels
    return out


def _expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in _expressions(v)]
    return []


def test_every_metric_in_the_dashboard_is_exported() -> None:
    exported = _exported()
    assert "runstream_events_total" in exported  # the collection itself works
    expressions = _expressions(json.loads(DASHBOARD.read_text()))
    assert len(expressions) >= 10
    named = {n for e in expressions for n in _NAME.findall(e)}
    assert named, "the dashboard names no runstream metric"
    assert named <= exported.keys(), f"not exported: {sorted(named - exported.keys())}"


def test_grouping_labels_exist_on_their_metrics() -> None:
    exported = _exported()
    by = re.compile(r"(?:by|without) \(([^)]*)\)[^()]*\(?\s*rate\((runstream_[a-z0-9_]+)")
    checked = 0
    for expr in _expressions(json.loads(DASHBOARD.read_text())):
        for labels, name in by.findall(expr):
            for label in (x.strip() for x in labels.split(",")):
                assert label in exported[name], f"{name} has no label {label!r}: {expr}"
                checked += 1
    assert checked >= 5


def test_the_template_variable_query_names_an_exported_metric() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exported = _exported()
    for var in doc["templating"]["list"]:
        definition = var.get("definition", "")
        for name in _NAME.findall(definition):
            assert name in exported
