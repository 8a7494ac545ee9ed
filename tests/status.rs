//! The controller's status page (issue 24), loaded by a real browser:
//! headless Chromium (Debian's `chromium`, installed by scripts/setup.sh --tests)
//! opens `https://<controller>/status` of a running cluster with a reader
//! token as its Basic password. It shows a table caught up, one paused and
//! one failing, each with the watermark `r2o watermark` gives, the failing
//! task and its error as `r2o tasks` gives them, the minion pool, and a
//! table's history page. Without credentials, or with a token r2o does not
//! know, the page is refused. `r2o report` links a table's page. A
//! screenshot is left in `target/status-page.png`.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{hourly_rows, hourly_table, metric_schema, Cluster, H_MS, T0_MS};

/// Chromium, headless, with what it needs on a closed machine: no sandbox
/// (root), no GPU, no background networking, a fresh profile; the test CA
/// is not in its trust store, hence `--ignore-certificate-errors`.
fn chromium(profile: &Path, args: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium: run scripts/setup.sh --tests first (it installs Debian's chromium)");
    assert!(out.status.success(), "chromium {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attribute `name` of the first element whose opening tag contains `marker`.
fn attr(dom: &str, marker: &str, name: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let key = format!("{name}=\"");
    let v = &tag[tag.find(&key)? + key.len()..];
    Some(v[..v.find('"')?].to_string())
}

/// The text of the table row `<tr ... marker ...>`.
fn row<'a>(dom: &'a str, marker: &str) -> &'a str {
    let at = dom.find(marker).unwrap_or_else(|| panic!("no row {marker} in the page:\n{dom}"));
    &dom[at..at + dom[at..].find("</tr>").unwrap()]
}

/// GET `https://127.0.0.1:<port><path>` with Python's urllib (the test CA
/// is not checked), optionally with an `Authorization` header: (status,
/// headers, body).
fn https_get(port: u16, path: &str, authorization: Option<&str>) -> (u16, String, String) {
    let script = r#"
import ssl, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    req.add_header("Authorization", sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    r = urllib.request.urlopen(req, context=ctx, timeout=10)
    status, headers, body = r.status, r.headers, r.read()
except urllib.error.HTTPError as e:
    status, headers, body = e.code, e.headers, e.read()
sys.stdout.write(f"{status}\n{headers}\n\n")
sys.stdout.write(body.decode())
"#;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(script).arg(format!("https://127.0.0.1:{port}{path}"));
    if let Some(a) = authorization {
        cmd.arg(a);
    }
    let out = cmd.output().expect("run scripts/setup.sh first: it makes .venv");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, rest) = text.split_once('\n').unwrap();
    let (headers, body) = rest.split_once("\n\n\n").unwrap_or((rest, ""));
    (status.trim().parse().unwrap(), headers.to_string(), body.to_string())
}

fn cli_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    serde_json::from_str(&cluster.cli(&a)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_the_cli_shows() {
    let cluster = Cluster::start(1, 1);
    // ok: caught up; pa: paused; bad: its only window fails (one attempt)
    for (t, extra) in [("ok", json!({})), ("pa", json!({})), ("bad", json!({"maxAttemptsPerTask": "1"}))] {
        cluster.add_table(t, &hourly_table(t, extra), &metric_schema());
    }
    cluster.cli(&["pause", "--table", "bad"]);
    for t in ["ok", "bad"] {
        let f = cluster.parquet_file(&format!("{t}.parquet"), &hourly_rows(2, 10));
        cluster.cli(&[
            "ingest",
            "--table",
            t,
            "--file",
            f.to_str().unwrap(),
            "--rows-per-segment",
            "10",
            "--seal-last",
        ]);
    }
    let first = cluster.segments("bad").await.into_iter().map(|s| s.name).min().unwrap();
    std::fs::write(cluster.segment_file("bad", &first).await, b"PAR1 this is not parquet PAR1").unwrap();
    cluster.cli(&["resume", "--table", "bad"]);
    cluster.cli(&["pause", "--table", "pa"]);
    let w = cluster.wait_idle("ok", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 2 * H_MS, "{}", w.next);
    let start = Instant::now();
    let failed = loop {
        let tasks = cli_json(&cluster, &["tasks", "--table", "bad"]);
        if let Some(t) = tasks.as_array().unwrap().iter().find(|t| t["state"] == "FAILED") {
            break t.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "bad never failed: {tasks}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // a reader token, as a table owner would be given
    let token = cluster.cli(&["token", "create", "--name", "owner-phone", "--role", "reader"]).trim().to_string();
    let port = cluster.controllers[0].port;
    let profile = tempfile::tempdir().unwrap();
    let url = |creds: &str, path: &str| format!("https://{creds}127.0.0.1:{port}{path}");

    // refused without credentials (a browser is asked for them), and with a
    // token r2o does not know; a bearer token works as well as Basic
    let (status, headers, body) = https_get(port, "/status", None);
    assert_eq!(status, 401, "{body}");
    assert!(headers.to_lowercase().contains("www-authenticate: basic realm=\"r2o\""), "{headers}");
    let bogus = format!("r2o_000000000000_{}", "0".repeat(64));
    let (status, _, body) = https_get(port, "/status", Some(&format!("Bearer {bogus}")));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unknown or revoked") && !body.contains("data-table="), "{body}");
    let (status, _, body) = https_get(port, "/status", Some(&format!("Bearer {token}")));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data-table=\"ok\""), "{body}");

    // the overview, as the reader sees it
    let dom = chromium(profile.path(), &["--dump-dom", &url(&format!("owner:{token}@"), "/status")]);
    for (t, state) in [("ok", "caught up"), ("pa", "paused"), ("bad", "failing")] {
        let marker = format!("data-table=\"{t}\" data-state=");
        assert_eq!(attr(&dom, &marker, "data-state").as_deref(), Some(state), "{t}: {}", row(&dom, &marker));
        let w = cli_json(&cluster, &["watermark", "--table", t]);
        let shown = attr(row(&dom, &marker), "class=\"watermark\"", "data-ms").unwrap();
        match w["watermarkMs"].as_i64().filter(|_| w["exists"] == true) {
            Some(ms) => assert_eq!(shown, ms.to_string(), "{t}'s watermark as r2o watermark gives it: {w}"),
            None => assert_eq!(shown, "", "{t} has no watermark yet: {w}"),
        }
    }
    assert!(row(&dom, "data-table=\"bad\" data-state=").contains("1 FAILED"), "{dom}");
    // the failure, as r2o tasks gives it
    let task_id = failed["id"].as_str().unwrap();
    let failure = row(&dom, &format!("data-task=\"{task_id}\""));
    assert!(failure.contains(&first), "the error names the corrupt segment: {failure}");
    // the pool: the cluster's one minion, its 2 slots
    let pool = row(&dom, "data-tag=\"minion_untagged\"");
    assert_eq!(attr(&dom, "data-tag=\"minion_untagged\"", "data-minions").as_deref(), Some("1"), "{pool}");
    assert_eq!(attr(&dom, "data-tag=\"minion_untagged\"", "data-slots").as_deref(), Some("2"), "{pool}");
    assert!(dom.contains(&format!("data-minion=\"{}\"", cluster.minions[0].name)), "{dom}");
    assert!(!dom.contains("<script"), "no JavaScript");

    // a table's history page, as `r2o report` links it
    let report = cli_json(&cluster, &["report", "--table", "bad"]);
    assert_eq!(report["statusPage"], json!(url("", "/status/tables/bad")), "{report}");
    let linked = report["statusPage"].as_str().unwrap().replacen("https://", &format!("https://owner:{token}@"), 1);
    let dom = chromium(profile.path(), &["--dump-dom", &linked]);
    assert_eq!(attr(&dom, "id=\"table\"", "data-state").as_deref(), Some("failing"), "{dom}");
    assert_eq!(attr(&dom, &format!("data-task=\"{task_id}\""), "data-state").as_deref(), Some("FAILED"), "{dom}");
    let tasks = cli_json(&cluster, &["tasks", "--table", "ok"]);
    let dom_ok = chromium(profile.path(), &["--dump-dom", &url(&format!("owner:{token}@"), "/status/tables/ok")]);
    for t in tasks.as_array().unwrap() {
        let id = t["id"].as_str().unwrap();
        assert_eq!(
            attr(&dom_ok, &format!("data-task=\"{id}\""), "data-state").as_deref(),
            t["state"].as_str(),
            "{dom_ok}"
        );
    }

    // a screenshot at a phone's width, for the README
    let shot: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,900",
            &url(&format!("owner:{token}@"), "/status"),
        ],
    );
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "a screenshot was taken");
}
