//! deploy/ validates offline: every manifest strictly against the
//! Kubernetes schemas, every file a kustomization names exists, every patch
//! targets a built resource, alert rules are well formed
//! (scripts/validate_deploy.py with the kubernetes-validate package that
//! scripts/setup.sh installs into .venv).

use std::path::Path;
use std::process::Command;

/// The repository root and the venv's Python (with kubernetes-validate).
fn tools() -> (&'static Path, std::path::PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "run scripts/setup.sh first: it installs kubernetes-validate into .venv");
    (root, python)
}

/// A copy of deploy/ under `dir`, to loosen.
fn copy_of_deploy(root: &Path, dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("deploy");
    let status = Command::new("cp").arg("-r").arg(root.join("deploy")).arg(&copy).status().unwrap();
    assert!(status.success());
    copy
}

#[test]
fn deploy_manifests_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "run scripts/setup.sh first: it installs kubernetes-validate into .venv");
    let out = Command::new(python).arg(root.join("scripts/validate_deploy.py")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("manifests valid") && text.contains(", 0 problems"), "{text}");
    let n: usize = text
        .split("deploy: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(n >= 10, "every manifest was checked: {text}");
}

/// A patch file with several documents renders in no kustomize (v5 crashes
/// with a nil pointer): the offline check refuses it, so what it accepts is
/// what kustomize renders.
#[test]
fn deploy_check_refuses_a_multi_document_patch() {
    let (root, python) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_of_deploy(root, tmp.path());
    let overlay = copy.join("overlays/external-etcd");
    let mut joined = String::new();
    for part in ["statefulset", "service", "pdb"] {
        let f = overlay.join(format!("drop-etcd-{part}.yaml"));
        joined.push_str(&std::fs::read_to_string(&f).unwrap());
        joined.push_str("---\n");
        std::fs::remove_file(f).unwrap();
    }
    std::fs::write(overlay.join("drop-etcd.yaml"), joined).unwrap();
    let k = std::fs::read_to_string(overlay.join("kustomization.yaml")).unwrap();
    let k = k
        .replace("  - path: drop-etcd-statefulset.yaml\n", "  - path: drop-etcd.yaml\n")
        .replace("  - path: drop-etcd-service.yaml\n", "")
        .replace("  - path: drop-etcd-pdb.yaml\n", "");
    std::fs::write(overlay.join("kustomization.yaml"), k).unwrap();
    let out = Command::new(python).arg(root.join("scripts/validate_deploy.py")).arg(&copy).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a multi-document patch must be refused: {text}");
    assert!(text.contains("drop-etcd.yaml: holds 3 documents"), "{text}");
}

/// The lockdown rules can fail: a copy of deploy/ loosened in five ways is
/// refused, naming each.
#[test]
fn deploy_check_refuses_a_loosened_deployment() {
    let (root, python) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_of_deploy(root, tmp.path());
    let edit = |file: &str, from: &str, to: &str| {
        let p = copy.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} holds {from}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    };
    edit("base/controller.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false");
    edit("base/minion.yaml", "runAsNonRoot: true", "runAsNonRoot: false");
    edit("base/etcd.yaml", "- --client-cert-auth\n", "");
    edit("base/configmap.yaml", "https://r2o-etcd-0", "http://r2o-etcd-0");
    edit("base/kustomization.yaml", "  - networkpolicy.yaml\n", "  - secret.yaml\n");
    std::fs::write(
        copy.join("base/secret.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: r2o-store-credentials\nstringData:\n  AWS_SECRET_ACCESS_KEY: x\n",
    )
    .unwrap();
    let out = Command::new(python).arg(root.join("scripts/validate_deploy.py")).arg(&copy).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for expected in [
        "container controller: expected readOnlyRootFilesystem: true",
        "Deployment/r2o-minion: expected securityContext.runAsNonRoot: true",
        "container etcd: expected --client-cert-auth",
        "R2O_ETCD endpoint http://r2o-etcd-0.r2o-etcd:2379: expected https://",
        "Secret/r2o-store-credentials: a Secret is committed",
        "Deployment/r2o-controller: no NetworkPolicy selects its pods",
    ] {
        assert!(text.contains(expected), "expected a problem '{expected}':\n{text}");
    }
}

/// The KEDA ScaledObject's structural check can fail: one that scales a
/// Deployment no kustomization builds, with a threshold that is not a
/// number, is refused, naming both.
#[test]
fn deploy_check_refuses_a_scaledobject_of_nothing() {
    let (root, python) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_of_deploy(root, tmp.path());
    let p = copy.join("overlays/keda/minion-scaledobject.yaml");
    let text = std::fs::read_to_string(&p).unwrap();
    let loosened =
        text.replacen("    name: r2o-minion\n  minReplicaCount", "    name: r2o-minions\n  minReplicaCount", 1);
    let loosened = loosened.replacen("threshold: \"2\"", "threshold: two", 1);
    assert_ne!(loosened, text);
    std::fs::write(&p, loosened).unwrap();
    let out = Command::new(python).arg(root.join("scripts/validate_deploy.py")).arg(&copy).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("scaleTargetRef r2o-minions is not a Deployment"), "{text}");
    assert!(text.contains("threshold 'two' is not a number"), "{text}");
}
