//! The controller's errors and their one mapping to gRPC codes.

use r2o_common::{ConfigError, Error as CommonError};

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// This controller is a standby; retryable against the leader.
    #[error("not the leader (leader: {leader})")]
    NotLeader {
        /// The leader's address, or `unknown`.
        leader: String,
    },
    /// A named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A named thing exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request was valid once but no longer is (stale attempt, lost claim).
    #[error("{0}")]
    Stale(String),
    /// A write lost a race with other writes and nothing was changed; the
    /// caller should send the same call again.
    #[error("{0}")]
    Conflict(String),
    /// A completion report failed validation; nothing was committed.
    #[error("validation failed: {0}")]
    Validation(String),
    /// Bad input from the caller.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad request argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Store, etcd or data error.
    #[error(transparent)]
    Common(#[from] CommonError),
}

impl ControllerError {
    /// As the shared layer's error, for loops that report in its terms: a
    /// store, etcd or data error as it is, anything else as its message.
    pub fn into_common(self) -> CommonError {
        match self {
            ControllerError::Common(c) => c,
            other => CommonError::Meta(other.to_string()),
        }
    }

    /// Whether the caller may retry the same call.
    pub fn is_retryable(&self) -> bool {
        match self {
            ControllerError::NotLeader { .. } | ControllerError::Conflict(_) => true,
            ControllerError::Common(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Longest error message a reply carries, bytes: a message echoes the
/// caller's values, and gRPC sends it in a header (HTTP/2 refuses headers
/// past 16 KiB by default, which would hide the refusal itself).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `msg` cut to [`MAX_MESSAGE_BYTES`] on a character boundary, saying how
/// long it was. Pure.
pub fn bounded_message(msg: String) -> String {
    if msg.len() <= MAX_MESSAGE_BYTES {
        return msg;
    }
    let mut cut = MAX_MESSAGE_BYTES;
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... (message cut: {} bytes in all)", &msg[..cut], msg.len())
}

impl From<ControllerError> for tonic::Status {
    fn from(e: ControllerError) -> tonic::Status {
        use tonic::Status;
        let msg = bounded_message(e.to_string());
        match e {
            ControllerError::NotLeader { .. } => Status::unavailable(msg),
            ControllerError::NotFound(_) => Status::not_found(msg),
            ControllerError::Conflict(_) => Status::aborted(msg),
            ControllerError::AlreadyExists(_) => Status::already_exists(msg),
            ControllerError::Stale(_) | ControllerError::Validation(_) => Status::failed_precondition(msg),
            ControllerError::Config(_) | ControllerError::Invalid(_) => Status::invalid_argument(msg),
            ControllerError::Common(c) => match c {
                CommonError::Config(_) => Status::invalid_argument(msg),
                CommonError::Segment { .. } => Status::invalid_argument(msg),
                c if c.is_retryable() => Status::unavailable(msg),
                _ => Status::internal(msg),
            },
        }
    }
}

/// Shorthand.
pub type Result<T, E = ControllerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_message("short".into()), "short");
        let long = "é".repeat(5000);
        let cut = bounded_message(long.clone());
        assert!(cut.len() < 4200 && cut.ends_with("(message cut: 10000 bytes in all)"), "{}", cut.len());
        let status: tonic::Status = ControllerError::Invalid(long).into();
        assert!(status.message().len() < 4200);
    }
}
