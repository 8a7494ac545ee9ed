//! `r2o`: one binary for both roles (`controller`, `minion`) and the admin
//! CLI (tables, segments, ingest, tasks, watermark, report).

mod certs;
mod cli;
mod connect;
mod ingest;
mod settings;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

use r2o_common::kv::{EtcdKv, Kv};
use r2o_common::meta::Keys;
use r2o_common::store::open_store;

#[derive(Parser)]
#[command(
    name = "r2o",
    version,
    about = "Managed realtime-to-offline flows (Pinot's RealtimeToOfflineSegmentsTask) as a cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the cluster keeps its state.
#[derive(Args, Clone)]
struct StateArgs {
    /// A TOML settings file: keys are the settings' names (`lease_ttl_secs = 10`,
    /// `etcd = "http://…"`), unknown keys are an error; the environment and flags override it.
    #[arg(long, env = "R2O_SETTINGS")]
    settings: Option<std::path::PathBuf>,
    /// etcd endpoints, comma-separated [default: https://127.0.0.1:2379, http:// with --insecure].
    #[arg(long, env = "R2O_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// CA file (PEM) of etcd's server certificate [default: --tls-ca, for https:// endpoints].
    #[arg(long, env = "R2O_ETCD_CA")]
    etcd_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth [default: --tls-cert, for https:// endpoints].
    #[arg(long, env = "R2O_ETCD_CERT")]
    etcd_cert: Option<std::path::PathBuf>,
    /// Key of --etcd-cert [default: --tls-key, for https:// endpoints].
    #[arg(long, env = "R2O_ETCD_KEY")]
    etcd_key: Option<std::path::PathBuf>,
    /// etcd user (etcd's own auth), with --etcd-password-file.
    #[arg(long, env = "R2O_ETCD_USER")]
    etcd_user: Option<String>,
    /// File whose first line is the etcd user's password.
    #[arg(long, env = "R2O_ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<std::path::PathBuf>,
    /// Key prefix of r2o's metadata in etcd.
    #[arg(long, env = "R2O_PREFIX", default_value = "/r2o")]
    prefix: String,
    /// Segment store URI: file:///abs/dir or memory://.
    #[arg(long, env = "R2O_STORE", default_value = "file:///var/lib/r2o/store")]
    store: String,
    /// Lease TTL in seconds; lease renewal is every TTL/3, leader takeover within about one TTL.
    #[arg(long, env = "R2O_LEASE_TTL_SECS", default_value_t = 10)]
    lease_ttl_secs: i64,
    /// Attempts per task round before it is FAILED, unless the table sets Pinot's maxAttemptsPerTask.
    #[arg(long, env = "R2O_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u32,
    /// Where to serve /healthz, /readyz and Prometheus /metrics (unset: not served).
    #[arg(long, env = "R2O_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Attempt timeout in seconds, unless the table sets Pinot's timeoutMs.
    #[arg(long, env = "R2O_TASK_TIMEOUT_SECS", default_value_t = 3600)]
    task_timeout_secs: u64,
    /// Deadline of each segment-store call (get, put, head of one object), seconds.
    #[arg(long, env = "R2O_STORE_TIMEOUT_SECS", default_value_t = 120)]
    store_timeout_secs: u64,
    /// Deadline of each gRPC call between processes, seconds (connects within min(5 s, this)).
    #[arg(long, env = "R2O_RPC_TIMEOUT_SECS", default_value_t = 30)]
    rpc_timeout_secs: u64,
    /// Plain-text gRPC and no identity checks (every caller may make every call); logs a warning.
    /// Only for a trusted network: TLS with roles is the default.
    #[arg(long, env = "R2O_INSECURE")]
    insecure: bool,
    /// CA certificates (PEM) that verify peers: clients' certificates here, the controller's at a minion.
    #[arg(long, env = "R2O_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// This process's certificate chain (PEM), presented as server and as client; re-read when it changes.
    #[arg(long, env = "R2O_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "R2O_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// Name to verify the controller's certificate against (default: the host of its
    /// advertised address); in Kubernetes, the controller's Service name.
    #[arg(long, env = "R2O_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
}

impl StateArgs {
    /// The etcd endpoints: as given, else the local default for the transport.
    fn etcd_endpoints(&self) -> Vec<String> {
        if self.etcd.is_empty() {
            vec![format!("{}://127.0.0.1:2379", if self.insecure { "http" } else { "https" })]
        } else {
            self.etcd.clone()
        }
    }

