"""Validates deploy/ offline: every manifest strictly against the Kubernetes
schemas shipped by the kubernetes-validate package, every file and directory
a kustomization names exists, every patch targets a resource of its base,
each patch file holds exactly one document (kustomize takes one patch per
entry of `patches:`), and the alerting rules are well formed. Prints one line per problem and a
summary; exits non-zero on any problem."""
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


for kfile in sorted(root.rglob("kustomization.yaml")):
    kdir = kfile.parent
    k = yaml.safe_load(open(kfile))
    for r in k.get("resources", []):
        p = (kdir / r).resolve()
        if p.is_dir():
            if not (p / "kustomization.yaml").exists():
                problems.append(f"{kfile}: resource {r} is a directory without kustomization.yaml")
        elif not p.exists():
            problems.append(f"{kfile}: resource {r} does not exist")
        else:
            for i, d in enumerate(docs(p)):
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                    validated += 1
                except Exception as e:  # the package raises several error types
                    problems.append(f"{p.relative_to(root)}[{i}] {d.get('kind')}/{d.get('metadata', {}).get('name')}: {e}")
    built = resources_of(kdir)
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

for rules in sorted((root / "alerts").glob("*.yaml")):
    for g in yaml.safe_load(open(rules)).get("groups", []):
        for r in g.get("rules", []):
            if not r.get("alert") or not r.get("expr"):
                problems.append(f"{rules.relative_to(root)}: rule {r} needs alert and expr")

for p in problems:
    print("deploy:", p)
print(f"deploy: {validated} manifests valid against Kubernetes {version} (strict), {len(problems)} problems")
sys.exit(1 if problems else 0)
