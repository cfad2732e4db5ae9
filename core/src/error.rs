//! Errors a domain answers a client with. Each variant maps to one gRPC status code in the
//! shell; the message is written for a person.

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    /// A deadline the client set has passed (an expired transaction).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The store failed or holds bytes we cannot decode. Fatal for the node.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

pub type CoreResult<T> = Result<T, CoreError>;