    /// How to reach etcd: the etcd TLS files (defaulting to the process's
    /// own for `https://` endpoints) and the etcd user.
    fn etcd_security(&self) -> Result<r2o_common::kv::EtcdSecurity> {
        let endpoints = self.etcd_endpoints();
        let https = endpoints.iter().all(|e| e.starts_with("https://"));
        let or_tls = |own: &Option<std::path::PathBuf>, tls: &Option<std::path::PathBuf>| {
            own.clone().or_else(|| if https { tls.clone() } else { None })
        };
        let identity = match (or_tls(&self.etcd_cert, &self.tls_cert), or_tls(&self.etcd_key, &self.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => anyhow::bail!("--etcd-cert and --etcd-key (R2O_ETCD_CERT, R2O_ETCD_KEY) go together"),
        };
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(u), Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the etcd password file {}", f.display()))?;
                Some((u.clone(), text.lines().next().unwrap_or_default().to_string()))
            }
            (None, None) => None,
            _ => anyhow::bail!(
                "--etcd-user and --etcd-password-file (R2O_ETCD_USER, R2O_ETCD_PASSWORD_FILE) go together"
            ),
        };
        let sec = r2o_common::kv::EtcdSecurity { ca: or_tls(&self.etcd_ca, &self.tls_ca), identity, user };
        sec.check(&endpoints, self.insecure).map_err(anyhow::Error::msg)?;
        Ok(sec)
    }

