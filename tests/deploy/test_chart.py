"""The Helm chart: `helm lint --strict`, renders for the default values and for every option on, every
rendered manifest validated against Kubernetes' own schemas (kubernetes-validate, strict: unknown fields
fail) or, for the custom resources, against maintained models of their CRDs (cloudcoil), and bad values
rejected with a message that names the mistake."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_tools import CHART, KUBE_VERSION, tool

ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
CRD_APIS = ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"]


def _crd_models() -> dict[str, Any]:
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    return {
        "monitoring.coreos.com/v1/ServiceMonitor": monitoring.ServiceMonitor,
        "monitoring.coreos.com/v1/PrometheusRule": monitoring.PrometheusRule,
        "keda.sh/v1alpha1/ScaledObject": keda.ScaledObject,
        "keda.sh/v1alpha1/TriggerAuthentication": keda.TriggerAuthentication,
    }


def helm_template(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), "template", "t", str(CHART), "--kube-version", KUBE_VERSION, *args],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def render(*args: str) -> list[dict[str, Any]]:
    res = helm_template(*args)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def validate(doc: dict[str, Any]) -> str:
    """Validates one manifest; returns which validator did. Raises on any error or unknown field."""
    key = f"{doc['apiVersion']}/{doc['kind']}"
    model = _crd_models().get(key)
    if model is not None:
        dumped = model.model_validate(doc).model_dump(mode="json", by_alias=True, exclude_unset=True)
        # The models ignore unknown fields; a field lost on the round trip is one the CRD does not know.
        assert dumped == doc, f"{key}: fields the CRD does not define"
        return "crd-model"
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    return "kubernetes"


def test_helm_lint_strict() -> None:
    for values in ([], ["-f", str(ALL_OPTIONS)]):
        res = subprocess.run([tool("helm"), "lint", "--strict", str(CHART), *values], capture_output=True,
                             text=True, timeout=120, check=False)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("options", ["default", "all"])
def test_every_rendered_manifest_is_validated(options: str) -> None:
    args = (
        ["-f", str(ALL_OPTIONS)] + [a for api in CRD_APIS for a in ("--api-versions", api)]
        if options == "all"
        else []
    )
    docs = render(*args)
    validated = {f"{d['apiVersion']}/{d['kind']}": validate(d) for d in docs}
    assert set(validated) == {f"{d['apiVersion']}/{d['kind']}" for d in docs}
    kinds = {d["kind"] for d in docs}
    base = {"ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget", "NetworkPolicy"}
    if options == "all":
        assert kinds == base | {
            "DaemonSet",
            "ServiceMonitor",
            "PrometheusRule",
            "ScaledObject",
            "TriggerAuthentication",
        }
        assert set(validated.values()) == {"kubernetes", "crd-model"}
    else:
        assert kinds == base


def test_validators_reject_unknown_fields() -> None:
    """The validators above can fail: a misspelt field in a core resource and in each custom resource."""
    docs = render("-f", str(ALL_OPTIONS), *[a for api in CRD_APIS for a in ("--api-versions", api)])
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    for kind in ("ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"):
        bad = copy.deepcopy(next(d for d in docs if d["kind"] == kind))
        bad["spec"]["replicaz"] = 3
        with pytest.raises(AssertionError, match="fields the CRD does not define"):
            validate(bad)


def test_crs_only_when_the_cluster_has_their_crds() -> None:
    kinds = {d["kind"] for d in render("-f", str(ALL_OPTIONS))}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert "ScaledObject" in kinds  # KEDA was asked for explicitly


def _with(values: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return helm_template("-f", str(path))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"collector": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"detect": {"autoscalling": {"enabled": True}}}, "additional properties 'autoscalling' not allowed"),
        ({"metricsPort": "9108"}, "at '/metricsPort': got string, want integer"),
        ({"collector": {"kind": "StatefulSet"}}, "at '/collector/kind': value must be one of"),
        ({"detect": {"replicas": 7}}, "detect.replicas (7) exceeds topics.flows.partitions (6)"),
        (
            {"detect": {"autoscaling": {"enabled": True, "maxReplicas": 8}}},
            "detect.autoscaling.maxReplicas (8) exceeds topics.flows.partitions (6)",
        ),
        (
            {"kafka": {"sasl": {"enabled": True, "username": "u"}}},
            "kafka.sasl.users.collector.passwordSecret.name",
        ),
        (
            {"kafka": {"sasl": {"users": {"worker": {}}}}},
            "at '/kafka/sasl/users': additional properties 'worker'",
        ),
        ({"collector": {"allowExporters": ["not-a-cidr"]}}, "at '/collector/allowExporters/0': 'not-a-cidr'"),
        ({"confirm": {"replicas": 7}}, "confirm.replicas (7) exceeds topics.partials.partitions (6)"),
        ({"share": {"enabled": True}}, "share.enabled needs share.policyToml"),
        ({"share": {"replicas": 2}}, "at '/share': additional properties 'replicas' not allowed"),
        ({"share": {"secretEnv": [{"env": "KEY", "secret": "s"}]}}, "missing property 'key'"),
        ({"collector": {"workers": 0}}, "at '/collector/workers'"),
        ({"collector": {"workers": "many"}}, "at '/collector/workers'"),
    ],
    ids=[
        "unknown-key",
        "unknown-nested-key",
        "wrong-type",
        "wrong-enum",
        "workers-above-partitions",
        "autoscaling-above-partitions",
        "secret-missing",
        "unknown-role",
        "bad-cidr",
        "confirm-above-partials",
        "share-without-policy",
        "share-replicas",
        "share-secret-incomplete",
        "collector-workers-zero",
        "collector-workers-word",
    ],
)
def test_bad_values_are_rejected(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    res = _with(values, tmp_path)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


def test_workers_up_to_partitions_are_accepted(tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(_with({"detect": {"replicas": 6}}, tmp_path).stdout) if d]
    detect = next(d for d in docs if d["metadata"]["name"].endswith("-detect") and d["kind"] == "Deployment")
    assert detect["spec"]["replicas"] == 6


def test_pods_are_hardened_and_probed() -> None:
    docs = render("-f", str(ALL_OPTIONS))
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "DaemonSet", "Job")]
    assert len(pods) == 6  # collector, detect, confirm, share, intel sync, topics job
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["limits"]["memory"]
    long_running = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    for d in long_running:
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_secrets_are_referenced_never_inlined() -> None:
    docs = render("-f", str(ALL_OPTIONS))
    assert not [d for d in docs if d["kind"] == "Secret"]
    refs = {(e["name"], e["valueFrom"]["secretKeyRef"]["name"])
            for d in docs if d["kind"] in ("Deployment", "DaemonSet", "Job")
            for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", []) if "valueFrom" in e
            and "secretKeyRef" in e["valueFrom"]}  # fmt: skip
    # Each role its own Kafka user (so ACLs can give it only its topics); detect falls back to the default.
    assert {("SHOAL_KAFKA_SASL_PASSWORD", s) for s in ("shoal-kafka-user", "shoal-collector", "shoal-intel",
                                                        "shoal-admin")} <= refs  # fmt: skip
    assert ("SHOAL_MISP_KEY", "shoal-misp") in refs
    assert ("SHOAL_TAXII_PASSWORD", "shoal-taxii") in refs
    assert {("SHOAL_KAFKA_SASL_PASSWORD", "shoal-confirm"), ("SHOAL_KAFKA_SASL_PASSWORD", "shoal-share"),
            ("SHOAL_MISP_KEY", "shoal-misp-share"), ("SHOAL_TAXII_PASSWORD", "shoal-taxii-share")} <= refs  # fmt: skip


def test_collector_service_keeps_exporter_addresses() -> None:
    for args in ([], ["-f", str(ALL_OPTIONS)]):
        svc = next(
            d
            for d in render(*args)
            if d["kind"] == "Service" and d["metadata"]["name"].endswith("-collector")
        )
        assert svc["spec"]["externalTrafficPolicy"] == "Local"
        assert {p["protocol"] for p in svc["spec"]["ports"]} == {"UDP"}


def test_shipped_dashboard_and_rules_are_the_repository_files() -> None:
    docs = render("-f", str(ALL_OPTIONS), *[a for api in CRD_APIS for a in ("--api-versions", api)])
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["shoal-soc.json"]) == json.loads(
        (CHART / "dashboards" / "shoal-soc.json").read_text()
    )
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "rules" / "shoal.rules.yaml").read_text())


@pytest.mark.parametrize("options", ["default", "all"])
def test_rendered_commands_and_configuration_are_what_shoal_accepts(options: str, tmp_path: Path) -> None:
    """Every container's arguments parse with Shoal's own command line, and the ConfigMap's files load
    with its configuration loaders (a renamed option or key breaks this test, not a deployment)."""
    from pipeline.cli import build_parser
    from pipeline.collector.config import load_config
    from pipeline.transport.config import load_streams_config

    docs = render(*(["-f", str(ALL_OPTIONS)] if options == "all" else []))
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    for name, text in config["data"].items():
        (tmp_path / name).write_text(text)
    values = yaml.safe_load(ALL_OPTIONS.read_text()) if options == "all" else {}
    collector = load_config(str(tmp_path / "collector.toml"))
    assert collector.metrics.listen.endswith(f":{values.get('metricsPort', 9108)}")
    expected_exporters = values.get("collector", {}).get("allowExporters", [])
    assert [str(n) for n in collector.receive.allow_exporters] == expected_exporters
    assert collector.worker_count(cores=64) == values.get("collector", {}).get("workers", 1)
    streams = load_streams_config(str(tmp_path / "streams.toml"))
    assert streams.topics.flows.partitions == values.get("topics", {}).get("flows", {}).get("partitions", 6)
    assert streams.detect.group == values.get("detect", {}).get("group", "shoal-detect")
    assert streams.confirm.group == values.get("confirm", {}).get("group", "shoal-confirm")
    for kind in ("partials", "detections", "feedback", "sightings"):
        want = values.get("topics", {}).get(kind, {}).get("name", f"shoal.{kind}.v1")
        assert getattr(streams.topics, kind).name == want
    if "detections.toml" in config["data"]:
        from pipeline.confirm.settings import load_detection_settings

        assert load_detection_settings(str(tmp_path / "detections.toml")).scan.enabled
    if "sharing.toml" in config["data"]:
        from pipeline.share.policy import load_policy

        assert [d.name for d in load_policy(tmp_path / "sharing.toml").destinations] == [
            "soc-topic",
            "trust-group",
            "cert-hub",
        ]
    parser = build_parser()
    commands = set()
    for d in docs:
        if d["kind"] not in ("Deployment", "DaemonSet", "Job"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            args = [a.replace("$(POD_NAME)", "pod-0") for a in c["args"]]
            parsed = parser.parse_args(args)
            commands.add(" ".join(args[:2]) if args[0] in ("intel", "topics") else args[0])
            if hasattr(parsed, "metrics") and parsed.command != "collect":
                assert parsed.metrics == f"0.0.0.0:{values.get('metricsPort', 9108)}"
    assert commands == {"collect", "detect", "intel sync", "topics create", "confirm"} | (
        {"share"} if options == "all" else set()
    )
