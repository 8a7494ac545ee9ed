//! The security suite (issue 20): attacks against a real cluster (etcd over
//! TLS with client certificates, a controller and a minion with TLS and
//! roles on), each a case that fails if its protection is missing. It
//! prints `security: attacks N, refused N, data changed 0`: every attack
//! must be refused, and the tables, segments and watermarks read before
//! the attacks must read the same after them.

mod support;

use r2o_proto::controller as pb;
use r2o_proto::controller::controller_service_client::ControllerServiceClient;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{hourly_rows, hourly_table, metric_schema, Cluster};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds `authorization: Bearer <token>` when there is a token.
#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

type Client = ControllerServiceClient<InterceptedService<Channel, Bearer>>;

/// How an attacker connects: which CA it trusts, which certificate it
/// presents (a file stem under `dir`), which token it sends.
struct As<'a> {
    dir: &'a Path,
    cert: Option<&'a str>,
    token: Option<String>,
}

async fn connect(port: u16, a: As<'_>) -> Result<Client, String> {
    let files = a.cert.map(|c| (a.dir.join(format!("{c}.pem")), a.dir.join(format!("{c}.key"))));
    let tls = r2o_common::tls::client_config(&a.dir.join("ca.pem"), files.as_ref().map(|(c, k)| (c, k))).unwrap();
    let ep = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let ch = ep.connect().await.map_err(|e| format!("{e:?}"))?;
    Ok(ControllerServiceClient::with_interceptor(ch, Bearer(a.token)))
}

/// The attacks' tally.
#[derive(Default)]
struct Tally {
    attacks: usize,
    refused: usize,
    failures: Vec<String>,
}

impl Tally {
    /// Records an attack whose outcome is `refused` (with what was seen).
    fn attack(&mut self, what: &str, refused: bool, seen: String) {
        self.attacks += 1;
        if refused {
            self.refused += 1;
            eprintln!("security: refused: {what}: {seen}");
        } else {
            self.failures.push(format!("{what}: NOT refused: {seen}"));
        }
    }

    /// A gRPC call that must fail with `code`.
    fn expect<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        r: Result<tonic::Response<T>, tonic::Status>,
        code: tonic::Code,
    ) {
        match r {
            Err(s) if s.code() == code => self.attack(what, true, s.message().to_string()),
            Err(s) => self.attack(what, false, format!("{:?} {}", s.code(), s.message())),
            Ok(v) => self.attack(what, false, format!("answered {:?}", v.into_inner())),
        }
    }
}

/// Everything an attack could change, read as the admin.
async fn snapshot(c: &Cluster) -> String {
    let mut admin = c.client().await;
    let tables = admin.list_tables(pb::ListTablesRequest {}).await.unwrap().into_inner();
    let mut out = format!("{tables:?}\n");
    for raw in &tables.tables {
        let mut segs = c.segments(raw).await;
        segs.sort_by(|a, b| a.name.cmp(&b.name));
        let w = admin.get_watermark(pb::GetWatermarkRequest { table: raw.clone() }).await.unwrap().into_inner();
        let t = admin.get_table(pb::GetTableRequest { table: raw.clone() }).await.unwrap().into_inner();
        out.push_str(&format!("{raw}: {segs:?} watermark {} table {t:?}\n", w.watermark_ms));
    }
    out
}

/// `table add` of `cfg` with the metric schema.
fn add_request(cfg: &serde_json::Value) -> pb::AddTableRequest {
    pb::AddTableRequest { table_config_json: cfg.to_string(), schema_json: metric_schema().to_string(), paused: false }
}

/// A sparse file of `size` bytes ending in a Parquet tail that declares a
/// footer of `footer_len` bytes.
fn lying_parquet(path: &Path, size: u64, footer_len: u32) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(b"PAR1").unwrap();
    f.seek(SeekFrom::Start(size - 8)).unwrap();
    f.write_all(&footer_len.to_le_bytes()).unwrap();
    f.write_all(b"PAR1").unwrap();
}

