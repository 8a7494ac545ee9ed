//! The admin CLI: talks to a controller over gRPC (and to the segment
//! store for uploads). Output is a readable table by default, JSON with
//! `--output json`.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use r2o_common::window::format_utc;
use r2o_proto::controller as pb;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::connect::{client, list_segments, on_leader, status_err, Credentials, Target};
use crate::ingest;

/// How to reach the cluster.
#[derive(Args, Clone)]
pub struct Conn {
    /// Controller gRPC address (any controller; writes are forwarded by retrying on the leader)
    /// [default: https://127.0.0.1:7700, http:// with --insecure].
    #[arg(long, env = "R2O_CONTROLLER")]
    pub controller: Option<String>,
    /// Plain text to a controller started with --insecure (no TLS, no credentials).
    #[arg(long, env = "R2O_INSECURE")]
    pub insecure: bool,
    /// CA certificate file (PEM) that signed the controller's certificate.
    #[arg(long, env = "R2O_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present; its name maps to a role at the controller.
    #[arg(long, env = "R2O_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Key of --tls-cert (PEM).
    #[arg(long, env = "R2O_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the controller's certificate against (default: the host of the address).
    #[arg(long, env = "R2O_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Bearer token (`r2o token create` prints one); prefer --token-file on shared machines.
    #[arg(long = "token", env = "R2O_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File whose first line is the bearer token.
    #[arg(long, env = "R2O_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl Conn {
    /// The controller and the credentials to reach it with.
    ///
    /// Errors: see [`Target::new`].
    pub fn target(&self) -> Result<Target> {
        Target::new(
            self.controller.clone(),
            Credentials {
                insecure: self.insecure,
                ca: self.tls_ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                server_name: self.tls_server_name.clone(),
                token: self.token.clone(),
                token_file: self.token_file.clone(),
            },
        )
    }
}

