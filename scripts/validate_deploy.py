"""Validates deploy/ offline: every manifest strictly against the Kubernetes
schemas shipped by the kubernetes-validate package, every file and directory
a kustomization names exists, every patch targets a resource of its base,
each patch file holds exactly one document (kustomize takes one patch per
entry of `patches:`), the alerting rules are well formed, and the
deployment is locked down (lockdown()): pods run as non-root with the
RuntimeDefault seccomp profile, containers with a read-only root filesystem,
no privilege escalation and every capability dropped, CPU and memory
requests and limits everywhere; a NetworkPolicy selects every workload; no
Secret is committed; every r2o process has TLS files, etcd is reached over
https and serves TLS with client certificates, and nothing runs --insecure.
cert-manager resources and KEDA ScaledObjects (not in the Kubernetes
schemas) get a structural check. Prints one line per problem and a summary; exits non-zero on any
problem."""
import pathlib
import sys

import kubernetes_validate
import yaml

root = (
    pathlib.Path(sys.argv[1]).resolve()
    if len(sys.argv) > 1
    else pathlib.Path(__file__).resolve().parent.parent / "deploy"
)
version = "1.33.0"
problems = []
validated = 0


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def resources_of(kdir, seen=None):
    """(kind, name) of every resource a kustomization builds, following bases."""
    seen = seen or set()
    out = set()
    k = yaml.safe_load(open(kdir / "kustomization.yaml"))
    for r in k.get("resources", []):
        p = (kdir / r).resolve()
        if p.is_dir():
            if p not in seen:
                seen.add(p)
                out |= resources_of(p, seen)
        elif p.exists():
            for d in docs(p):
                out.add((d.get("kind"), d.get("metadata", {}).get("name")))
    return out


def cert_manager(d):
    """Structural check of a cert-manager Issuer or Certificate."""
    kind, spec = d.get("kind"), d.get("spec") or {}
    name = d.get("metadata", {}).get("name")
    if d.get("apiVersion") != "cert-manager.io/v1":
        return [f"{kind}/{name}: apiVersion {d.get('apiVersion')}, expected cert-manager.io/v1"]
    if kind == "Issuer":
        return [] if spec.get("ca", {}).get("secretName") else [f"Issuer/{name}: expected spec.ca.secretName"]
    if kind == "Certificate":
        out = []
        for key in ("secretName", "issuerRef", "dnsNames"):
            if not spec.get(key):
                out.append(f"Certificate/{name}: expected spec.{key}")
        unknown = set(spec) - {"secretName", "issuerRef", "dnsNames", "ipAddresses", "duration", "renewBefore",
                               "privateKey", "usages", "commonName", "subject"}
        if unknown:
            out.append(f"Certificate/{name}: unknown spec keys {sorted(unknown)}")
        return out
    return [f"{kind}/{name}: expected an Issuer or a Certificate"]


def keda(d, built):
    """Structural check of a KEDA ScaledObject: it scales a Deployment the
    kustomization builds, with Prometheus triggers that carry a server, a
    query and a numeric threshold."""
    name = d.get("metadata", {}).get("name")
    if d.get("apiVersion") != "keda.sh/v1alpha1" or d.get("kind") != "ScaledObject":
        return [f"{d.get('kind')}/{name}: expected a keda.sh/v1alpha1 ScaledObject"]
    spec = d.get("spec", {})
    out = []
    target = spec.get("scaleTargetRef", {}).get("name")
    if ("Deployment", target) not in built:
        out.append(f"ScaledObject/{name}: scaleTargetRef {target} is not a Deployment the kustomization builds")
    unknown = set(spec) - {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                           "cooldownPeriod", "idleReplicaCount", "fallback", "advanced", "triggers"}
    if unknown:
        out.append(f"ScaledObject/{name}: unknown spec keys {sorted(unknown)}")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
        out.append(f"ScaledObject/{name}: replica counts {lo}..{hi}, expected 0 <= min <= max")
    triggers = spec.get("triggers") or []
    if not triggers:
        out.append(f"ScaledObject/{name}: expected triggers")
    for t in triggers:
        m = t.get("metadata", {})
        if t.get("type") != "prometheus":
            out.append(f"ScaledObject/{name}: trigger type {t.get('type')}, expected prometheus")
        for key in ("serverAddress", "query", "threshold"):
            if not m.get(key):
                out.append(f"ScaledObject/{name}: trigger {t.get('name')} needs metadata.{key}")
        for key in ("threshold", "activationThreshold"):
            if key in m:
                try:
                    float(m[key])
                except (TypeError, ValueError):
                    out.append(f"ScaledObject/{name}: {key} {m[key]!r} is not a number (KEDA takes it as a string)")
        if t.get("metricType", "AverageValue") not in ("AverageValue", "Value", "Utilization"):
            out.append(f"ScaledObject/{name}: metricType {t.get('metricType')}")
    return out


def all_docs(kdir, seen=None):
    """(file, document) of every resource a kustomization builds, following bases."""
    seen = seen or set()
    k = yaml.safe_load(open(kdir / "kustomization.yaml"))
    out = []
    for r in k.get("resources", []):
        p = (kdir / r).resolve()
        if p.is_dir():
            if p not in seen:
                seen.add(p)
                out += all_docs(p, seen)
        elif p.exists():
            out += [(p, d) for d in docs(p)]
    return out


