//! Everything the agent says to etcd, and only here: the client
//! ([`client`]), the lease keeper ([`lease`]), the one snapshot + watch
//! loop over the prefix ([`sync`]), this host's registration
//! ([`registration`]), floating-IP ownership ([`election`]) and the
//! ordered writes of this host's VIP keys ([`writer`]), and what the admin
//! commands and the API change ([`admin`]).

pub mod admin;
pub mod client;
pub mod election;
pub mod lease;
pub mod registration;
pub mod sync;
pub mod vip_list;
pub mod writer;

use std::time::Duration;

pub use client::{Access, MAX_REPLY, connect, keep_endpoints, read_prefix};

/// One etcd request may take this long before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("connecting to etcd at {endpoints}: {detail}")]
    Connect {
        endpoints: String,
        /// The error and its causes, on one line (TLS and auth failures
        /// say what is wrong only in the causes).
        detail: String,
    },
    #[error("{what}: {source}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{what}: no answer from etcd within {REQUEST_TIMEOUT:?}")]
    Timeout { what: String },
    #[error("{0}")]
    Seal(#[from] crate::registry::record::SealError),
    /// The change conflicts with what etcd holds (a name taken, say).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is not valid.
    #[error("{0}")]
    Invalid(#[from] crate::registry::Invalid),
    /// A watch ended or was cancelled.
    #[error("{0}")]
    Stream(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
}

pub(crate) async fn timed<T>(
    what: impl Fn() -> String,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Etcd {
            what: what(),
            source,
        }),
        Err(_) => Err(EtcdError::Timeout { what: what() }),
    }
}