/// Output format of admin commands.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Aligned text.
    Table,
    /// JSON.
    Json,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Manage tables.
    Table {
        #[command(subcommand)]
        cmd: TableCmd,
    },
    /// Manage REALTIME segments.
    Segment {
        #[command(subcommand)]
        cmd: SegmentCmd,
    },
    /// Cut a time-ordered CSV or Parquet file into REALTIME segments, as a realtime server would flush them.
    Ingest {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
        /// CSV (with a header) or Parquet file.
        #[arg(long)]
        file: PathBuf,
        /// Rows per segment.
        #[arg(long, default_value_t = 50_000)]
        rows_per_segment: usize,
        /// Register the last segment DONE too (default: it stays CONSUMING).
        #[arg(long)]
        seal_last: bool,
        /// Stream partition of the segments.
        #[arg(long, default_value_t = 0)]
        partition: i32,
        /// Segment store URI (same as the cluster's).
        #[arg(long, env = "R2O_STORE", default_value = "file:///var/lib/r2o/store")]
        store: String,
    },
    /// List a table's tasks: window, state, attempt, rows, error.
    Tasks {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
    /// Pause a table's flow: no new window is planned; running tasks finish.
    Pause {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
    /// Resume a paused flow.
    Resume {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
    /// Plan a table now instead of on the next tick (the buffer and CONSUMING rules still hold).
    RunNow {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
    /// Reset a flow: `append` abandons the in-flight task and continues from the watermark;
    /// `flush` deletes the table's OFFLINE segments and restarts from the earliest data.
    Reset {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
        /// append or flush.
        #[arg(long, value_parser = ["append", "flush"])]
        mode: String,
        /// Confirm a flush (without it, flush only says what it would delete).
        #[arg(long)]
        yes: bool,
    },
    /// Export every table's config and schema (flow configs, no runtime state) to a JSON file.
    Export {
        #[command(flatten)]
        conn: Conn,
        /// Output file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Import tables from an export file; existing tables are reported and skipped; imported flows start paused.
    Import {
        #[command(flatten)]
        conn: Conn,
        /// Export file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Make a throwaway CA and certificates for a small cluster (quickstart, tests).
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Bearer tokens for people and scripts (admin only).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// List the newest admin and operator actions: who, what, when, which table (operator role).
    Audit {
        #[command(flatten)]
        conn: Conn,
        /// How many of the newest actions.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print who the controller takes you for and your role.
    Whoami {
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a new round of attempts for a table's FAILED task now (after fixing its cause).
    Retry {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
    /// Show a table's watermark and why the next window is (not) being planned.
    Watermark {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
    /// Print a table's time boundary: the instant a query layer splits a
    /// hybrid query at (rows before it are in OFFLINE, the rest are read from
    /// REALTIME), i.e. the watermark. Exits 3 when no window is committed yet
    /// (everything is in REALTIME).
    TimeBoundary {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
    /// Wait until a table is idle: every eligible window committed.
    Wait {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Summarise a table's flow: windows, rows, segments, bytes.
    Report {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
}

#[derive(Subcommand)]
pub enum TableCmd {
    /// Register a table from Pinot's own REALTIME table config and schema JSON.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// Pinot table config JSON file.
        #[arg(long)]
        config: PathBuf,
        /// Pinot schema JSON file.
        #[arg(long)]
        schema: PathBuf,
        /// Register the flow paused (start it with `r2o resume`).
        #[arg(long)]
        paused: bool,
    },
    /// Copy a table's flow config (table config and schema) under a new name; the copy starts paused.
    Copy {
        #[command(flatten)]
        conn: Conn,
        /// Raw name of the table to copy.
        #[arg(long)]
        from: String,
        /// Raw name of the new table.
        #[arg(long)]
        to: String,
    },
    /// List tables.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a paused flow's table config and schema (nothing in flight): columns may be added
    /// (earlier segments read them as their defaultNullValue) and widened (INT -> LONG,
    /// FLOAT -> DOUBLE), config keys changed; windows committed afterwards use it.
    Update {
        #[command(flatten)]
        conn: Conn,
        /// Pinot table config JSON file.
        #[arg(long)]
        config: PathBuf,
        /// Pinot schema JSON file.
        #[arg(long)]
        schema: PathBuf,
        /// Only print the changes.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a table's stored config and schema, version, whether it is paused, and when it was
    /// added and last updated.
    Show {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        table: String,
    },
    /// Make the table's Delta Lake log (offline/<table>_OFFLINE/_delta_log/ in the store) hold
    /// exactly its committed OFFLINE segments, in one Delta commit; creates the log when there is
    /// none. Then Spark, Trino, DuckDB (delta_scan), Polars (read_delta) or Python's deltalake read
    /// the committed windows only, and earlier versions of the table.
    ExportDelta {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
    },
    /// Delete a paused flow with nothing in flight. Its data stays in place (adding the table
    /// again continues from the watermark) unless --purge, which also deletes the REALTIME and
    /// OFFLINE segments (metadata and files), lineage and watermark; --purge says what it
    /// would delete and needs --yes.
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
        /// Also delete the table's data.
        #[arg(long)]
        purge: bool,
        /// Confirm a purge.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum SegmentCmd {
    /// Upload Parquet files as REALTIME segments and register them: one (--file), every *.parquet
    /// of a directory (--dir), or the files a manifest lists (--manifest), registered in batches.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
        /// One Parquet file.
        #[arg(long, required_unless_present_any = ["dir", "manifest"], conflicts_with_all = ["dir", "manifest"])]
        file: Option<PathBuf>,
        /// A directory: every *.parquet in it, each named after its file stem.
        #[arg(long, conflicts_with = "manifest")]
        dir: Option<PathBuf>,
        /// A JSON manifest {"segments": [{"segmentName": .., "file": ..}]} (files relative to it).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Files per batch (read, uploaded and registered together) in bulk mode.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// CONSUMING or DONE.
        #[arg(long, default_value = "DONE")]
        status: String,
        /// Segment name (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Stream partition.
        #[arg(long, default_value_t = 0)]
        partition: i32,
        /// The segment is the last of its stream partition: it does not hold its last window back
        /// (Pinot's last-completed-segment rule applies to LLC-named segments).
        #[arg(long)]
        end_of_stream: bool,
        /// Segment store URI (same as the cluster's).
        #[arg(long, env = "R2O_STORE", default_value = "file:///var/lib/r2o/store")]
        store: String,
    },
    /// Mark a CONSUMING segment DONE.
    Seal {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
        /// Segment name.
        #[arg(long)]
        segment: String,
        /// The stream of the segment's partition ended with it: its last window is not held for more data.
        #[arg(long)]
        end_of_stream: bool,
    },
    /// List a table's segments (REALTIME and OFFLINE), REALTIME ones with their load status:
    /// PENDING (rows not yet in committed windows), LOADED, LOADED_WITH_ERRORS (some rows could
    /// not move: NULL time, late under lateDataPolicy ignore), SKIPPED (no row moves).
    List {
        #[command(flatten)]
        conn: Conn,
        /// Raw table name.
        #[arg(long)]
        table: String,
        /// Only REALTIME segments of this load status (PENDING, LOADED, LOADED_WITH_ERRORS,
        /// SKIPPED).
        #[arg(long)]
        status: Option<String>,
    },
}

/// `r2o certs`.
#[derive(Subcommand)]
pub enum CertsCmd {
    /// A new CA and the controller, minion and admin certificates under --dir
    /// (ca.pem, controller.pem/.key, minion.pem/.key, admin.pem/.key).
    Init {
        /// Output directory (refused if it holds a CA already).
        #[arg(long)]
        dir: PathBuf,
        /// Names and IP addresses of the controller's certificate (comma-separated).
        #[arg(long, default_value = "localhost,127.0.0.1", value_delimiter = ',')]
        hosts: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Sign one more certificate with the CA under --dir (<name>.pem, <name>.key).
    Issue {
        /// Directory of the CA (`certs init`).
        #[arg(long)]
        dir: PathBuf,
        /// File name of the certificate (e.g. ops).
        #[arg(long)]
        name: String,
        /// DNS names or IP addresses of the certificate (comma-separated); map one to a role
        /// with the controller's --cert-roles.
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
        /// First valid day, relative to today (negative: in the past).
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        from_days: i64,
        /// Last valid day, relative to today (negative: an expired certificate, for tests).
        #[arg(long, default_value_t = 365, allow_hyphen_values = true)]
        until_days: i64,
    },
}

/// `r2o token`.
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; it is printed once (store it: only its hash is kept).
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Whose token it is (a person, a script).
        #[arg(long)]
        name: String,
        /// reader, operator, admin (or minion).
        #[arg(long)]
        role: String,
    },
    /// Revoke a token by its id: its next call is refused.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        /// The token's id (12 hex digits, the part after `r2o_`).
        #[arg(long)]
        id: String,
    },
    /// List tokens: id, name, role, created (never the tokens).
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Calls one controller RPC: connect to `conn.controller`, call (again on
/// the leader when that controller is not it, see [`on_leader`]), turn a
/// gRPC status into an error with the controller's message; yields the reply.
macro_rules! rpc {
    ($conn:expr, $method:ident, $req:expr) => {{
        let req = $req;
        on_leader(&$conn.target()?, |mut c| {
            let req = req.clone();
            async move { c.$method(req).await.map(|r| r.into_inner()) }
        })
        .await?
    }};
}

fn print_rows(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

fn segment_json(s: &pb::Segment) -> serde_json::Value {
    json!({"segmentName": s.name, "tableName": s.table, "status": s.status, "startTimeMs": s.start_time_ms,
           "endTimeMs": s.end_time_ms, "totalDocs": s.num_rows, "sizeBytes": s.size_bytes,
           "location": s.location, "partition": s.partition, "nullTimeRows": s.null_time_rows,
           "loadStatus": s.load_status, "loadDetail": s.load_detail})
}

fn task_json(t: &pb::Task) -> serde_json::Value {
    json!({"id": t.id, "fromMs": t.from_ms, "windowStartMs": t.window_start_ms, "windowEndMs": t.window_end_ms,
           "windows": t.windows, "state": t.state,
           "attempt": t.attempt, "minion": t.minion, "trigger": t.trigger, "startedMs": t.started_ms, "rowsIn": t.rows_in, "rowsOut": t.rows_out,
           "inputCount": t.input_count, "outputCount": t.output_count, "rowsNullTime": t.rows_null_time,
           "rowsFiltered": t.rows_filtered,
           "error": t.error, "errors": t.errors,
           "createdMs": t.created_ms, "finishedMs": t.finished_ms})
}

/// Runs one admin command.
pub async fn run(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Table { cmd } => match cmd {
            TableCmd::Copy { conn, from, to } => {
                let mut c = client(&conn.target()?).await?;
                let t =
                    c.get_table(pb::GetTableRequest { table: from.clone() }).await.map_err(status_err)?.into_inner();
                let mut config: serde_json::Value = serde_json::from_str(&t.table_config_json)?;
                config["tableName"] = json!(format!("{to}_REALTIME"));
                let resp = c
                    .add_table(pb::AddTableRequest {
                        table_config_json: config.to_string(),
                        schema_json: t.schema_json,
                        paused: true,
                    })
                    .await
                    .map_err(status_err)?;
                println!(
                    "table {from} copied to {} (paused; start it with: r2o resume --table {to})",
                    resp.into_inner().table
                );
            }
            TableCmd::Add { conn, config, schema, paused } => {
                let config_json =
                    std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
                let schema_json =
                    std::fs::read_to_string(&schema).with_context(|| format!("reading {}", schema.display()))?;
                let resp =
                    rpc!(conn, add_table, pb::AddTableRequest { table_config_json: config_json, schema_json, paused });
                println!("table {} added", resp.table);
            }
            TableCmd::ExportDelta { conn, table } => {
                let r = rpc!(conn, export_delta, pb::TableRequest { table });
                match conn.output {
                    Output::Json => println!(
                        "{}",
                        json!({"table": r.table, "version": r.version, "added": r.added, "removed": r.removed,
                               "tableUrl": r.table_url, "revision": r.revision})
                    ),
                    Output::Table => println!(
                        "delta log of {} at version {}: {} file(s) added, {} removed (etcd revision {}); read it at {}",
                        r.table, r.version, r.added, r.removed, r.revision, r.table_url
                    ),
                }
            }
            TableCmd::List { conn } => {
                let t = rpc!(conn, list_tables, pb::ListTablesRequest {});
                match conn.output {
                    Output::Json => println!("{}", json!(t.tables)),
                    Output::Table => t.tables.iter().for_each(|t| println!("{t}")),
                }
            }
            TableCmd::Show { conn, table } => {
                let t = rpc!(conn, get_table, pb::GetTableRequest { table });
                let v = json!({"tableConfig": serde_json::from_str::<serde_json::Value>(&t.table_config_json)?,
                               "schema": serde_json::from_str::<serde_json::Value>(&t.schema_json)?,
                               "paused": t.paused, "version": t.version,
                               "createdMs": t.created_ms, "created": format_utc(t.created_ms),
                               "updatedMs": t.updated_ms,
                               "updated": if t.updated_ms > 0 { format_utc(t.updated_ms) } else { String::new() }});
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            TableCmd::Update { conn, config, schema, dry_run } => {
                let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
                let req =
                    pb::UpdateTableRequest { table_config_json: read(&config)?, schema_json: read(&schema)?, dry_run };
                let r = rpc!(conn, update_table, req);
                match conn.output {
                    Output::Json => println!(
                        "{}",
                        json!({"table": r.table, "version": r.version, "changes": r.changes, "done": r.done})
                    ),
                    Output::Table => {
                        if r.changes.is_empty() {
                            println!("table {}: nothing to change (version {})", r.table, r.version);
                        } else {
                            let what = if r.done { "updated to version" } else { "would change (dry run), at version" };
                            println!("table {} {what} {}:", r.table, r.version);
                            for c in &r.changes {
                                println!("  {c}");
                            }
                        }
                    }
                }
            }
            TableCmd::Delete { conn, table, purge, yes } => {
                let dry_run = purge && !yes;
                let r = rpc!(conn, delete_table, pb::DeleteTableRequest { table: table.clone(), purge, dry_run });
                let data = format!(
                    "{} REALTIME segment(s) ({} bytes), {} OFFLINE segment(s) ({} rows, {} bytes)",
                    r.realtime_segments, r.realtime_bytes, r.offline_segments, r.offline_rows, r.offline_bytes
                );
                match conn.output {
                    Output::Json => println!(
                        "{}",
                        json!({"table": r.table, "purge": r.purge, "done": r.done,
                               "realtimeSegments": r.realtime_segments, "realtimeBytes": r.realtime_bytes,
                               "offlineSegments": r.offline_segments, "offlineRows": r.offline_rows,
                               "offlineBytes": r.offline_bytes})
                    ),
                    Output::Table if !r.done => println!(
                        "would delete table {table} and its data: {data}. Nothing was deleted; add --yes to do it"
                    ),
                    Output::Table if purge => println!("deleted table {table} and its data: {data}"),
                    Output::Table => println!(
                        "deleted table {table}; its data stays in place: {data} (r2o table add with the same \
                         name continues from the watermark)"
                    ),
                }
            }
        },
        AdminCommand::Segment { cmd } => match cmd {
            SegmentCmd::Add {
                conn,
                table,
                file: None,
                dir,
                manifest,
                batch,
                status,
                partition,
                end_of_stream,
                store,
                ..
            } => {
                let files = ingest::bulk_files(dir.as_deref(), manifest.as_deref())?;
                if files.is_empty() {
                    bail!("no Parquet files found to register");
                }
                let start = Instant::now();
                let (n, rows) = ingest::add_segment_files(
                    &conn.target()?,
                    &store,
                    &table,
                    files,
                    &status,
                    partition,
                    end_of_stream,
                    batch,
                )
                .await?;
                println!("{n} segments ({rows} rows) registered in {:.1} s", start.elapsed().as_secs_f64());
            }
            SegmentCmd::Add {
                conn, table, file: Some(file), status, name, partition, end_of_stream, store, ..
            } => {
                let seg = ingest::add_segment_file(
                    &conn.target()?,
                    &store,
                    &table,
                    &file,
                    &status,
                    name,
                    partition,
                    end_of_stream,
                )
                .await?;
                println!(
                    "segment {} added: {} rows, {} .. {}, {}",
                    seg.name,
                    seg.num_rows,
                    format_utc(seg.start_time_ms),
                    format_utc(seg.end_time_ms),
                    seg.status
                );
            }
            SegmentCmd::Seal { conn, table, segment, end_of_stream } => {
                rpc!(conn, seal_segment, pb::SealSegmentRequest { table, segment: segment.clone(), end_of_stream });
                println!("segment {segment} sealed");
            }
            SegmentCmd::List { conn, table, status } => {
                let wanted = match status.as_deref() {
                    None => None,
                    Some(s) => Some(r2o_common::meta::LoadStatus::parse(s).with_context(|| {
                        format!("invalid --status '{s}': expected PENDING, LOADED, LOADED_WITH_ERRORS or SKIPPED")
                    })?),
                };
                let mut segs = on_leader(&conn.target()?, |mut c| {
                    let table = table.clone();
                    async move { list_segments(&mut c, &table).await }
                })
                .await?;
                if let Some(w) = wanted {
                    segs.retain(|s| s.load_status == w.name());
                }
                match conn.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&segs.iter().map(segment_json).collect::<Vec<_>>())?
                    ),
                    Output::Table => print_rows(
                        &["SEGMENT", "TABLE", "STATUS", "LOAD", "START", "END", "ROWS", "NULL TIME", "BYTES", "DETAIL"],
                        &segs
                            .iter()
                            .map(|s| {
                                vec![
                                    s.name.clone(),
                                    s.table.clone(),
                                    s.status.clone(),
                                    if s.load_status.is_empty() { "-".into() } else { s.load_status.clone() },
                                    format_utc(s.start_time_ms),
                                    format_utc(s.end_time_ms),
                                    s.num_rows.to_string(),
                                    s.null_time_rows.to_string(),
                                    s.size_bytes.to_string(),
                                    s.load_detail.clone(),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    ),
                }
            }
        },
        AdminCommand::Ingest { conn, table, file, rows_per_segment, seal_last, partition, store } => {
            ingest::ingest(&conn.target()?, &store, &table, &file, rows_per_segment, seal_last, partition).await?;
        }
        AdminCommand::Certs { cmd } => match cmd {
            CertsCmd::Init { dir, hosts, days } => {
                let v = crate::certs::Validity { from_days: -1, until_days: days.max(1) };
                let name = crate::certs::init(&dir, &hosts, v)?;
                println!("{name}: ca.pem, controller.pem, minion.pem, admin.pem (and keys) in {}", dir.display());
            }
            CertsCmd::Issue { dir, name, hosts, from_days, until_days } => {
                crate::certs::issue(&dir, &name, &hosts, crate::certs::Validity { from_days, until_days })?;
                println!("{}", dir.join(format!("{name}.pem")).display());
            }
        },
        AdminCommand::Token { cmd } => match cmd {
            TokenCmd::Create { conn, name, role } => {
                let r = rpc!(conn, create_token, pb::CreateTokenRequest { name, role });
                let info = r.info.unwrap_or_default();
                match conn.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"id": info.id, "name": info.name, "role": info.role, "token": r.token})
                        )?
                    ),
                    // the token alone on stdout, so `r2o token create ... > file` stores it
                    Output::Table => {
                        eprintln!("token {} for '{}' with role {} (shown once):", info.id, info.name, info.role);
                        println!("{}", r.token);
                    }
                }
            }
            TokenCmd::Revoke { conn, id } => {
                let r = rpc!(conn, revoke_token, pb::RevokeTokenRequest { id });
                let info = r.info.unwrap_or_default();
                println!("revoked token {} of '{}' (role {})", info.id, info.name, info.role);
            }
            TokenCmd::List { conn } => {
                let tokens = rpc!(conn, list_tokens, pb::ListTokensRequest {}).tokens;
                match conn.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &tokens
                                .iter()
                                .map(|t| json!({"id": t.id, "name": t.name, "role": t.role,
                                    "createdMs": t.created_ms, "createdBy": t.created_by}))
                                .collect::<Vec<_>>()
                        )?
                    ),
                    Output::Table => print_rows(
                        &["ID", "NAME", "ROLE", "CREATED", "BY"],
                        &tokens
                            .iter()
                            .map(|t| {
                                vec![
                                    t.id.clone(),
                                    t.name.clone(),
                                    t.role.clone(),
                                    format_utc(t.created_ms),
                                    t.created_by.clone(),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    ),
                }
            }
        },
        AdminCommand::Audit { conn, limit } => {
            let entries = rpc!(conn, list_audit, pb::ListAuditRequest { limit }).entries;
            match conn.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &entries
                            .iter()
                            .map(|e| json!({"atMs": e.at_ms, "who": e.who, "role": e.role, "call": e.call,
                                "table": e.table, "detail": e.detail, "outcome": e.outcome}))
                            .collect::<Vec<_>>()
                    )?
                ),
                Output::Table => print_rows(
                    &["AT", "WHO", "ROLE", "CALL", "TABLE", "DETAIL", "OUTCOME"],
                    &entries
                        .iter()
                        .map(|e| {
                            vec![
                                format_utc(e.at_ms),
                                e.who.clone(),
                                e.role.clone(),
                                e.call.clone(),
                                e.table.clone(),
                                e.detail.clone(),
                                e.outcome.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        AdminCommand::Whoami { conn } => {
            let r = rpc!(conn, who_am_i, pb::WhoAmIRequest {});
            match conn.output {
                Output::Json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({"name": r.name, "role": r.role, "via": r.via}))?
                    )
                }
                Output::Table => println!("{} (role {}, by {})", r.name, r.role, r.via),
            }
        }
        AdminCommand::Tasks { conn, table } => {
            let tasks = rpc!(conn, list_tasks, pb::ListTasksRequest { table }).tasks;
            match conn.output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&tasks.iter().map(task_json).collect::<Vec<_>>())?)
                }
                Output::Table => print_rows(
                    &[
                        "WINDOW START",
                        "WINDOW END",
                        "WINDOWS",
                        "TRIGGER",
                        "STATE",
                        "ATTEMPT",
                        "ROWS IN",
                        "ROWS OUT",
                        "NULL TIME",
                        "FILTERED",
                        "SEGMENTS",
                        "DURATION",
                        "ERROR",
                    ],
                    &tasks
                        .iter()
                        .map(|t| {
                            vec![
                                format_utc(t.window_start_ms),
                                format_utc(t.window_end_ms),
                                t.windows.to_string(),
                                t.trigger.clone(),
                                t.state.clone(),
                                t.attempt.to_string(),
                                t.rows_in.to_string(),
                                t.rows_out.to_string(),
                                t.rows_null_time.to_string(),
                                t.rows_filtered.to_string(),
                                t.output_count.to_string(),
                                if t.finished_ms > 0 && t.started_ms > 0 {
                                    format!("{:.2}s", (t.finished_ms - t.started_ms) as f64 / 1000.0)
                                } else {
                                    String::new()
                                },
                                t.error.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        AdminCommand::Pause { conn, table } => {
            rpc!(conn, pause_table, pb::TableRequest { table: table.clone() });
            println!("flow {table} paused");
        }
        AdminCommand::Resume { conn, table } => {
            rpc!(conn, resume_table, pb::TableRequest { table: table.clone() });
            println!("flow {table} resumed");
        }
        AdminCommand::RunNow { conn, table } => {
            let r = rpc!(conn, run_now, pb::TableRequest { table });
            match conn.output {
                Output::Json => println!("{}", json!({"taskId": r.task_id, "outcome": r.outcome})),
                Output::Table => println!("{}", r.outcome),
            }
        }
        AdminCommand::Reset { conn, table, mode, yes } => {
            let flush = mode == "flush";
            let req = |dry_run| pb::ResetTableRequest { table: table.clone(), mode: mode.clone(), dry_run };
            let plan = rpc!(conn, reset_table, req(true));
            if flush {
                let say = format!(
                    "flush of {table} deletes {} OFFLINE segments ({} rows, {} bytes) and the lineage of {} windows, \
                     resets the watermark (now {}) and restarts from the earliest REALTIME data{}",
                    plan.offline_segments,
                    plan.offline_rows,
                    plan.offline_bytes,
                    plan.windows,
                    plan.watermark_ms.map_or_else(|| "none".into(), format_utc),
                    if plan.abandoned_task.is_empty() {
                        String::new()
                    } else {
                        format!("; abandons task {}", plan.abandoned_task)
                    }
                );
                // the plan goes to stdout for people, to stderr when stdout is JSON
                match conn.output {
                    Output::Table => println!("{say}"),
                    Output::Json => eprintln!("{say}"),
                }
                if !yes {
                    bail!("not confirmed: run again with --yes to flush table {table}");
                }
            }
            let done = rpc!(conn, reset_table, req(false));
            match conn.output {
                Output::Json => println!(
                    "{}",
                    json!({"mode": done.mode, "offlineSegments": done.offline_segments, "offlineRows": done.offline_rows,
                           "windows": done.windows, "abandonedTask": done.abandoned_task, "done": done.done})
                ),
                Output::Table => println!(
                    "flow {table} reset ({}){}",
                    mode,
                    if done.abandoned_task.is_empty() {
                        String::new()
                    } else {
                        format!("; abandoned task {}", done.abandoned_task)
                    }
                ),
            }
        }
        AdminCommand::Export { conn, file } => {
            let mut c = client(&conn.target()?).await?;
            let names = c.list_tables(pb::ListTablesRequest {}).await.map_err(status_err)?.into_inner().tables;
            let mut tables = Vec::new();
            for name in &names {
                let t =
                    c.get_table(pb::GetTableRequest { table: name.clone() }).await.map_err(status_err)?.into_inner();
                tables.push(json!({
                    "name": name,
                    "tableConfig": serde_json::from_str::<serde_json::Value>(&t.table_config_json)?,
                    "schema": serde_json::from_str::<serde_json::Value>(&t.schema_json)?,
                }));
            }
            let doc = json!({"r2oExport": 1, "tables": tables});
            std::fs::write(&file, serde_json::to_string_pretty(&doc)?)
                .with_context(|| format!("writing {}", file.display()))?;
            println!("exported {} tables to {}", names.len(), file.display());
        }
        AdminCommand::Import { conn, file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let doc: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
            if doc["r2oExport"] != json!(1) {
                bail!(
                    "invalid {}: field r2oExport is {}, expected 1 (a file written by r2o export)",
                    file.display(),
                    doc["r2oExport"]
                );
            }
            let mut c = client(&conn.target()?).await?;
            let (mut added, mut skipped) = (0, 0);
            for (i, t) in doc["tables"].as_array().cloned().unwrap_or_default().iter().enumerate() {
                let name = t["name"].as_str().unwrap_or("?");
                let req = pb::AddTableRequest {
                    table_config_json: t["tableConfig"].to_string(),
                    schema_json: t["schema"].to_string(),
                    paused: true,
                };
                match c.add_table(req).await {
                    Ok(_) => {
                        added += 1;
                        println!("imported {name} (paused)");
                    }
                    Err(s) if s.code() == tonic::Code::AlreadyExists => {
                        skipped += 1;
                        println!("skipped {name}: it already exists");
                    }
                    Err(s) => bail!("tables[{i}] ({name}): {}", s.message()),
                }
            }
            println!("imported {added} tables, skipped {skipped}; start them with r2o resume --table <name>");
        }
        AdminCommand::Retry { conn, table } => {
            let r = rpc!(conn, retry_task, pb::RetryTaskRequest { table });
            println!("task {} re-armed", r.task_id);
        }
        AdminCommand::Watermark { conn, table } => {
            let w = rpc!(conn, get_watermark, pb::GetWatermarkRequest { table });
            match conn.output {
                Output::Json => println!(
                    "{}",
                    json!({"exists": w.exists, "watermarkMs": w.watermark_ms, "windowsCommitted": w.windows_committed,
                           "windowsSkipped": w.windows_skipped, "rowsIn": w.rows_in, "rowsOut": w.rows_out,
                           "rowsNullTime": w.rows_null_time, "next": w.next, "idle": w.idle,
                           "retentionMs": w.retention_ms,
                           "segmentsUnmovedPastRetention": w.segments_unmoved_past_retention,
                           "segmentsDeletedByRetention": w.segments_deleted_by_retention,
                           "timeZone": w.time_zone,
                           "schedule": w.schedule, "lastRunMs": w.last_run_ms, "lastRunTrigger": w.last_run_trigger,
                           "nextRunMs": w.next_run_ms, "lateProblems": w.late_problems,
                           "deltaVersion": w.delta_version, "deltaRevision": w.delta_revision,
                           "deltaHoldsWatermark": w.delta_holds_watermark, "deltaTableUrl": w.delta_table_url,
                           "watermarkLocal": if w.exists && !w.time_zone.is_empty() {
                               r2o_common::window::format_in_zone(w.watermark_ms, &w.time_zone)
                           } else { String::new() }})
                ),
                Output::Table => {
                    let at = if w.exists && !w.time_zone.is_empty() {
                        format!(
                            "{} ({} ms; {} in {})",
                            format_utc(w.watermark_ms),
                            w.watermark_ms,
                            r2o_common::window::format_in_zone(w.watermark_ms, &w.time_zone),
                            w.time_zone
                        )
                    } else if w.exists {
                        format!("{} ({} ms)", format_utc(w.watermark_ms), w.watermark_ms)
                    } else {
                        "none yet (cold start)".into()
                    };
                    println!(
                        "watermark: {at}\nwindows committed: {}\nwindows skipped: {}\nrows with a NULL time (not moved): {}\nnext: {}",
                        w.windows_committed, w.windows_skipped, w.rows_null_time, w.next
                    );
                    if !w.schedule.is_empty() {
                        let last = w.last_run_ms.map_or_else(
                            || "none yet".into(),
                            |t| format!("{} ({})", format_utc(t), w.last_run_trigger),
                        );
                        let next = w.next_run_ms.map_or_else(|| "-".into(), format_utc);
                        println!("schedule: {}; last run: {last}; next run: {next}", w.schedule);
                    }
                    if w.retention_ms > 0 {
                        println!(
                            "retention: {} ms; REALTIME segments deleted by it: {}; past it but kept (rows not moved): {}",
                            w.retention_ms, w.segments_deleted_by_retention, w.segments_unmoved_past_retention
                        );
                    }
                    for p in &w.late_problems {
                        println!("late data: {p}");
                    }
                    match w.delta_version {
                        Some(v) if w.delta_holds_watermark => println!(
                            "delta log: version {v} holds the watermark (etcd revision {}), at\n{}",
                            w.delta_revision, w.delta_table_url
                        ),
                        Some(v) => println!(
                            "delta log: version {v} (etcd revision {}) is behind the watermark; the leader is writing it, at\n{}",
                            w.delta_revision, w.delta_table_url
                        ),
                        None => println!("delta log: none yet (the leader writes it after the table's first change)"),
                    }
                }
            }
        }
        AdminCommand::TimeBoundary { conn, table } => {
            let w = rpc!(conn, get_watermark, pb::GetWatermarkRequest { table: table.clone() });
            if !w.exists {
                eprintln!("table {table} has no committed window yet: every row is in REALTIME (no time boundary)");
                std::process::exit(3);
            }
            match conn.output {
                Output::Json => println!(
                    "{}",
                    json!({"table": table, "timeBoundaryMs": w.watermark_ms, "timeBoundary": format_utc(w.watermark_ms)})
                ),
                Output::Table => println!("{} {}", w.watermark_ms, format_utc(w.watermark_ms)),
            }
        }
        AdminCommand::Wait { conn, table, timeout_secs } => {
            let mut c = client(&conn.target()?).await?;
            let start = Instant::now();
            let mut last = String::new();
            loop {
                let w = c
                    .get_watermark(pb::GetWatermarkRequest { table: table.clone() })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let line = format!(
                    "watermark {} | {} windows committed | {}",
                    if w.exists { format_utc(w.watermark_ms) } else { "-".into() },
                    w.windows_committed,
                    w.next
                );
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
                if w.idle {
                    break;
                }
                if start.elapsed() > Duration::from_secs(timeout_secs) {
                    bail!("table {table} is not idle after {timeout_secs} s: {}", w.next);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        AdminCommand::Report { conn, table } => report(&conn, &table).await?,
    }
    Ok(())
}

async fn report(conn: &Conn, table: &str) -> Result<()> {
    let target = conn.target()?;
    // the controller's status page for this table (same port, reader role)
    let status_page = format!("{}/status/tables/{table}", target.addr.trim_end_matches('/'));
    let mut c = client(&target).await?;
    let w = c.get_watermark(pb::GetWatermarkRequest { table: table.into() }).await.map_err(status_err)?.into_inner();
    let segs = list_segments(&mut c, table).await.map_err(status_err)?;
    let tasks =
        c.list_tasks(pb::ListTasksRequest { table: table.into() }).await.map_err(status_err)?.into_inner().tasks;
    let part = |suffix: &str| segs.iter().filter(|s| s.table.ends_with(suffix)).collect::<Vec<_>>();
    let (rt, off) = (part("_REALTIME"), part("_OFFLINE"));
    let done: Vec<&pb::Task> = tasks.iter().filter(|t| t.state == "SUCCEEDED").collect();
    let v = json!({
        "table": table,
        "watermarkMs": w.watermark_ms,
        "watermark": if w.exists { format_utc(w.watermark_ms) } else { String::new() },
        "windowsCommitted": w.windows_committed,
        "windowsSkipped": w.windows_skipped,
        "rowsIn": done.iter().map(|t| t.rows_in).sum::<u64>(),
        "rowsOut": done.iter().map(|t| t.rows_out).sum::<u64>(),
        "realtimeSegments": rt.len(),
        "realtimeRows": rt.iter().map(|s| s.num_rows).sum::<u64>(),
        "realtimeConsuming": rt.iter().filter(|s| s.status == "CONSUMING").count(),
        "offlineSegments": off.len(),
        "offlineRows": off.iter().map(|s| s.num_rows).sum::<u64>(),
        "offlineBytes": off.iter().map(|s| s.size_bytes).sum::<u64>(),
        "failedTasks": tasks.iter().filter(|t| t.state == "FAILED").count(),
        "next": w.next,
        "schedule": w.schedule,
        "lastRun": w.last_run_ms.map(format_utc).unwrap_or_default(),
        "lastRunTrigger": w.last_run_trigger,
        "nextRun": w.next_run_ms.map(format_utc).unwrap_or_default(),
        "statusPage": status_page,
    });
    match conn.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Table => {
            println!("table {table}");
            println!("  watermark            {}", v["watermark"].as_str().unwrap_or_default());
            println!("  windows committed    {} (+{} empty windows skipped)", w.windows_committed, w.windows_skipped);
            println!("  rows in (windows)    {}", v["rowsIn"]);
            println!("  rows out             {}", v["rowsOut"]);
            println!(
                "  REALTIME segments    {} ({} rows, {} CONSUMING)",
                rt.len(),
                v["realtimeRows"],
                v["realtimeConsuming"]
            );
            println!("  OFFLINE segments     {} ({} rows, {} bytes)", off.len(), v["offlineRows"], v["offlineBytes"]);
            println!("  failed tasks         {}", v["failedTasks"]);
            if !w.schedule.is_empty() {
                println!(
                    "  schedule             {} (last run {} {}, next run {})",
                    w.schedule,
                    v["lastRun"].as_str().unwrap_or_default(),
                    w.last_run_trigger,
                    v["nextRun"].as_str().unwrap_or_default()
                );
            }
            println!("  next                 {}", w.next);
            println!("  status page          {status_page} (a reader token is its password)");
        }
    }
    Ok(())
}
