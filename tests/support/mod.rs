//! A cluster sandbox for end-to-end tests: a real etcd process, controller
//! and minion processes of the `r2o` binary, a temporary object store, and
//! cleanup on drop. Ports are picked free on loopback.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use r2o_proto::controller as pb;
use r2o_proto::controller::controller_service_client::ControllerServiceClient;
use tonic::transport::Channel;

/// A free loopback port, below Linux's ephemeral range (32768-60999).
///
/// A port from `bind(":0")` is an ephemeral one: between the pick and the
/// server's own bind, an outgoing connection (a minion's to etcd, say) can
/// take it as its source port, and the server then fails to start (CI saw
/// etcd's client port "not open within 20s"). Ports here come from 20000-32767,
/// which connections never get, start at an offset from the process id (test
/// binaries run one after another, but not in lockstep), and are never handed
/// out twice by one test process.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap();
    let mut n = next.unwrap_or_else(|| (std::process::id().wrapping_mul(7919)) % SPAN);
    for _ in 0..SPAN {
        let port = (LOW + n % SPAN) as u16;
        n = n.wrapping_add(1);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(n);
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// The `r2o` binary under test.
pub fn r2o_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_r2o"))
}

/// A running etcd.
pub struct Etcd {
    pub child: Child,
    pub endpoint: String,
    pub dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    /// The certificates (`r2o certs init`) when clients reach it over TLS
    /// with client certificates; `None`: plain text.
    pub tls: Option<PathBuf>,
}

impl Etcd {
    /// Starts etcd with its data under `dir`.
    pub fn start(dir: &Path) -> Etcd {
        Self::start_with(dir, free_port(), free_port(), &[], None)
    }

    /// Starts (or restarts) etcd on the given ports.
    pub fn start_on(dir: &Path, client_port: u16, peer_port: u16, tls: Option<&Path>) -> Etcd {
        Self::start_with(dir, client_port, peer_port, &[], tls)
    }

