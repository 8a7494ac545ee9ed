//! The alerting rules in deploy/alerts are evaluated by Prometheus's own
//! tool (issue 24): `promtool check rules` accepts them, `promtool test
//! rules` runs their unit tests (deploy/alerts/r2o-rules.test.yaml: every
//! alert fires on the series that should fire it, with the labels and
//! annotations given, and stays quiet on the others), every alert has a
//! test, and every annotation names what to run. The tests can fail: a rule
//! with its threshold moved is caught. (scripts/setup.sh --tests installs promtool,
//! from Debian's `prometheus` package.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn alerts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts")
}

fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool: run scripts/setup.sh --tests first (it installs Debian's prometheus package)")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `alert:` names in a rules file, in order.
fn alerts(rules: &str) -> Vec<String> {
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ").map(|a| a.trim().to_string())).collect()
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    let dir = alerts_dir();
    let out = promtool(&["check", "rules", "r2o-rules.yaml"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let rules = std::fs::read_to_string(dir.join("r2o-rules.yaml")).unwrap();
    let names = alerts(&rules);
    assert!(text(&out).contains(&format!("SUCCESS: {} rules found", names.len())), "{}", text(&out));
    let out = promtool(&["test", "rules", "r2o-rules.test.yaml"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));

    // every alert is tested firing, and each annotation says what to run
    let tests = std::fs::read_to_string(dir.join("r2o-rules.test.yaml")).unwrap();
    for want in [
        "R2OWatermarkLagging",
        "R2OTableStuck",
        "R2OTaskFailed",
        "R2ONoLeader",
        "R2OEtcdAlarm",
        "R2OPoolEmptyWithWorkWaiting",
    ] {
        assert!(names.iter().any(|n| n == want), "the rules have {want}: {names:?}");
    }
    for name in &names {
        let fired = tests.split("alertname: ").skip(1).any(|t| {
            t.starts_with(&format!("{name}\n"))
                && t.split("exp_alerts:").nth(1).is_some_and(|e| !e.trim_start().starts_with("[]"))
        });
        assert!(fired, "no test makes {name} fire");
    }
    let descriptions = rules.lines().filter(|l| l.trim_start().starts_with("description:")).count();
    assert_eq!(descriptions, names.len(), "every alert has a description");
    for l in rules.lines().filter(|l| l.trim_start().starts_with("description:")) {
        assert!(l.contains("r2o ") || l.contains("kubectl "), "a description names what to run: {l}");
    }
}

#[test]
fn a_moved_threshold_fails_the_unit_tests() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["r2o-rules.yaml", "r2o-rules.test.yaml"] {
        std::fs::copy(alerts_dir().join(f), tmp.path().join(f)).unwrap();
    }
    let rules = std::fs::read_to_string(tmp.path().join("r2o-rules.yaml")).unwrap();
    let from = "max by (tag) (r2o_pool_tasks{state=\"waiting\"}) > 0";
    assert!(rules.contains(from));
    std::fs::write(
        tmp.path().join("r2o-rules.yaml"),
        rules.replacen(from, "max by (tag) (r2o_pool_tasks{state=\"waiting\"}) > 5", 1),
    )
    .unwrap();
    let out = promtool(&["test", "rules", "r2o-rules.test.yaml"], tmp.path());
    assert!(!out.status.success(), "a pool alert that no longer fires must fail its test: {}", text(&out));
    assert!(text(&out).contains("R2OPoolEmptyWithWorkWaiting"), "{}", text(&out));
}
