#!/usr/bin/env python3
"""Checks Keyward's packaging offline: the Helm charts and the Dockerfiles under deploy/.

Why: a chart that renders is not yet a chart that keeps Keyward's invariants (secrets only from
Secrets, readiness on /readyz, an agent identity that survives restarts). This renders each chart
with its defaults and with the override files beside this script, lints it with Helm's SDK,
validates every manifest against a pinned Kubernetes API (strict: unknown fields are errors),
asserts those properties, and lints deploy/Dockerfile.* with hadolint. Exit status 1 on any problem.

Run with the packaging venv (scripts/install-test-peers):
    target/test-peers/packaging/bin/python tests/packaging/check.py [--values CHART=FILE ...]
        [--dockerfiles DIR] [--write-configs DIR]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv

# The Kubernetes version manifests are validated against: the oldest one the charts support.
KUBERNETES_VERSION = "1.33.0"
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# API groups of custom resources: their schemas are the operator's, not Kubernetes'.
CRD_GROUPS = ("monitoring.coreos.com/",)
# Environment variables that carry secrets: never a literal `value` in a manifest.
SECRET_ENV = re.compile(r"KEK|DATABASE_URL|TOKEN|PASSWORD|SECRET", re.IGNORECASE)
# Default values, then the override files checked for each chart.
CASES = {
    "keyward": [None, HERE / "keyward-scale.yaml"],
    "keyward-agent": [None, HERE / "keyward-agent-process.yaml"],
}


class Report:
    """Collects results; a failure anywhere fails the run."""

    def __init__(self) -> None:
        self.failures = 0

    def ok(self, what: str) -> None:
        print(f"ok    {what}")

    def note(self, what: str) -> None:
        print(f"note  {what}")

    def fail(self, what: str) -> None:
        self.failures += 1
        print(f"FAIL  {what}")

    def check(self, condition: bool, what: str) -> bool:
        (self.ok if condition else self.fail)(what)
        return condition


def load_values(path: Path | None) -> dict:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def render(chart_dir: Path, values: dict) -> tuple[dict, list[dict]]:
    """The merged values and every rendered manifest (NOTES.txt left out)."""
    with helm.Chart.load(chart_dir) as chart:
        merged = chart.merge_values(values)
        files = chart.render(values, name="kw", namespace="keyward", is_install=True)
    docs = []
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return merged, docs


def lint(report: Report, chart_dir: Path, values: dict, case: str) -> None:
    result = helm.lint(chart_dir, values, strict=True, namespace="keyward")
    problems = [m for m in result.get("messages", []) if m.get("severity", 0) >= 2]
    problems += [{"path": "", "error": e} for e in result.get("errors") or []]
    for problem in problems:
        report.fail(f"{case}: helm lint: {problem.get('path')}: {problem.get('error')}")
    if not problems:
        report.ok(f"{case}: helm lint (strict)")


def validate(report: Report, docs: list[dict], case: str) -> None:
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if str(doc.get("apiVersion", "")).startswith(CRD_GROUPS):
            report.note(f"{case}: {name}: a custom resource ({doc['apiVersion']}); its CRD's schema is not known here, not validated")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as error:
            at = ".".join(str(p) for p in error.absolute_path) or "(top)"
            report.fail(f"{case}: {name} is not valid Kubernetes {KUBERNETES_VERSION}: at {at}: {error.message}")
            continue
        except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as error:
            report.fail(f"{case}: {name} cannot be validated against Kubernetes {KUBERNETES_VERSION}: {error}")
            continue
        report.ok(f"{case}: {name} valid against Kubernetes {KUBERNETES_VERSION} (strict)")


def find(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def literal_secrets(report: Report, containers: list[dict], case: str) -> None:
    """No container gets a secret-looking variable as a literal value."""
    for container in containers:
        for env in container.get("env") or []:
            if SECRET_ENV.search(env.get("name", "")) and "value" in env:
                report.fail(f"{case}: container {container['name']}: {env['name']} is a literal value; take it from a Secret (secretKeyRef or a mounted file)")


def secret_mounts(pod: dict, container: dict) -> list[str]:
    """The mount paths of `container` that are Secret volumes."""
    secrets = {v["name"] for v in pod.get("volumes") or [] if "secret" in v}
    return [m["mountPath"] for m in container.get("volumeMounts") or [] if m["name"] in secrets]


def env_from_secret(container: dict, name: str) -> bool:
    return any(e.get("name") == name and "secretKeyRef" in e.get("valueFrom", {}) for e in container.get("env") or [])


def probe_path(container: dict, probe: str) -> str | None:
    return ((container.get(probe) or {}).get("httpGet") or {}).get("path")


def check_broker(report: Report, values: dict, docs: list[dict], case: str) -> None:
    deployments = find(docs, "Deployment")
    if not report.check(len(deployments) == 1, f"{case}: one broker Deployment"):
        return
    deployment = deployments[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    want = values.get("replicaCount")
    report.check(deployment["spec"].get("replicas") == want, f"{case}: replicas {deployment['spec'].get('replicas')} = values' replicaCount {want}")
    literal_secrets(report, pod["containers"] + (pod.get("initContainers") or []), case)
    config = broker_config(report, docs, case)
    if config is None:
        return
    storage, keys = config.get("storage", {}), config.get("keys", {})
    report.check("kek" not in keys and "database_url" not in storage, f"{case}: no literal KEK or database URL in keyward.toml")
    url_env = storage.get("database_url_env")
    report.check(bool(url_env) and env_from_secret(container, url_env), f"{case}: the PostgreSQL URL ({url_env}) from a Secret (secretKeyRef)")
    kek_file, kek_env = keys.get("kek_file"), keys.get("kek_env")
    from_file = bool(kek_file) and any(kek_file.startswith(p.rstrip("/") + "/") for p in secret_mounts(pod, container))
    from_env = bool(kek_env) and env_from_secret(container, kek_env)
    report.check(from_file or from_env, f"{case}: the KEK ({kek_file or kek_env}) from a Secret (a mounted file or secretKeyRef)")
    report.check(probe_path(container, "livenessProbe") == "/healthz", f"{case}: liveness probe on /healthz")
    report.check(probe_path(container, "readinessProbe") == "/readyz", f"{case}: readiness probe on /readyz")
    security = container.get("securityContext") or {}
    report.check(
        pod.get("securityContext", {}).get("runAsNonRoot") is True and security.get("allowPrivilegeEscalation") is False and security.get("readOnlyRootFilesystem") is True,
        f"{case}: broker runs as non-root, read-only, without privilege escalation",
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdbs = [p for p in find(docs, "PodDisruptionBudget") if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    report.check(len(pdbs) == 1, f"{case}: a PodDisruptionBudget selecting the broker pods")
    monitors = find(docs, "ServiceMonitor")
    if values.get("serviceMonitor", {}).get("enabled"):
        paths = [e.get("path") for m in monitors for e in m["spec"]["endpoints"]]
        report.check(paths == ["/metrics"], f"{case}: the ServiceMonitor scrapes /metrics")
    else:
        report.check(not monitors, f"{case}: no ServiceMonitor unless enabled")


def broker_config(report: Report, docs: list[dict], case: str) -> dict | None:
    maps = [m for m in find(docs, "ConfigMap") if "keyward.toml" in m.get("data", {})]
    if not report.check(len(maps) == 1, f"{case}: one ConfigMap with keyward.toml"):
        return None
    try:
        return tomllib.loads(maps[0]["data"]["keyward.toml"])
    except tomllib.TOMLDecodeError as error:
        report.fail(f"{case}: keyward.toml is not valid TOML: {error}")
        return None


def check_agent(report: Report, values: dict, docs: list[dict], case: str) -> None:
    sets = find(docs, "StatefulSet")
    if not report.check(len(sets) == 1, f"{case}: one agent StatefulSet"):
        return
    spec = sets[0]["spec"]
    pod = spec["template"]["spec"]
    agent = pod["containers"][0]
    inits = pod.get("initContainers") or []
    literal_secrets(report, pod["containers"] + inits, case)
    report.check(spec.get("replicas") == values.get("replicaCount"), f"{case}: replicas from values ({values.get('replicaCount')})")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates") or []}
    data_dir = next((e.get("value") for e in agent.get("env") or [] if e["name"] == "KEYWARD_AGENT_DATA_DIR"), None)
    on_claim = [m for m in agent.get("volumeMounts") or [] if m["name"] in claims]
    report.check(
        bool(data_dir) and any(data_dir == m["mountPath"] or data_dir.startswith(m["mountPath"].rstrip("/") + "/") for m in on_claim),
        f"{case}: the data dir ({data_dir}) is on a volumeClaimTemplate, not an emptyDir",
    )
    for init in inits:
        security = init.get("securityContext") or {}
        report.check(
            not security.get("privileged") and security.get("allowPrivilegeEscalation") is False and security.get("capabilities", {}).get("drop") == ["ALL"],
            f"{case}: init container {init['name']} runs without privileges or capabilities",
        )
    joins = [c for c in inits if secret_mounts(pod, c) or env_from_secret(c, "KEYWARD_JOIN_TOKEN")]
    report.check(len(joins) == 1, f"{case}: the join token from a Secret, in the join init container")
    report.check(
        not secret_mounts(pod, agent) and not env_from_secret(agent, "KEYWARD_JOIN_TOKEN"),
        f"{case}: the running agent does not get the join token",
    )
    if joins:
        script = " ".join(joins[0].get("command") or []) + " ".join(joins[0].get("args") or [])
        report.check("agent.json" in script, f"{case}: join is skipped once the volume holds an identity (agent.json)")
    pre_stop = ((agent.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command") or []
    report.check(any("TERM" in part for part in pre_stop), f"{case}: a preStop hook that drains (SIGTERM, then waits)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    report.check(grace >= 3600, f"{case}: terminationGracePeriodSeconds {grace} covers the default --phase-timeout (1h)")
    check_agent_security(report, values, agent, case)


def check_agent_security(report: Report, values: dict, agent: dict, case: str) -> None:
    args = agent.get("args") or []
    isolation = args[args.index("--isolation") + 1] if "--isolation" in args else None
    report.check(isolation == values.get("isolation"), f"{case}: --isolation {isolation} as in values")
    security = agent.get("securityContext") or {}
    if isolation == "sandbox":
        report.check(security.get("privileged") is True, f"{case}: sandbox isolation gets the privileged container it needs")
    else:
        report.check(
            security.get("runAsNonRoot") is True
            and security.get("allowPrivilegeEscalation") is False
            and security.get("readOnlyRootFilesystem") is True
            and security.get("capabilities", {}).get("drop") == ["ALL"]
            and not security.get("privileged"),
            f"{case}: process isolation runs unprivileged (non-root, read-only, no capabilities)",
        )


def check_chart(report: Report, chart: str, values_file: Path | None, config_dir: Path | None) -> None:
    case = f"{chart} ({values_file.name if values_file else 'defaults'})"
    chart_dir = ROOT / "deploy" / "helm" / chart
    try:
        values = load_values(values_file)
        lint(report, chart_dir, values, case)
        merged, docs = render(chart_dir, values)
    except (helm.HelmError, OSError, yaml.YAMLError) as error:
        report.fail(f"{case}: cannot render: {error}")
        return
    validate(report, docs, case)
    (check_broker if chart == "keyward" else check_agent)(report, merged, docs, case)
    if config_dir is not None and chart == "keyward":
        write_config(docs, config_dir / f"{values_file.stem if values_file else 'defaults'}.toml")


def write_config(docs: list[dict], path: Path) -> None:
    """Writes the rendered keyward.toml, for `keyward check-config` (tests/tests/e2e/packaging.rs)."""
    for config_map in find(docs, "ConfigMap"):
        if "keyward.toml" in config_map.get("data", {}):
            path.write_text(config_map["data"]["keyward.toml"], encoding="utf-8")


def hadolint(report: Report, directory: Path) -> None:
    files = sorted(directory.glob("Dockerfile.*"))
    if not report.check(bool(files), f"Dockerfiles found in {directory}"):
        return
    program = Path(sys.executable).parent / "hadolint"
    for file in files:
        result = subprocess.run(
            [str(program), "--no-color", "--failure-threshold", "warning", str(file)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode == 0:
            report.ok(f"hadolint {file.name} (no warning or error)")
        else:
            report.fail(f"hadolint {file.name}:\n{result.stdout}{result.stderr}".rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", action="append", default=[], metavar="CHART=FILE", help="check CHART also with this values file")
    parser.add_argument("--dockerfiles", type=Path, default=ROOT / "deploy", help="the directory of Dockerfile.* to lint")
    parser.add_argument("--write-configs", type=Path, metavar="DIR", help="write each broker case's keyward.toml to DIR/<case>.toml")
    args = parser.parse_args()
    cases = {chart: list(files) for chart, files in CASES.items()}
    for item in args.values:
        chart, _, file = item.partition("=")
        if chart not in cases or not file:
            parser.error(f"--values {item}: expected keyward=FILE or keyward-agent=FILE")
        cases[chart].append(Path(file))
    report = Report()
    for chart, files in cases.items():
        for values_file in files:
            check_chart(report, chart, values_file, args.write_configs)
    hadolint(report, args.dockerfiles)
    if report.failures:
        print(f"\npackaging check: {report.failures} problem(s)")
        return 1
    print("\npackaging check: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
