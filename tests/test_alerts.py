"""etc/prometheus/audiogw-alerts.yml parses as Prometheus rules (promtool is not installed here:
a YAML load and a sanity check of every rule), and the extension-down alert fires for an
extension that is `failed` (its port busy) or `fatal`."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from audiogw.supervisor.metrics import ExtensionSample, build_families

RULES = Path(__file__).resolve().parent.parent / "etc" / "prometheus" / "audiogw-alerts.yml"
DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")
PAIRS = {"(": ")", "[": "]", "{": "}"}


def balanced(expr: str) -> bool:
    """Brackets nest and close (outside quoted label values)."""
    stack: list[str] = []
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if char in PAIRS:
            stack.append(PAIRS[char])
        elif char in PAIRS.values() and (not stack or stack.pop() != char):
            return False
    return not stack


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_rules_file_is_valid_prometheus_rules():
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"} and document["groups"]
    names = set()
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in names, f"alert {rule['alert']} declared twice"
            names.add(rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip() and balanced(rule["expr"]), rule
            if "for" in rule:
                assert DURATION.match(str(rule["for"])), rule["for"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            for text in rule["annotations"].values():
                assert text.count("{{") == text.count("}}"), text
    assert not balanced("sum(rate(x[5m])") and not balanced("a{b=\"c\"]")  # the check can fail


def test_an_extension_that_is_not_up_fires_the_extension_down_alert():
    down = next(rule for rule in rules() if rule["alert"] == "AudiogwExtensionDown")
    metric, value = re.fullmatch(r"(\w+) == (\d+)", down["expr"].strip()).groups()
    now = 1000.0
    samples = [
        ExtensionSample(id="1201", running=True, last_heartbeat=now, state="running"),
        ExtensionSample(id="1202", running=False, state="failed", reason="cannot listen on 127.0.0.1:4: busy"),
        ExtensionSample(id="1203", running=False, state="fatal", reason="exited with code 78"),
    ]
    families = {family.name: family for family in build_families(samples, now=now, heartbeat_timeout=3.0)}
    firing = {sample.labels["extension"] for sample in families[metric].samples if sample.value == float(value)}
    assert firing == {"1202", "1203"}
    assert down["labels"]["severity"] == "critical" and "extension" in down["annotations"]["summary"]


def test_the_ami_down_alert_watches_a_gauge_the_supervisor_exports_only_with_a_manager():
    """Without [asterisk] manager the gauge is absent, so the alert cannot fire on a host without AMI."""
    from audiogw.shared.stats_schema import metric_fields

    rule = next(rule for rule in rules() if rule["alert"] == "AudiogwAmiDown")
    metric, value = re.fullmatch(r"(\w+) == (\d+)", rule["expr"].strip()).groups()
    assert metric in {field.name for _labels, field in metric_fields()} and value == "0"
    assert DURATION.match(rule["for"])