    /// TLS files (checked now, so bad files stop the process at start) or `--insecure`.
    fn transport(&self) -> Result<r2o_common::tls::Transport> {
        let t = r2o_common::tls::Transport::from_settings(
            self.insecure,
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        if let r2o_common::tls::Transport::Tls(files) = &t {
            files.server_config()?;
        }
        Ok(t)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a controller (leader election, planning, commits, admin API).
    Controller {
        #[command(flatten)]
        state: StateArgs,
        /// gRPC listen address.
        #[arg(long, env = "R2O_LISTEN", default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// Address others reach this controller at (default: https://<listen>, http:// with --insecure).
        /// Its host must be a name (or IP) in the controller's certificate.
        #[arg(long, env = "R2O_ADVERTISE")]
        advertise: Option<String>,
        /// Client certificate names and their roles: comma-separated `name=role`, where `name` is a
        /// DNS name in the certificate's subject alternative names and role is minion, reader,
        /// operator or admin. People and scripts use tokens (`r2o token create`).
        #[arg(long, env = "R2O_CERT_ROLES", default_value = "r2o-minion=minion,r2o-admin=admin")]
        cert_roles: String,
        /// Where tables may discover files (batchConfigMaps' inputDirURI), comma-separated:
        /// file:///data/landing/, s3://landing/. A source must lie inside one (compared after
        /// normalizing '//', refusing '..' and encoded dots and slashes). Empty: discovery is off.
        #[arg(long, env = "R2O_SOURCE_ALLOW", default_value = "")]
        source_allow: String,
        /// Controller id (default: controller-<port>).
        #[arg(long, env = "R2O_ID")]
        id: Option<String>,
        /// Planner tick, ms.
        #[arg(long, env = "R2O_PLAN_INTERVAL_MS", default_value_t = 1000)]
        plan_interval_ms: u64,
        /// Janitor sweep interval, seconds.
        #[arg(long, env = "R2O_JANITOR_INTERVAL_SECS", default_value_t = 60)]
        janitor_interval_secs: u64,
        /// How often the leader lists the tables' batchConfigMaps sources for new files, ms
        /// (a file is registered once two listings in a row agree on its size and version).
        #[arg(long, env = "R2O_DISCOVERY_INTERVAL_MS", default_value_t = 10_000)]
        discovery_interval_ms: u64,
        /// How long an object or metadata chunk must stay orphaned, as seen by the leader's own
        /// sweeps, before the janitor deletes it, seconds.
        #[arg(long, env = "R2O_JANITOR_GRACE_SECS", default_value_t = 600)]
        janitor_grace_secs: u64,
        /// How long a file removed from a table's Delta log (a window a late run replaced, a
        /// flush) stays in the store so readers can travel back to the versions that name it,
        /// seconds (Delta's deletedFileRetentionDuration; default 7 days).
        #[arg(long, env = "R2O_DELTA_FILE_RETENTION_SECS", default_value_t = 7 * 86_400)]
        delta_file_retention_secs: u64,
        /// Finished tasks kept in each table's history (the newest).
        #[arg(long, env = "R2O_HISTORY_MAX_PER_TABLE", default_value_t = 10_000)]
        history_max_per_table: usize,
        /// Finished tasks older than this are pruned from history, seconds (0: kept by count only).
        #[arg(long, env = "R2O_HISTORY_MAX_AGE_SECS", default_value_t = 30 * 86_400)]
        history_max_age_secs: u64,
        /// Registered input rows one task may read, unless the table sets Pinot's maxNumRecordsPerTask;
        /// consecutive windows are batched into a task up to it.
        #[arg(long, env = "R2O_TASK_MAX_INPUT_ROWS", default_value_t = 1_000_000)]
        task_max_input_rows: u64,
        /// Input bytes one task may read.
        #[arg(long, env = "R2O_TASK_MAX_INPUT_BYTES", default_value_t = 256 * 1024 * 1024)]
        task_max_input_bytes: u64,
        /// Windows one task may run.
        #[arg(long, env = "R2O_TASK_MAX_WINDOWS", default_value_t = 1_000)]
        task_max_windows: usize,
        /// Tasks of one table in flight at once (0: the live minions' slots plus one).
        #[arg(long, env = "R2O_MAX_TASKS_PER_TABLE", default_value_t = 0)]
        max_tasks_per_table: usize,
    },
    /// Run a minion (claims and executes tasks).
    Minion {
        #[command(flatten)]
        state: StateArgs,
        /// gRPC listen address of the status service.
        #[arg(long, env = "R2O_LISTEN", default_value = "127.0.0.1:7800")]
        listen: SocketAddr,
        /// Minion id (default: minion-<port>).
        #[arg(long, env = "R2O_ID")]
        id: Option<String>,
        /// Concurrent tasks.
        #[arg(long, env = "R2O_SLOTS", default_value_t = 2)]
        slots: u32,
        /// The machine this minion runs on: a window too big for one task is
        /// split by hash into at most one sub-task per distinct host (default:
        /// the kernel's boot id, else the hostname; in Kubernetes, the node name).
        #[arg(long, env = "R2O_HOST")]
        host: Option<String>,
        /// Task poll interval, ms: a fallback; new and freed tasks are noticed at once by a watch.
        #[arg(long, env = "R2O_POLL_MS", default_value_t = 1000)]
        poll_ms: u64,
        /// Seconds a draining minion lets running attempts finish.
        #[arg(long, env = "R2O_DRAIN_GRACE_SECS", default_value_t = 30)]
        drain_grace_secs: u64,
        /// Memory budget for decoded data, shared by the slots: bytes or a size
        /// such as 256MB, 256MiB, 4GiB (default: 3/4 of the container's memory
        /// limit, or half the machine's memory). A task past its share spills.
        #[arg(long, env = "R2O_MEMORY_BUDGET", value_parser = r2o_minion::budget::parse_size)]
        memory_budget: Option<u64>,
        /// Local directory for spill files (default: <temp dir>/r2o-spill-<minion id>).
        #[arg(long, env = "R2O_SPILL_DIR")]
        spill_dir: Option<std::path::PathBuf>,
        /// This minion's tag: it runs only the tasks of tables whose
        /// `minionInstanceTag` is this (Pinot's key and default), so a heavy
        /// table can have a pool of its own.
        #[arg(long, env = "R2O_MINION_TAG", default_value = r2o_common::config::DEFAULT_MINION_TAG)]
        tag: String,
    },
    #[command(flatten)]
    Admin(cli::AdminCommand),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("R2O_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("R2O_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn connect_state(state: &StateArgs) -> Result<(Kv, Keys, r2o_common::store::Store)> {
    r2o_common::store::set_store_deadline(Duration::from_secs(state.store_timeout_secs.max(1)));
    let endpoints = state.etcd_endpoints();
    let kv = EtcdKv::connect(&endpoints, Duration::from_secs(5), &state.etcd_security()?)
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    let store = open_store(&state.store).with_context(|| format!("opening segment store {}", state.store))?;
    Ok((Arc::new(kv), Keys::new(&state.prefix), store))
}

/// Cancels `token` on SIGTERM or Ctrl-C.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutdown requested");
        token.cancel();
    });
}

/// Runs the command; an error is printed as one line (`Error: what: why`),
/// whatever `RUST_BACKTRACE` says, and exits 1.
/// jemalloc, not glibc malloc: the same speed, and a minion's peak RSS at
/// x100 209-216 MB instead of 220-335 MB (glibc kept freed memory in its
/// per-thread arenas; the heap itself peaks at ~96 MB). Issue 21: every
/// r2o process within 300 MB at x100.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    use clap::CommandFactory;
    // settings file (--settings or R2O_SETTINGS) < environment < flags
    settings::apply_settings_file(&Cli::command())?;
    let cli = Cli::parse();
    match cli.command {
        Command::Controller {
            state,
            listen,
            advertise,
            id,
            plan_interval_ms,
            janitor_interval_secs,
            discovery_interval_ms,
            janitor_grace_secs,
            delta_file_retention_secs,
            history_max_per_table,
            history_max_age_secs,
            task_max_input_rows,
            task_max_input_bytes,
            task_max_windows,
            max_tasks_per_table,
            cert_roles,
            source_allow,
        } => {
            init_tracing();
            let transport = state.transport()?;
            let cert_roles = r2o_common::access::parse_cert_roles(&cert_roles)
                .map_err(|e| anyhow::anyhow!("--cert-roles (R2O_CERT_ROLES): {e}"))?;
            let source_allow = r2o_common::config::parse_source_allow(&source_allow)
                .map_err(|e| anyhow::anyhow!("--source-allow (R2O_SOURCE_ALLOW): {e}"))?;
            let (kv, keys, store) = connect_state(&state).await?;
            let cancel = CancellationToken::new();
            cancel_on_signal(cancel.clone());
            let cfg = r2o_controller::ControllerConfig {
                id: id.unwrap_or_else(|| format!("controller-{}", listen.port())),
                listen,
                advertise: advertise.unwrap_or_else(|| format!("{}://{listen}", transport.scheme())),
                lease_ttl_secs: state.lease_ttl_secs,
                plan_interval: Duration::from_millis(plan_interval_ms),
                max_attempts: state.max_attempts,
                task_timeout: Duration::from_secs(state.task_timeout_secs.max(1)),
                janitor_interval: Duration::from_secs(janitor_interval_secs.max(1)),
                janitor_grace: Duration::from_secs(janitor_grace_secs),
                delta_file_retention: Duration::from_secs(delta_file_retention_secs),
                http_listen: state.http_listen,
                history: r2o_controller::janitor::HistoryRetention {
                    max_per_table: history_max_per_table,
                    max_age_ms: (history_max_age_secs as i64).saturating_mul(1000),
                },
                budget: r2o_controller::planner::Budget {
                    max_windows: task_max_windows.max(1),
                    max_input_rows: task_max_input_rows.max(1),
                    max_input_bytes: task_max_input_bytes.max(1),
                },
                max_tasks_per_table,
                discovery_interval: Duration::from_millis(discovery_interval_ms.max(100)),
                store_uri: state.store.clone(),
                transport,
                cert_roles,
                source_allow,
            };
            r2o_controller::run(kv, keys, store, cfg, cancel).await
        }
        Command::Minion {
            state,
            listen,
            id,
            slots,
            host,
            poll_ms,
            drain_grace_secs,
            memory_budget,
            spill_dir,
            tag,
        } => {
            init_tracing();
            let transport = state.transport()?;
            let (kv, keys, store) = connect_state(&state).await?;
            let cancel = CancellationToken::new();
            cancel_on_signal(cancel.clone());
            let id = id.unwrap_or_else(|| format!("minion-{}", listen.port()));
            let tag = tag.trim().to_string();
            anyhow::ensure!(
                r2o_common::config::valid_minion_tag(&tag),
                "invalid --tag '{tag}': expected letters, digits, '_', '-' and '.' (a table's minionInstanceTag)"
            );
            let cfg = r2o_minion::MinionConfig {
                spill_dir: spill_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("r2o-spill-{id}"))),
                memory_budget: memory_budget.unwrap_or_else(r2o_minion::budget::default_budget),
                id,
                listen,
                slots: slots.max(1),
                host: host.filter(|h| !h.trim().is_empty()).unwrap_or_else(r2o_minion::default_host),
                lease_ttl_secs: state.lease_ttl_secs,
                poll: Duration::from_millis(poll_ms),
                drain_grace: Duration::from_secs(drain_grace_secs),
                rpc_timeout: Duration::from_secs(state.rpc_timeout_secs.max(1)),
                http_listen: state.http_listen,
                transport,
                tls_server_name: state.tls_server_name.clone(),
                tag,
            };
            r2o_minion::run(kv, keys, store, cfg, cancel).await
        }
        Command::Admin(cmd) => cli::run(cmd).await,
    }
}