def lockdown(kdir):
    """The locked-down deployment's rules over what `kdir` builds (before patches)."""
    out = []
    built = all_docs(kdir)
    policies = [d for _, d in built if d.get("kind") == "NetworkPolicy"]
    for p, d in built:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name")
        where = f"{p.relative_to(root)} {kind}/{name}"
        if kind == "Secret":
            out.append(f"{where}: a Secret is committed (create it at install time: deploy/README.md)")
        if kind == "ConfigMap":
            data = d.get("data") or {}
            for e in str(data.get("R2O_ETCD", "https://")).split(","):
                if not e.strip().startswith("https://"):
                    out.append(f"{where}: R2O_ETCD endpoint {e}: expected https://")
            if "R2O_INSECURE" in data:
                out.append(f"{where}: R2O_INSECURE is set")
        if kind not in ("Deployment", "StatefulSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            out.append(f"{where}: expected securityContext.runAsNonRoot: true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            out.append(f"{where}: expected securityContext.seccompProfile.type: RuntimeDefault")
        if not any(labels.items() >= (pol["spec"].get("podSelector", {}).get("matchLabels") or {}).items()
                   for pol in policies):
            out.append(f"{where}: no NetworkPolicy selects its pods")
        for c in pod.get("containers", []):
            cw = f"{where} container {c.get('name')}"
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{cw}: expected readOnlyRootFilesystem: true")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{cw}: expected allowPrivilegeEscalation: false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                out.append(f"{cw}: expected capabilities.drop: [ALL]")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        out.append(f"{cw}: expected resources.{part}.{r}")
            args = [str(a) for a in (c.get("args") or []) + (c.get("command") or [])]
            env = {e.get("name"): e.get("value") for e in c.get("env") or []}
            if "--insecure" in args or "R2O_INSECURE" in env:
                out.append(f"{cw}: runs --insecure")
            if c.get("image", "").startswith("r2o"):
                for v in ("R2O_TLS_CA", "R2O_TLS_CERT", "R2O_TLS_KEY"):
                    if not env.get(v):
                        out.append(f"{cw}: expected {v}")
            if "etcd" in c.get("image", ""):
                for flag in ("--client-cert-auth", "--peer-client-cert-auth"):
                    if flag not in args:
                        out.append(f"{cw}: expected {flag}")
                if any(a.startswith("--listen-client-urls=http://") for a in args):
                    out.append(f"{cw}: etcd serves clients in plain text")
    return out


for kfile in sorted(root.rglob("kustomization.yaml")):
    kdir = kfile.parent
    k = yaml.safe_load(open(kfile))
    built = resources_of(kdir)
    for r in k.get("resources", []):
        p = (kdir / r).resolve()
        if p.is_dir():
            if not (p / "kustomization.yaml").exists():
                problems.append(f"{kfile}: resource {r} is a directory without kustomization.yaml")
        elif not p.exists():
            problems.append(f"{kfile}: resource {r} does not exist")
        else:
            for i, d in enumerate(docs(p)):
                if str(d.get("apiVersion", "")).startswith("cert-manager.io/"):
                    problems.extend(f"{p.relative_to(root)}[{i}] {m}" for m in cert_manager(d))
                    validated += 1
                    continue
                if str(d.get("apiVersion", "")).startswith("keda.sh/"):
                    problems.extend(f"{p.relative_to(root)}[{i}] {m}" for m in keda(d, built))
                    validated += 1
                    continue
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                    validated += 1
                except Exception as e:  # the package raises several error types
                    problems.append(f"{p.relative_to(root)}[{i}] {d.get('kind')}/{d.get('metadata', {}).get('name')}: {e}")
    for patch in k.get("patches", []):
        p = kdir / patch["path"]
        if not p.exists():
            problems.append(f"{kfile}: patch {patch['path']} does not exist")
            continue
        patch_docs = docs(p)
        if len(patch_docs) != 1:
            # kustomize takes one patch per entry of patches: (v5 crashes on more)
            problems.append(f"{p.relative_to(root)}: holds {len(patch_docs)} documents; a patch file holds exactly one")
        for d in patch_docs:
            target = (d.get("kind"), d.get("metadata", {}).get("name"))
            if target not in built:
                problems.append(f"{p.relative_to(root)}: patches {target[0]}/{target[1]}, which the kustomization does not build")

for kfile in sorted(root.rglob("kustomization.yaml")):
    problems.extend(lockdown(kfile.parent))

for rules in sorted((root / "alerts").glob("*.yaml")):
    for g in yaml.safe_load(open(rules)).get("groups", []):
        for r in g.get("rules", []):
            if not r.get("alert") or not r.get("expr"):
                problems.append(f"{rules.relative_to(root)}: rule {r} needs alert and expr")

for p in problems:
    print("deploy:", p)
print(f"deploy: {validated} manifests valid against Kubernetes {version} (strict), {len(problems)} problems")
sys.exit(1 if problems else 0)
