"""Validates rendered Kubernetes manifests offline; run by scripts/k8s-check.

Usage: k8s-validate.py KUBERNETES_VERSION RENDERED.yaml...

Each resource is checked against the schemas bundled in kubernetes-validate (strict: unknown
fields are errors), and a kind or apiVersion with no schema in that Kubernetes version is an
error too (the tool's CLI only warns). Then the rules this deployment relies on:

- every container has resource requests (cpu, memory), a readiness and a liveness probe, and
  runs non-root without privilege escalation; redcell's own containers probe /readyz and
  /healthz over HTTP;
- every Secret and ConfigMap a pod refers to is in the same rendered output (kustomize leaves
  a dangling reference alone);
- exactly one raft-meta StatefulSet in all outputs together, with a PodDisruptionBudget of
  minAvailable 2: two would be two independent maps.
"""

import sys

import kubernetes_validate
import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def image_name(image):
    """`registry:5000/team/redcell:1.2@sha256:…` -> `redcell`."""
    return image.split("@")[0].split("/")[-1].split(":")[0]


def container_errors(name, pod_spec, c):
    errors = []
    where = f"{name} container {c['name']}"
    requests = c.get("resources", {}).get("requests", {})
    for r in ("cpu", "memory"):
        if r not in requests:
            errors.append(f"{where}: no {r} request")
    for probe in ("readinessProbe", "livenessProbe"):
        if probe not in c:
            errors.append(f"{where}: no {probe}")
    pod_sc = pod_spec.get("securityContext", {})
    sc = c.get("securityContext", {})
    if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
        errors.append(f"{where}: runAsNonRoot is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{where}: allowPrivilegeEscalation is not false")
    if image_name(c.get("image", "")) == "redcell":
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            got = c.get(probe, {}).get("httpGet", {}).get("path")
            if got != path:
                errors.append(f"{where}: {probe} must GET {path}, not {got!r}")
    return errors


def referenced(pod_spec, kind):
    """Names of Secrets (kind "secret") or ConfigMaps ("configMap") the pod refers to."""
    names = set()
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get(f"{kind}KeyRef")
            if ref:
                names.add(ref["name"])
        for src in c.get("envFrom", []):
            ref = src.get(f"{kind}Ref")
            if ref:
                names.add(ref["name"])
    for v in pod_spec.get("volumes", []):
        ref = v.get(kind)
        if ref:
            names.add(ref.get("secretName") or ref.get("name"))
    return names


def check_file(path, version):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    errors = []
    for d in docs:
        kn = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            field = ".".join(str(p) for p in e.path)
            errors.append(f"{kn}: {field}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{kn}: {e.message}")
    have = {
        "secret": {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"},
        "configMap": {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"},
    }
    for d in docs:
        if d["kind"] not in WORKLOADS:
            continue
        name = f"{d['kind']}/{d['metadata']['name']}"
        pod_spec = d["spec"]["template"]["spec"]
        for c in pod_spec.get("containers", []):
            errors += container_errors(name, pod_spec, c)
        for kind in ("secret", "configMap"):
            for missing in sorted(referenced(pod_spec, kind) - have[kind]):
                errors.append(f"{name}: refers to {kind} {missing!r}, not in this output")
    return docs, errors


def main():
    version, paths = sys.argv[1], sys.argv[2:]
    failed = False
    raft_meta, pdbs = [], []
    for path in paths:
        docs, errors = check_file(path, version)
        for e in errors:
            print(f"ERROR {path}: {e}")
        failed |= bool(errors) or not docs
        if not docs:
            print(f"ERROR {path}: no resources")
        raft_meta += [path for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "raft-meta"]
        pdbs += [d for d in docs if d["kind"] == "PodDisruptionBudget"
                 and d["spec"].get("selector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "raft-meta"]
        kinds = {}
        for d in docs:
            kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        print(f"{'FAIL' if errors else 'ok  '} {path}: {len(docs)} resources ({summary})")
    if len(raft_meta) != 1:
        print(f"ERROR raft-meta StatefulSet rendered {len(raft_meta)} times ({raft_meta}); want exactly 1")
        failed = True
    if [p["spec"].get("minAvailable") for p in pdbs] != [2]:
        print("ERROR want exactly one PodDisruptionBudget for raft-meta, with minAvailable 2")
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
