//! Connecting to a controller, for the admin CLI and ingest: any
//! controller's address will do; calls that need the leader go there.

use anyhow::{Context, Result};
use r2o_proto::controller::controller_service_client::ControllerServiceClient;
use tonic::transport::Channel;

/// The leader's address named by a controller's "not the leader" reply.
fn leader_named(s: &tonic::Status) -> Option<String> {
    let rest = s.message().split("not the leader (leader: ").nth(1)?;
    let addr = rest.split(')').next()?.trim();
    (addr.starts_with("http") && addr != "unknown").then(|| addr.to_string())
}

/// Runs `call` on the controller at `addr` and, when that controller is not
/// the leader and the call needs one (reset, run now, retry, delete), once
/// more on the leader its reply names: any controller's address will do.
pub async fn on_leader<T, F, Fut>(addr: &str, call: F) -> Result<T>
where
    F: Fn(ControllerServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    match call(client(addr).await?).await {
        Err(s) => match leader_named(&s) {
            Some(leader) if leader.trim_end_matches('/') != addr.trim_end_matches('/') => {
                call(client(&leader).await?).await.map_err(status_err)
            }
            _ => Err(status_err(s)),
        },
        Ok(v) => Ok(v),
    }
}

/// Connects to a controller. Replies may be large (a table's segment list
/// at tens of thousands of segments): up to 1 GiB is accepted.
pub async fn client(addr: &str) -> Result<ControllerServiceClient<Channel>> {
    Ok(ControllerServiceClient::connect(addr.to_string())
        .await
        .with_context(|| format!("connecting to the controller at {addr}"))?
        .max_decoding_message_size(1 << 30))
}

/// A gRPC status as an error with the controller's message.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}
