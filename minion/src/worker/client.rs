//! The minion's one long-lived gRPC channel to the leader: found through
//! `election/leader`, built with a connect timeout, a per-request deadline
//! and HTTP/2 keep-alive pings (so a dead peer is noticed, not waited on),
//! and rebuilt only when the leader's address changes or a call fails at the
//! transport level.

use r2o_common::kv::Kv;
use r2o_common::meta::{get_record, Keys, LeaderRecord};
use r2o_common::tls::Transport;
use r2o_proto::controller::controller_service_client::ControllerServiceClient;
use std::time::Duration;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

/// Timeouts of the channel, derived from the `rpc_timeout_secs` setting.
#[derive(Debug, Clone, Copy)]
pub struct ChannelTimeouts {
    /// Deadline of each call.
    pub request: Duration,
    /// Deadline of establishing the connection.
    pub connect: Duration,
    /// Interval of HTTP/2 keep-alive pings; a ping unanswered for the same
    /// time closes the connection.
    pub keep_alive: Duration,
}

impl ChannelTimeouts {
    /// From one request deadline: connect within min(5 s, deadline), ping
    /// every min(10 s, deadline).
    pub fn from_request(request: Duration) -> ChannelTimeouts {
        ChannelTimeouts {
            request,
            connect: request.min(Duration::from_secs(5)),
            keep_alive: request.min(Duration::from_secs(10)),
        }
    }
}

/// Builds a channel to `addr` with `t`'s timeouts (connects lazily); with
/// TLS, the certificate files are read now (a rotation is picked up by the
/// next channel) and the controller must present a certificate from the CA.
pub fn channel(
    addr: &str,
    t: ChannelTimeouts,
    transport: &Transport,
    server_name: Option<&str>,
) -> Result<Channel, String> {
    let mut endpoint =
        Endpoint::from_shared(addr.to_string()).map_err(|e| format!("bad controller address {addr}: {e}"))?;
    if let Transport::Tls(files) = transport {
        if !addr.starts_with("https://") {
            return Err(format!(
                "controller address {addr}: TLS is on, expected https:// (the controller's --advertise)"
            ));
        }
        let mut tls = files.client_config().map_err(|e| e.to_string())?;
        if let Some(name) = server_name {
            tls = tls.domain_name(name);
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("tls settings for {addr}: {e}"))?;
    }
    Ok(endpoint
        .connect_timeout(t.connect)
        .timeout(t.request)
        .http2_keep_alive_interval(t.keep_alive)
        .keep_alive_timeout(t.keep_alive)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(t.keep_alive))
        .connect_lazy())
}

/// The cached client of the current leader.
pub struct LeaderClient {
    kv: Kv,
    keys: Keys,
    timeouts: ChannelTimeouts,
    transport: Transport,
    server_name: Option<String>,
    cached: Mutex<Option<(String, ControllerServiceClient<Channel>)>>,
}

impl LeaderClient {
    /// A client that finds the leader in `kv`.
    pub fn new(
        kv: Kv,
        keys: Keys,
        timeouts: ChannelTimeouts,
        transport: Transport,
        server_name: Option<String>,
    ) -> LeaderClient {
        LeaderClient { kv, keys, timeouts, transport, server_name, cached: Mutex::new(None) }
    }

    /// A client of the current leader (the cached channel when the leader
    /// has not changed).
    pub async fn get(&self) -> Result<ControllerServiceClient<Channel>, String> {
        let leader = get_record::<LeaderRecord>(&self.kv, &self.keys.leader())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no controller leads right now")?
            .0;
        let mut cached = self.cached.lock().await;
        if let Some((addr, c)) = cached.as_ref() {
            if *addr == leader.addr {
                return Ok(c.clone());
            }
        }
        let c = ControllerServiceClient::new(channel(
            &leader.addr,
            self.timeouts,
            &self.transport,
            self.server_name.as_deref(),
        )?);
        *cached = Some((leader.addr, c.clone()));
        Ok(c)
    }

    /// Drops the cached channel (after a transport failure).
    pub async fn reset(&self) {
        *self.cached.lock().await = None;
    }
}
