//! Why a DLQ command is refused or failed, typed so that each front-end
//! answers it its way (the console with a status, the CLI with one
//! message) without deciding the rules again.

use anyhow::Context as _;

/// Why a DLQ command did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The request itself is wrong (an id, a filter, a choice of
    /// entries); the message says how to ask.
    #[error("{0}")]
    BadRequest(String),
    /// There is no such DLQ to work on: a name that cannot be a
    /// subscriber's, or a DLQ these commands do not reach.
    #[error("{0}")]
    NotFound(String),
    /// The request is sound, but the bus refuses it as it stands: what is
    /// replayed would wait in a stream nobody reads.
    #[error("{0}")]
    Conflict(String),
    /// Redis failed or did not answer: what was done stays done (each
    /// entry moves atomically), the rest was not.
    #[error("{0:#}; try again once Redis answers (what a replay or purge had done stays done)")]
    Unavailable(anyhow::Error),
}

/// Turns a Redis error into [`DlqError::Unavailable`], saying what could
/// not be done.
pub(super) trait OrUnavailable<T> {
    fn or_unavailable(self, what: impl FnOnce() -> String) -> Result<T, DlqError>;
}

impl<T> OrUnavailable<T> for redis::RedisResult<T> {
    fn or_unavailable(self, what: impl FnOnce() -> String) -> Result<T, DlqError> {
        self.with_context(what).map_err(DlqError::Unavailable)
    }
}
