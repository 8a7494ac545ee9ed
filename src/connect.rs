//! Connecting to a controller, for the admin CLI and ingest: any
//! controller's address will do; calls that need the leader go there. With
//! TLS (the default) the controller's certificate is verified against the
//! CA file, the CLI presents its own certificate when it has one, and a
//! bearer token (`R2O_TOKEN` or `--token-file`) goes with every call.

use anyhow::{bail, Context, Result};
use r2o_proto::controller::controller_service_client::ControllerServiceClient;
use std::path::PathBuf;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Adds the bearer token, when there is one, to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

/// A controller client that carries the caller's credentials.
pub type Client = ControllerServiceClient<InterceptedService<Channel, Bearer>>;

/// How the CLI proves who it is and checks the controller (its settings).
#[derive(Default)]
pub struct Credentials {
    /// Plain text (`--insecure`).
    pub insecure: bool,
    /// CA file of the controller's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate file.
    pub cert: Option<PathBuf>,
    /// Its key file.
    pub key: Option<PathBuf>,
    /// Name to verify the controller's certificate against.
    pub server_name: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// File whose first line is the bearer token.
    pub token_file: Option<PathBuf>,
}

/// Where the controller is and how to prove who we are.
#[derive(Clone)]
pub struct Target {
    /// `https://host:port` (or `http://` with `--insecure`).
    pub addr: String,
    tls: Option<ClientTlsConfig>,
    bearer: Bearer,
}

impl Target {
    /// From the CLI's settings: `insecure` (plain text), else the CA file
    /// (required), optionally a client certificate and key and the name to
    /// verify the controller's certificate against; a token from `token` or
    /// the first line of `token_file`.
    ///
    /// Errors: TLS without a CA file, a certificate without its key,
    /// unreadable files, a token that is not an r2o token.
    pub fn new(addr: Option<String>, c: Credentials) -> Result<Target> {
        let Credentials { insecure, ca, cert, key, server_name, token, token_file } = c;
        let scheme = if insecure { "http" } else { "https" };
        let addr = addr.unwrap_or_else(|| format!("{scheme}://127.0.0.1:7700"));
        let tls = if insecure {
            None
        } else {
            let Some(ca) = ca else {
                bail!(
                    "TLS is on by default: --tls-ca (R2O_TLS_CA) must name the CA file that signed the controller's \
                     certificate, or pass --insecure for a plain-text cluster"
                );
            };
            let identity = match (&cert, &key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => bail!("--tls-cert and --tls-key (R2O_TLS_CERT, R2O_TLS_KEY) go together: give both or neither"),
            };
            let tls = r2o_common::tls::client_config(&ca, identity)?;
            Some(match server_name {
                Some(n) => tls.domain_name(n),
                None => tls,
            })
        };
        let token = match (token.filter(|t| !t.trim().is_empty()), token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(&f)
                    .with_context(|| format!("reading the token file {}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let bearer = match token {
            Some(t) => {
                if r2o_common::access::token_id(&t).is_none() {
                    bail!("the token (R2O_TOKEN or --token-file) is not an r2o token: expected r2o_<12 hex>_<64 hex>");
                }
                Some(format!("Bearer {t}").parse().context("the token holds characters a header cannot")?)
            }
            None => None,
        };
        Ok(Target { addr, tls, bearer: Bearer(bearer) })
    }

    /// The same credentials at another address (the leader).
    fn at(&self, addr: &str) -> Target {
        Target { addr: addr.to_string(), ..self.clone() }
    }
}

/// The leader's address named by a controller's "not the leader" reply.
fn leader_named(s: &tonic::Status) -> Option<String> {
    let rest = s.message().split("not the leader (leader: ").nth(1)?;
    let addr = rest.split(')').next()?.trim();
    (addr.starts_with("http") && addr != "unknown").then(|| addr.to_string())
}

/// Runs `call` on the controller at `target` and, when that controller is
/// not the leader and the call needs one (reset, run now, retry, delete),
/// once more on the leader its reply names: any controller's address will do.
pub async fn on_leader<T, F, Fut>(target: &Target, call: F) -> Result<T>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    match call(client(target).await?).await {
        Err(s) => match leader_named(&s) {
            Some(leader) if leader.trim_end_matches('/') != target.addr.trim_end_matches('/') => {
                call(client(&target.at(&leader)).await?).await.map_err(status_err)
            }
            _ => Err(status_err(s)),
        },
        Ok(v) => Ok(v),
    }
}

/// Every segment of `table`, REALTIME then OFFLINE, each in name order:
/// ListSegments asked page after page (the controller answers at most
/// 10,000 segments at a time) until an answer has no `next_page_token`. A
/// listing whose etcd revision was compacted between two pages is started
/// again, up to 3 times.
///
/// # Errors
/// A page's status (a table that does not exist; a listing compacted a
/// fourth time).
pub async fn list_segments(
    c: &mut Client,
    table: &str,
) -> std::result::Result<Vec<r2o_proto::controller::Segment>, tonic::Status> {
    let mut restarts = 0;
    let (mut out, mut page_token) = (Vec::new(), String::new());
    loop {
        let req = r2o_proto::controller::ListSegmentsRequest { table: table.into(), page_size: 0, page_token };
        let page = match c.list_segments(req).await {
            Ok(page) => page.into_inner(),
            Err(s) if restarts < 3 && listing_compacted(&s) => {
                restarts += 1;
                (out, page_token) = (Vec::new(), String::new());
                continue;
            }
            Err(s) => return Err(s),
        };
        out.extend(page.segments);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Whether a ListSegments status asks for the listing to start again (its
/// etcd revision was compacted between two pages). Pure.
fn listing_compacted(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::FailedPrecondition && s.message().contains(r2o_controller::service::LIST_AGAIN)
}

/// Connects to a controller. Replies may be large (a table's segment list
/// at tens of thousands of segments): up to 1 GiB is accepted.
pub async fn client(target: &Target) -> Result<Client> {
    let addr = &target.addr;
    let mut endpoint = Endpoint::from_shared(addr.clone()).with_context(|| format!("controller address {addr}"))?;
    if let Some(tls) = &target.tls {
        if addr.starts_with("http://") {
            bail!(
                "controller address {addr}: TLS is on, expected https:// (or pass --insecure for a plain-text cluster)"
            );
        }
        endpoint = endpoint.tls_config(tls.clone()).with_context(|| format!("tls settings for {addr}"))?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("connecting to the controller at {addr}"))?;
    Ok(ControllerServiceClient::with_interceptor(channel, target.bearer.clone()).max_decoding_message_size(1 << 30))
}

/// A gRPC status as an error with the controller's message; a refusal by
/// role or credentials says so in one line.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unauthenticated => anyhow::anyhow!("not authenticated: {}", s.message()),
        tonic::Code::PermissionDenied => anyhow::anyhow!("permission denied: {}", s.message()),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_compacted_listing_is_started_again() {
        let again = format!("the listing's etcd revision 7 was compacted: {}", r2o_controller::service::LIST_AGAIN);
        assert!(listing_compacted(&tonic::Status::failed_precondition(again.clone())));
        assert!(!listing_compacted(&tonic::Status::invalid_argument(again)));
        assert!(!listing_compacted(&tonic::Status::failed_precondition("table 'x' is paused")));
    }
}