/// A DONE segment of `raw` as a registration states it: (rows, start, end).
fn segment(raw: &str, name: &str, location: &str, size: u64, claim: (u64, i64, i64)) -> pb::Segment {
    pb::Segment {
        name: name.into(),
        table: format!("{raw}_REALTIME"),
        status: "DONE".into(),
        start_time_ms: claim.1,
        end_time_ms: claim.2,
        num_rows: claim.0,
        size_bytes: size,
        location: location.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_refused_and_change_nothing() {
    let c = Cluster::start(1, 1);
    let tls: PathBuf = c.tls.clone().expect("the suite runs with TLS");
    let port = c.controllers[0].port;
    let mut t = Tally::default();

    // a table with data, moved, to attack
    c.add_table("sec", &hourly_table("sec", json!({})), &metric_schema());
    let f = c.parquet_file("sec-0.parquet", &hourly_rows(3, 10));
    c.cli(&["segment", "add", "--table", "sec", "--file", f.to_str().unwrap(), "--name", "sec__0__0"]);
    c.wait_idle("sec", Duration::from_secs(60)).await;
    // a reader and an operator token, made by the admin (certificate)
    let token =
        |role: &str| c.cli(&["token", "create", "--name", &format!("{role}-1"), "--role", role]).trim().to_string();
    let (reader, operator) = (token("reader"), token("operator"));
    let revoked = token("admin");
    let revoked_id = revoked.split('_').nth(1).unwrap().to_string();
    c.cli(&["token", "revoke", "--id", &revoked_id]);
    // another CA and an expired certificate of the right CA
    let other = c.dir.path().join("other-ca");
    assert!(std::process::Command::new(support::r2o_bin())
        .args(["certs", "init", "--dir"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    c.cli(&[
        "certs",
        "issue",
        "--dir",
        tls.to_str().unwrap(),
        "--name",
        "expired",
        "--hosts",
        "r2o-admin",
        "--from-days",
        "-30",
        "--until-days",
        "-1",
    ]);
    let before = snapshot(&c).await;

    // --- transport: who may connect at all
    let who = |r: Result<Client, String>| r;
    match who(connect(port, As { dir: &tls, cert: None, token: None }).await) {
        Ok(mut cl) => {
            let r = cl.list_tables(pb::ListTablesRequest {}).await;
            t.expect("no client certificate and no token", r, tonic::Code::Unauthenticated);
        }
        Err(e) => t.attack("no client certificate and no token", true, e),
    }
    // a certificate from another CA: the handshake fails
    let other_ca = As { dir: &other, cert: Some("admin"), token: None };
    let r = match connect(port, other_ca).await {
        Ok(mut cl) => cl.list_tables(pb::ListTablesRequest {}).await.map_err(|s| s.to_string()).map(|_| ()),
        Err(e) => Err(e),
    };
    t.attack("a certificate from another CA", r.is_err(), format!("{r:?}"));
    // an expired certificate of the right CA: the handshake fails
    let r = match connect(port, As { dir: &tls, cert: Some("expired"), token: None }).await {
        Ok(mut cl) => cl
            .delete_table(pb::DeleteTableRequest { table: "sec".into(), purge: true, dry_run: false })
            .await
            .map_err(|s| s.to_string())
            .map(|_| ()),
        Err(e) => Err(e),
    };
    t.attack("an expired certificate", r.is_err(), format!("{r:?}"));
    // plain text against the TLS port
    let plain = async {
        let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        ControllerServiceClient::new(ch).list_tables(pb::ListTablesRequest {}).await.map_err(|s| s.to_string())
    };
    let r = plain.await;
    t.attack("plain text against the TLS port", r.is_err(), format!("{:?}", r.map(|_| ())));

    // --- roles
    let mut minion = connect(port, As { dir: &tls, cert: Some("minion"), token: None }).await.unwrap();
    let r = minion.delete_table(pb::DeleteTableRequest { table: "sec".into(), purge: true, dry_run: false }).await;
    t.expect("a minion purges a table", r, tonic::Code::PermissionDenied);
    let r = minion.add_table(pb::AddTableRequest::default()).await;
    t.expect("a minion adds a table", r, tonic::Code::PermissionDenied);
    let r = minion.list_segments(pb::ListSegmentsRequest { table: "sec".into(), ..Default::default() }).await;
    t.expect("a minion reads a table's segments", r, tonic::Code::PermissionDenied);
    let mut rd = connect(port, As { dir: &tls, cert: None, token: Some(reader.clone()) }).await.unwrap();
    rd.list_tables(pb::ListTablesRequest {}).await.expect("a reader reads");
    let r = rd.pause_table(pb::TableRequest { table: "sec".into() }).await;
    t.expect("a reader pauses", r, tonic::Code::PermissionDenied);
    let r = rd.delete_table(pb::DeleteTableRequest { table: "sec".into(), purge: true, dry_run: false }).await;
    t.expect("a reader purges", r, tonic::Code::PermissionDenied);
    let r = rd.fail_task(pb::FailTaskRequest { task_id: "sec/1/1".into(), attempt: 1, ..Default::default() }).await;
    t.expect("a reader fails a task", r, tonic::Code::PermissionDenied);
    let r = rd.create_token(pb::CreateTokenRequest { name: "me".into(), role: "admin".into() }).await;
    t.expect("a reader makes itself an admin token", r, tonic::Code::PermissionDenied);
    let mut op = connect(port, As { dir: &tls, cert: None, token: Some(operator.clone()) }).await.unwrap();
    let r = op.reset_table(pb::ResetTableRequest { table: "sec".into(), mode: "FLUSH".into(), dry_run: false }).await;
    t.expect("an operator flushes a table", r, tonic::Code::PermissionDenied);
    let r = op.delete_table(pb::DeleteTableRequest { table: "sec".into(), purge: true, dry_run: true }).await;
    t.expect("an operator deletes a table", r, tonic::Code::PermissionDenied);
    let mut gone = connect(port, As { dir: &tls, cert: None, token: Some(revoked.clone()) }).await.unwrap();
    let r = gone.list_tables(pb::ListTablesRequest {}).await;
    t.expect("a revoked token", r, tonic::Code::Unauthenticated);
    // the reader's token with its last character changed (to another one:
    // a token that already ended in '0' was "forged" into itself)
    let last = if reader.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &reader[..reader.len() - 1]);
    assert_ne!(forged, reader);
    let mut forged = connect(port, As { dir: &tls, cert: None, token: Some(forged) }).await.unwrap();
    let r = forged.list_tables(pb::ListTablesRequest {}).await;
    t.expect("a forged token (a known id, another secret)", r, tonic::Code::Unauthenticated);
    // the CLI says a refusal in one line, with the role needed
    let out = c.cli_as(None, &[("R2O_TOKEN", reader.as_str())], &["pause", "--table", "sec"]);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    t.attack(
        "a reader pauses through the CLI",
        !out.status.success() && err.lines().count() == 1 && err.contains("PauseTable needs role operator"),
        err,
    );

    // --- registrations that lie
    let mut admin = c.client().await;
    let cr = &c;
    let loc = |name: &'static str| async move {
        cr.client()
            .await
            .prepare_segment_upload(pb::PrepareSegmentUploadRequest { table: "sec".into(), segment: name.into() })
            .await
            .unwrap()
            .into_inner()
            .location
    };
    let existing = c.segments("sec").await.into_iter().find(|s| s.name == "sec__0__0").unwrap();
    let fingerprint = existing.schema_fingerprint.clone();
    let mut seg = segment(
        "sec",
        "sec__0__1",
        &existing.location,
        existing.size_bytes,
        (existing.num_rows, existing.start_time_ms, existing.end_time_ms),
    );
    seg.schema_fingerprint = fingerprint.clone();
    let r = admin.add_segments(pb::AddSegmentsRequest { segments: vec![seg] }).await;
    t.expect("a registration naming another segment's object", r, tonic::Code::InvalidArgument);
    // an honest upload, registered with a lie about its rows
    let l = loc("sec__0__2").await;
    let f = c.parquet_file("sec-2.parquet", &hourly_rows(1, 7));
    let path = c.store_path(&l);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(&f, &path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let (s0, e0) = (support::T0_MS, support::T0_MS + 6 * (support::H_MS / 7));
    let mut seg = segment("sec", "sec__0__2", &l, size, (7_000, s0, e0));
    seg.schema_fingerprint = fingerprint.clone();
    let r = admin.add_segments(pb::AddSegmentsRequest { segments: vec![seg.clone()] }).await;
    t.expect("a registration lying about its rows", r, tonic::Code::InvalidArgument);
    seg.num_rows = 7;
    seg.end_time_ms = e0 + 86_400_000;
    let r = admin.add_segments(pb::AddSegmentsRequest { segments: vec![seg] }).await;
    t.expect("a registration lying about its time range", r, tonic::Code::InvalidArgument);
    // a file whose footer claims 4 GiB (sparse: 4 GiB + 1 KiB on disk in name only)
    let l = loc("sec__0__3").await;
    let path = c.store_path(&l);
    let big = (4u64 << 30) + 1024;
    lying_parquet(&path, big, u32::MAX - 16);
    let mut seg = segment("sec", "sec__0__3", &l, big, (1, s0, s0));
    seg.schema_fingerprint = fingerprint.clone();
    let r = admin.add_segments(pb::AddSegmentsRequest { segments: vec![seg] }).await;
    let footer_limit = matches!(&r, Err(s) if s.message().contains("footer length"));
    t.expect("a Parquet file with a lying 4 GiB footer length", r, tonic::Code::InvalidArgument);
    assert!(footer_limit, "refused for its footer length");
    let _ = std::fs::remove_file(&path);

    // --- sources only where the operator allows
    let allowed = c.dir.path().join("landing");
    for (what, uri) in [
        ("an inputDirURI outside the allow-list", "file:///etc".to_string()),
        ("'..' out of the allowed directory", format!("file://{}/../../etc", allowed.display())),
        ("'//' into the install's namespace", format!("file://{}//store", c.dir.path().display())),
        ("'//' out of the allow-list", "file:////etc//".to_string()),
        ("percent-encoded '..'", format!("file://{}/%2e%2e/%2e%2e/etc", allowed.display())),
        ("percent-encoded '/'", format!("file://{}%2F..%2F..%2Fetc", allowed.display())),
    ] {
        let mut cfg = hourly_table("src", json!({}));
        cfg["ingestionConfig"] = json!({"batchIngestionConfig": {"batchConfigMaps": [{"inputDirURI": uri}]}});
        let r = admin.add_table(add_request(&cfg)).await;
        let named = matches!(&r, Err(s) if s.message().contains("inputDirURI"));
        t.expect(what, r, tonic::Code::InvalidArgument);
        assert!(named, "{what}: the refusal names inputDirURI");
    }

    // --- bounded input
    let mut cfg = hourly_table("deep", json!({}));
    let deep = format!("{}column(m) = numeric(1){}", "(".repeat(100_000), ")".repeat(100_000));
    cfg["task"]["taskTypeConfigsMap"]["RealtimeToOfflineSegmentsTask"]["offloadPredicate"] = json!(deep);
    let r = admin.add_table(add_request(&cfg)).await;
    let limit = matches!(&r, Err(s) if s.message().contains("expected at most"));
    t.expect("a predicate nested 100,000 deep", r, tonic::Code::InvalidArgument);
    assert!(limit, "the refusal names the limit");
    let mut cfg = hourly_table("huge", json!({}));
    cfg["padding"] = json!("x".repeat(300 * 1024));
    let r = admin.add_table(add_request(&cfg)).await;
    t.expect("an oversized table config", r, tonic::Code::InvalidArgument);

    // the controller is still up, and nothing changed
    let after = snapshot(&c).await;
    let changed = usize::from(before != after);
    if changed > 0 {
        eprintln!("before:\n{before}\nafter:\n{after}");
    }
    // every admin and operator action is in the audit log, with who did it
    let audit = c.cli(&["audit", "--output", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let by = |call: &str, who: &str| {
        entries.iter().any(|e| e["call"] == call && e["who"].as_str().unwrap_or("").contains(who))
    };
    assert!(by("AddTable", "cert:r2o-admin"), "{audit}");
    assert!(by("CreateToken", "cert:r2o-admin") && by("RevokeToken", "cert:r2o-admin"), "{audit}");
    assert!(!by("PauseTable", "reader-1"), "a refused call did nothing to record: {audit}");
    println!("security: attacks {}, refused {}, data changed {changed}", t.attacks, t.refused);
    assert!(t.failures.is_empty(), "attacks not refused:\n{}", t.failures.join("\n"));
    assert_eq!(changed, 0, "an attack changed the tables");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let c = Cluster::start(1, 0);
    let tls = c.tls.clone().unwrap();
    let port = c.controllers[0].port;
    let ok = || async {
        connect(port, As { dir: &tls, cert: Some("admin"), token: None })
            .await?
            .list_tables(pb::ListTablesRequest {})
            .await
            .map_err(|s| s.to_string())
    };
    ok().await.expect("the first certificate is served");
    // rotate to an expired certificate: new connections refuse it once the
    // controller has looked at its files again (every 10 s)
    let reissue = |validity: &[&str]| {
        let dir = tls.to_str().unwrap();
        let mut args = vec!["certs", "issue", "--dir", dir, "--name", "controller", "--hosts", "localhost,127.0.0.1"];
        args.extend_from_slice(validity);
        c.cli(&args);
    };
    reissue(&["--from-days", "-30", "--until-days", "-1"]);
    let start = Instant::now();
    loop {
        if ok().await.is_err() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "the rotated (expired) certificate was never served");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // and back to a valid one
    reissue(&[]);
    let start = Instant::now();
    while ok().await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(40), "the valid certificate was never served again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn insecure_is_explicit_and_plain_text_works_with_it() {
    let c = Cluster::start_with(1, 1, vec![("R2O_INSECURE".into(), "true".into())]);
    assert!(c.tls.is_none());
    let log = std::fs::read_to_string(c.dir.path().join(format!("{}.log", c.controllers[0].name))).unwrap();
    assert!(log.contains("--insecure"), "a warning at start: {log}");
    let who = c.cli(&["whoami"]);
    assert!(who.contains("insecure (role admin"), "{who}");
    // data moves: the minion's reports are accepted without identities
    c.add_table("plain", &hourly_table("plain", json!({})), &metric_schema());
    let f = c.parquet_file("plain.parquet", &hourly_rows(3, 10));
    c.cli(&["segment", "add", "--table", "plain", "--file", f.to_str().unwrap(), "--end-of-stream"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let w = rt.block_on(c.wait_idle("plain", Duration::from_secs(60)));
    assert_eq!(w.watermark_ms, support::T0_MS + 3 * support::H_MS, "{}", w.next);
    // without the flag, a process without TLS files does not start
    let out = std::process::Command::new(support::r2o_bin())
        .args(["controller", "--listen", "127.0.0.1:1"])
        .env("R2O_ETCD", &c.etcd.endpoint)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-ca") && err.contains("--insecure"), "{err}");
}
