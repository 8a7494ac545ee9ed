//! deploy/ validates offline: every manifest strictly against the
//! Kubernetes schemas, every file a kustomization names exists, every patch
//! targets a built resource, alert rules are well formed
//! (scripts/validate_deploy.py with the kubernetes-validate package that
//! scripts/setup.sh installs into .venv).

use std::path::Path;
use std::process::Command;

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