    /// Starts etcd with extra command-line arguments (e.g. a small
    /// `--quota-backend-bytes`); with `tls`, clients must come over TLS with
    /// a certificate from its CA (the server presents `controller.pem`,
    /// whose names include 127.0.0.1).
    pub fn start_with(dir: &Path, client_port: u16, peer_port: u16, extra: &[&str], tls: Option<&Path>) -> Etcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let tls_args: Vec<String> = match tls {
            Some(d) => vec![
                "--cert-file".into(),
                d.join("controller.pem").display().to_string(),
                "--key-file".into(),
                d.join("controller.key").display().to_string(),
                "--trusted-ca-file".into(),
                d.join("ca.pem").display().to_string(),
                "--client-cert-auth".into(),
            ],
            None => vec![],
        };
        let log_path = dir.join(format!("etcd-{client_port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(std::env::var("R2O_TEST_ETCD").unwrap_or_else(|_| "etcd".into()))
            .arg("--data-dir")
            .arg(dir.join("etcd-data"))
            .args(["--name", "r2o-test"])
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args(["--initial-cluster", &format!("r2o-test=http://127.0.0.1:{peer_port}")])
            .args(&tls_args)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (scripts/setup.sh installs Debian's etcd-server)");
        wait_port(&mut child, client_port, Duration::from_secs(20), &log_path);
        Etcd { child, endpoint, dir: dir.to_path_buf(), client_port, peer_port, tls: tls.map(Path::to_path_buf) }
    }

    /// How a client reaches this etcd.
    pub fn security(&self) -> r2o_common::kv::EtcdSecurity {
        match &self.tls {
            None => r2o_common::kv::EtcdSecurity::default(),
            Some(d) => r2o_common::kv::EtcdSecurity {
                ca: Some(d.join("ca.pem")),
                identity: Some((d.join("admin.pem"), d.join("admin.key"))),
                user: None,
            },
        }
    }

    /// A client of this etcd.
    pub async fn kv(&self, connect_timeout: Duration) -> r2o_common::Result<r2o_common::kv::EtcdKv> {
        r2o_common::kv::EtcdKv::connect(std::slice::from_ref(&self.endpoint), connect_timeout, &self.security()).await
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `child` listens on `port`; panics with the end of its log
/// (`log`) if it exits first or the port stays closed past `timeout`.
fn wait_port(child: &mut Child, port: u16, timeout: Duration, log: &Path) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || start.elapsed() >= timeout {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String =
                text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            let what = match exited {
                Some(status) => format!("exited ({status}) before port {port} opened"),
                None => format!("did not open port {port} within {timeout:?}"),
            };
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {pid} {what}; end of {}:\n{tail}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One r2o process.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub port: u16,
    /// Port of `/healthz`, `/readyz`, `/metrics`.
    pub http_port: u16,
}

impl Proc {
    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd + controllers + minions over one temp directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub etcd: Etcd,
    pub store_uri: String,
    pub prefix: String,
    pub controllers: Vec<Proc>,
    pub minions: Vec<Proc>,
    /// Extra environment for every process started (fault injection, timing).
    pub env: Vec<(String, String)>,
    /// The cluster's throwaway CA and certificates (`r2o certs init`), or
    /// `None` when `env` holds `R2O_INSECURE=true` (plain text).
    pub tls: Option<PathBuf>,
}

impl Cluster {
    /// Starts etcd, `controllers` controllers and `minions` minions.
    pub fn start(controllers: usize, minions: usize) -> Cluster {
        Self::start_with(controllers, minions, vec![])
    }

    /// Like [`Cluster::start`], with extra environment for every process.
    pub fn start_with(controllers: usize, minions: usize, env: Vec<(String, String)>) -> Cluster {
        Self::start_on_store(controllers, minions, env, None)
    }

    /// Like [`Cluster::start_with`], on the segment store `store_uri` (default: a temp dir).
    pub fn start_on_store(
        controllers: usize,
        minions: usize,
        env: Vec<(String, String)>,
        store_uri: Option<String>,
    ) -> Cluster {
        Self::start_full(controllers, minions, env, store_uri, &[])
    }

    /// Like [`Cluster::start_on_store`], with extra arguments for etcd.
    pub fn start_full(
        controllers: usize,
        minions: usize,
        env: Vec<(String, String)>,
        store_uri: Option<String>,
        etcd_args: &[&str],
    ) -> Cluster {
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("R2O_KEEP_TEST_DIR").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping test dir {}", dir.path().display());
        }
        let insecure = env.iter().any(|(k, v)| k == "R2O_INSECURE" && v == "true");
        let tls = (!insecure).then(|| {
            let tls = dir.path().join("tls");
            let out = Command::new(r2o_bin())
                .args(["certs", "init", "--dir"])
                .arg(&tls)
                .env_remove("R2O_INSECURE")
                .output()
                .unwrap();
            assert!(out.status.success(), "r2o certs init: {}", String::from_utf8_lossy(&out.stderr));
            tls
        });
        let etcd = Etcd::start_with(dir.path(), free_port(), free_port(), etcd_args, tls.as_deref());
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let mut c = Cluster {
            store_uri: store_uri.unwrap_or_else(|| format!("file://{}", store.display())),
            prefix: "/r2o-test".into(),
            etcd,
            dir,
            controllers: vec![],
            minions: vec![],
            env,
            tls,
        };
        for _ in 0..controllers {
            c.add_controller();
        }
        for _ in 0..minions {
            c.add_minion();
        }
        c
    }

    /// Starts a controller of another install (its own etcd `prefix`) on the
    /// same etcd and segment store.
    pub fn second_install(&self, prefix: &str) -> Proc {
        let port = free_port();
        let name = format!("controller-{port}");
        let args = ["controller".into(), "--listen".into(), format!("127.0.0.1:{port}"), "--id".into(), name.clone()];
        self.spawn_env(&args, &name, port, &[("R2O_PREFIX", prefix)])
    }

    fn spawn(&self, args: &[String], name: &str, port: u16) -> Proc {
        self.spawn_env(args, name, port, &[])
    }

    fn spawn_env(&self, args: &[String], name: &str, port: u16, extra: &[(&str, &str)]) -> Proc {
        let http_port = free_port();
        let mut args = args.to_vec();
        args.extend(["--http-listen".to_string(), format!("127.0.0.1:{http_port}")]);
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let role = if args.first().map(String::as_str) == Some("minion") { "minion" } else { "controller" };
        let mut child = Command::new(r2o_bin())
            .args(&args)
            .envs(self.tls_env(role))
            .env("R2O_ETCD", &self.etcd.endpoint)
            .env("R2O_STORE", &self.store_uri)
            .env("R2O_PREFIX", &self.prefix)
            .env("R2O_LEASE_TTL_SECS", "3")
            .env("R2O_LOG", "info")
            .env("R2O_PLAN_INTERVAL_MS", "200")
            // discovery may read inside the test's own directory
            .env("R2O_SOURCE_ALLOW", format!("file://{}/", self.dir.path().display()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_port(&mut child, port, Duration::from_secs(30), &log_path);
        Proc { child, name: name.into(), port, http_port }
    }

    /// Starts one more controller.
    pub fn add_controller(&mut self) {
        let p = self.new_controller();
        self.controllers.push(p);
    }

    fn new_controller(&self) -> Proc {
        let port = free_port();
        let name = format!("controller-{port}");
        let p = self.spawn(
            &["controller".into(), "--listen".into(), format!("127.0.0.1:{port}"), "--id".into(), name.clone()],
            &name,
            port,
        );
        p
    }

    /// SIGKILLs controller `i` and starts a new one in its place.
    pub fn kill_and_replace_controller(&mut self, i: usize) {
        let _ = self.controllers[i].child.kill();
        let _ = self.controllers[i].child.wait();
        self.controllers[i] = self.new_controller();
    }

    /// SIGKILLs minion `i` and starts a new one in its place.
    pub fn kill_and_replace_minion(&mut self, i: usize) {
        let _ = self.minions[i].child.kill();
        let _ = self.minions[i].child.wait();
        self.minions[i] = self.new_minion();
    }

    /// SIGKILLs etcd and starts it again on the same ports and data.
    pub fn restart_etcd(&mut self, down_for: Duration) {
        let _ = self.etcd.child.kill();
        let _ = self.etcd.child.wait();
        std::thread::sleep(down_for);
        let (c, p) = (self.etcd.client_port, self.etcd.peer_port);
        let tls = self.etcd.tls.clone();
        self.etcd = Etcd::start_on(self.dir.path(), c, p, tls.as_deref());
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to a process.
    pub fn signal(pid: u32, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
    }

    /// Starts one more minion.
    pub fn add_minion(&mut self) {
        let p = self.new_minion();
        self.minions.push(p);
    }

    /// Starts one more minion with extra environment of its own (e.g. a
    /// slow store for this minion only).
    pub fn add_minion_env(&mut self, extra: &[(&str, &str)]) {
        let p = self.new_minion_env(extra);
        self.minions.push(p);
    }

    fn new_minion(&self) -> Proc {
        self.new_minion_env(&[])
    }

    fn new_minion_env(&self, extra: &[(&str, &str)]) -> Proc {
        let port = free_port();
        let name = format!("minion-{port}");
        let p = self.spawn_env(
            &[
                "minion".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--id".into(),
                name.clone(),
                "--slots".into(),
                "2".into(),
                "--poll-ms".into(),
                "1000".into(),
            ],
            &name,
            port,
            extra,
        );
        p
    }

    /// `R2O_TLS_*` for a process presenting `who`'s certificate
    /// (`controller`, `minion`, `admin`, or one made by `certs issue`).
    pub fn tls_env(&self, who: &str) -> Vec<(String, String)> {
        match &self.tls {
            None => vec![],
            Some(d) => vec![
                ("R2O_TLS_CA".into(), d.join("ca.pem").display().to_string()),
                ("R2O_TLS_CERT".into(), d.join(format!("{who}.pem")).display().to_string()),
                ("R2O_TLS_KEY".into(), d.join(format!("{who}.key")).display().to_string()),
            ],
        }
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Address of the first live controller.
    pub fn controller_addr(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.controllers[0].port)
    }

    /// A gRPC client to the first controller, as the cluster's admin
    /// (the `admin` certificate).
    pub async fn client(&self) -> ControllerServiceClient<Channel> {
        self.client_at(self.controllers[0].port).await.unwrap()
    }

    /// A gRPC client, as the admin, to the controller on `port`.
    pub async fn client_at(&self, port: u16) -> Result<ControllerServiceClient<Channel>, tonic::transport::Error> {
        self.client_as(port, "admin").await
    }

    /// A gRPC client to the controller on `port` presenting `who`'s certificate.
    pub async fn client_as(
        &self,
        port: u16,
        who: &str,
    ) -> Result<ControllerServiceClient<Channel>, tonic::transport::Error> {
        let mut ep = tonic::transport::Endpoint::from_shared(format!("{}://127.0.0.1:{port}", self.scheme()))?;
        if let Some(d) = &self.tls {
            let (cert, key) = (d.join(format!("{who}.pem")), d.join(format!("{who}.key")));
            ep = ep.tls_config(r2o_common::tls::client_config(&d.join("ca.pem"), Some((&cert, &key))).unwrap())?;
        }
        Ok(ControllerServiceClient::new(ep.connect().await?))
    }

    /// Runs the admin CLI against this cluster; panics with its output on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_raw(args);
        assert!(
            out.status.success(),
            "r2o {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the admin CLI and returns its raw output.
    pub fn cli_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(r2o_bin())
            .args(args)
            .envs(self.tls_env("admin"))
            .envs(self.env.iter().filter(|(k, _)| k == "R2O_INSECURE").map(|(k, v)| (k.as_str(), v.as_str())))
            .env("R2O_CONTROLLER", self.controller_addr())
            .env("R2O_STORE", &self.store_uri)
            .envs(self.env.iter().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    }

    /// Runs the admin CLI as `who` (a certificate of the cluster's CA; `None`:
    /// the CA file alone, for a caller with a token in `env`), with `env`.
    pub fn cli_as(&self, who: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        let tls: Vec<(String, String)> = match who {
            Some(w) => self.tls_env(w),
            None => self.tls_env("admin").into_iter().filter(|(k, _)| k == "R2O_TLS_CA").collect(),
        };
        Command::new(r2o_bin())
            .args(args)
            .envs(tls)
            .env("R2O_CONTROLLER", self.controller_addr())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Polls until the table is idle (nothing running or ready), returning the watermark.
    pub async fn wait_idle(&self, table: &str, timeout: Duration) -> pb::GetWatermarkResponse {
        let mut c = self.client().await;
        let start = Instant::now();
        loop {
            let w = c.get_watermark(pb::GetWatermarkRequest { table: table.into() }).await.unwrap().into_inner();
            if w.idle {
                return w;
            }
            assert!(
                start.elapsed() < timeout,
                "table {table} not idle after {timeout:?}: {}\nlogs in {}",
                w.next,
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A table's segments (REALTIME and OFFLINE), as the controller lists them.
    pub async fn segments(&self, table: &str) -> Vec<pb::Segment> {
        self.segments_paged(table, 0).await
    }

    /// [`Cluster::segments`] asked `page_size` at a time (0: the
    /// controller's default), every page checked to hold at most that many.
    pub async fn segments_paged(&self, table: &str, page_size: u32) -> Vec<pb::Segment> {
        let mut c = self.client().await;
        let (mut out, mut page_token) = (Vec::new(), String::new());
        loop {
            let req = pb::ListSegmentsRequest { table: table.into(), page_size, page_token };
            let page = c.list_segments(req).await.unwrap().into_inner();
            assert!(page_size == 0 || page.segments.len() <= page_size as usize, "a page of {page_size}");
            out.extend(page.segments);
            if page.next_page_token.is_empty() {
                return out;
            }
            page_token = page.next_page_token;
        }
    }

    /// A table's committed OFFLINE segments.
    pub async fn offline_segments(&self, table: &str) -> Vec<pb::Segment> {
        self.segments(table).await.into_iter().filter(|s| s.table.ends_with("_OFFLINE")).collect()
    }

    /// Every batch of a table's committed OFFLINE files (file stores), read
    /// from the files alone.
    pub async fn offline_batches(&self, table: &str) -> Vec<arrow::array::RecordBatch> {
        let mut out = vec![];
        for s in self.offline_segments(table).await {
            let f = std::fs::File::open(self.store_path(&s.location))
                .unwrap_or_else(|e| panic!("committed segment {} of {table} at {}: {e}", s.name, s.location));
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
            out.extend(reader.map(|b| b.unwrap()));
        }
        out
    }

    /// The local file of a registered segment (file stores only), from the
    /// controller's segment list.
    pub async fn segment_file(&self, table: &str, segment: &str) -> PathBuf {
        let segs = self.segments(table).await;
        let s = segs.iter().find(|s| s.name == segment).unwrap_or_else(|| panic!("segment {segment} of {table}"));
        self.store_path(&s.location)
    }

    /// The local file of an object of the (file) store; object_store keeps
    /// characters such as `[ ] { } #` percent-encoded in file names.
    pub fn store_path(&self, location: &str) -> PathBuf {
        self.dir.path().join("store").join(r2o_common::store::canonical_path(location))
    }

    /// Keeps the temp dir (logs) after the test, for debugging a failure.
    pub fn keep(self) -> PathBuf {
        let p = self.dir.path().to_path_buf();
        std::mem::forget(self);
        p
    }
}

/// A plain HTTP/1.0 GET on loopback: (status code, body); status 0 when
/// nothing listens on `port` yet (a process still starting).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of one sample (`name{labels} value`) in a Prometheus text body.
pub fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
    })
}

/// A plain HTTP/1.0 request with an empty body on loopback; returns the status code.
pub fn http_request(port: u16, method: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// An S3-compatible server (moto, from .venv) on a free loopback port.
pub struct S3Server {
    pub child: Child,
    pub port: u16,
}

impl S3Server {
    /// Starts moto's server and creates `bucket`.
    pub fn start(dir: &Path, bucket: &str) -> S3Server {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        assert!(bin.exists(), "run scripts/setup.sh first: it installs moto[server] into .venv");
        let port = free_port();
        let log_path = dir.join("moto.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_port(&mut child, port, Duration::from_secs(30), &log_path);
        let status = http_request(port, "PUT", &format!("/{bucket}"));
        assert_eq!(status, 200, "create bucket {bucket}");
        S3Server { child, port }
    }

    /// The `AWS_*` environment that points object_store at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "r2o-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "r2o-test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl S3Server {
    /// A client of `bucket` on this server (the test's own view of it).
    pub fn bucket(&self, bucket: &str) -> r2o_common::store::Store {
        r2o_common::store::install_tls_provider();
        std::sync::Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(format!("http://127.0.0.1:{}", self.port))
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id("r2o-test")
                .with_secret_access_key("r2o-test")
                .with_bucket_name(bucket)
                .build()
                .unwrap(),
        )
    }
}

/// Every file under `dir` (recursively).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One hour, ms.
pub const H_MS: i64 = 3_600_000;
/// An hour-aligned start for test data (2020-09-13).
pub const T0_MS: i64 = 1_600_000_000_000 / H_MS * H_MS;

/// A Pinot schema with one LONG metric `m` and an epoch-ms time column `ts`.
pub fn metric_schema() -> serde_json::Value {
    serde_json::json!({"schemaName": "s", "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]})
}

/// A Pinot schema with a STRING dimension `k`, a LONG metric `m` and an
/// epoch-ms time column `ts`.
pub fn keyed_schema() -> serde_json::Value {
    serde_json::json!({"schemaName": "s", "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]})
}

/// Rows `(key, ts)` of [`keyed_schema`], each with `m = 1`.
pub fn keyed_rows(keys_and_times: &[(&str, i64)]) -> arrow::array::RecordBatch {
    use arrow::array::{Array, Int64Array, StringArray};
    let keys: Vec<&str> = keys_and_times.iter().map(|(k, _)| *k).collect();
    let times: Vec<i64> = keys_and_times.iter().map(|(_, t)| *t).collect();
    arrow::array::RecordBatch::try_from_iter(vec![
        ("k", std::sync::Arc::new(StringArray::from(keys)) as std::sync::Arc<dyn Array>),
        ("m", std::sync::Arc::new(Int64Array::from(vec![1; keys_and_times.len()])) as _),
        ("ts", std::sync::Arc::new(Int64Array::from(times)) as _),
    ])
    .unwrap()
}

/// A REALTIME table config over `ts` with 1 h buckets and a 1 h buffer,
/// plus `extra` keys in the `RealtimeToOfflineSegmentsTask` block.
pub fn hourly_table(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut task = serde_json::json!({"bucketTimePeriod": "1h", "bufferTimePeriod": "1h"});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        task[k] = v;
    }
    serde_json::json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}})
}

/// `hours * per_hour` rows of `m = 1`, spread evenly from [`T0_MS`].
pub fn hourly_rows(hours: i64, per_hour: i64) -> arrow::array::RecordBatch {
    use arrow::array::Int64Array;
    let rows = hours * per_hour;
    arrow::array::RecordBatch::try_from_iter(vec![
        ("m", std::sync::Arc::new(Int64Array::from(vec![1; rows as usize])) as _),
        (
            "ts",
            std::sync::Arc::new(Int64Array::from((0..rows).map(|i| T0_MS + i * H_MS / per_hour).collect::<Vec<_>>()))
                as _,
        ),
    ])
    .unwrap()
}

/// Writes a batch as a Parquet file.
pub fn write_parquet(path: &Path, batch: &arrow::array::RecordBatch) {
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

impl Cluster {
    /// Registers a table with `r2o table add` from JSON values.
    pub fn add_table(&self, name: &str, config: &serde_json::Value, schema: &serde_json::Value) {
        let (c, s) =
            (self.dir.path().join(format!("{name}.table.json")), self.dir.path().join(format!("{name}.schema.json")));
        std::fs::write(&c, config.to_string()).unwrap();
        std::fs::write(&s, schema.to_string()).unwrap();
        self.cli(&["table", "add", "--config", c.to_str().unwrap(), "--schema", s.to_str().unwrap()]);
    }

    /// Writes a batch as a Parquet file in the cluster's directory.
    pub fn parquet_file(&self, name: &str, batch: &arrow::array::RecordBatch) -> PathBuf {
        let f = self.dir.path().join(name);
        write_parquet(&f, batch);
        f
    }
}

/// One version of a table's Delta log, read from its JSON commit file.
#[derive(Debug)]
pub struct DeltaVersion {
    /// Paths its `add` actions name.
    pub adds: Vec<String>,
    /// Paths its `remove` actions name.
    pub removes: Vec<String>,
    /// `(appId, version)` of its `txn` actions.
    pub txns: Vec<(String, i64)>,
    /// Whether it holds a `metaData` action.
    pub metadata: bool,
}

/// Every version of the Delta log in `dir` (a table's `..._OFFLINE`
/// directory of a file store), by number, parsed from
/// `_delta_log/<n>.json`.
pub fn delta_versions(dir: &Path) -> std::collections::BTreeMap<i64, DeltaVersion> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join("_delta_log")) else { return out };
    for e in entries {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        let Some(n) = name.strip_suffix(".json").and_then(|n| n.parse::<i64>().ok()) else { continue };
        let text = std::fs::read_to_string(dir.join("_delta_log").join(&name)).unwrap();
        let mut v = DeltaVersion { adds: vec![], removes: vec![], txns: vec![], metadata: false };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let a: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(p) = a["add"]["path"].as_str() {
                v.adds.push(p.to_string());
            }
            if let Some(p) = a["remove"]["path"].as_str() {
                v.removes.push(p.to_string());
            }
            if a["txn"].is_object() {
                v.txns.push((a["txn"]["appId"].as_str().unwrap().to_string(), a["txn"]["version"].as_i64().unwrap()));
            }
            v.metadata |= a["metaData"].is_object();
        }
        out.insert(n, v);
    }
    out
}

/// Checks a Delta log's history: versions 0..=N with no gap, each with
/// exactly one `txn` of `r2o-<table>` whose version (an etcd revision)
/// grows, every path added at most once and removed only while in the
/// table. Returns the files of the last version (paths relative to `dir`).
///
/// # Errors
/// What broke, naming the version.
pub fn delta_history(dir: &Path, table: &str) -> Result<std::collections::BTreeSet<String>, String> {
    let versions = delta_versions(dir);
    let numbers: Vec<i64> = versions.keys().copied().collect();
    if numbers != (0..numbers.len() as i64).collect::<Vec<_>>() {
        return Err(format!("the log's versions have a gap: {numbers:?}"));
    }
    let (mut live, mut ever) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let mut last_txn = i64::MIN;
    for (n, v) in &versions {
        if v.txns.len() != 1 || v.txns[0].0 != format!("r2o-{table}") {
            return Err(format!("version {n}: not one txn of r2o-{table}: {:?}", v.txns));
        }
        if v.txns[0].1 <= last_txn {
            return Err(format!("version {n}: txn {} after {last_txn}", v.txns[0].1));
        }
        last_txn = v.txns[0].1;
        for p in &v.removes {
            if !live.remove(p) {
                return Err(format!("version {n} removes {p}, which is not in the table"));
            }
        }
        for p in &v.adds {
            if !ever.insert(p.clone()) {
                return Err(format!("version {n} adds {p} a second time"));
            }
            live.insert(p.clone());
        }
    }
    Ok(live)
}

impl Cluster {
    /// Brings `table`'s Delta log up to date (`export-delta`, as an admin
    /// would) and checks it against the committed OFFLINE segments: its
    /// history is sound ([`delta_history`]) and its files are exactly
    /// theirs.
    ///
    /// # Errors
    /// What differs.
    pub async fn check_delta(&self, table: &str) -> Result<(), String> {
        // (a store with injected faults fails some reads of the log: the
        // export is retryable, as the leader's own passes retry)
        let mut tries = 0;
        let out = loop {
            let out = self.cli_raw(&["table", "export-delta", "--table", table, "--output", "json"]);
            tries += 1;
            if out.status.success() || tries == 30 {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if !out.status.success() {
            return Err(format!("export-delta, {tries} tries: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let exported: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let url = exported["tableUrl"].as_str().unwrap_or_default();
        let dir = PathBuf::from(url.strip_prefix("file://").ok_or(format!("not a file store: {url}"))?);
        let live = delta_history(&dir, table)?;
        let committed: std::collections::BTreeSet<String> = self
            .offline_segments(table)
            .await
            .iter()
            .map(|s| {
                let p = self.store_path(&s.location);
                p.strip_prefix(&dir).map(|r| r.display().to_string()).unwrap_or_else(|_| p.display().to_string())
            })
            .collect();
        if live != committed {
            let extra: Vec<_> = live.difference(&committed).collect();
            let missing: Vec<_> = committed.difference(&live).collect();
            return Err(format!("the Delta log of {table} differs: extra {extra:?}, missing {missing:?}"));
        }
        Ok(())
    }
}
