//! The gRPC admin API: `gateway.admin.v1.Admin` (see `proto/`), gRPC health and reflection, on
//! `[admin] listen`.
//!
//! When a token is configured (`admin.token_env` or `admin.token_file`) every admin call must
//! carry `authorization: Bearer <token>`; the comparison takes constant time and the token is
//! never logged. The configuration refuses a non-loopback address without a token. Health and
//! reflection answer without a token: they reveal nothing but the API's shape.
//!
//! **Only this module knows proto types;** `convert.rs` turns domain types into them.

pub mod convert;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use gateway_proto::admin::admin_server::AdminServer;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

pub use service::{AdminService, AdminState, ClusterInfo};

/// Checks the bearer token of a request, in constant time.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<[u8]>>,
}

impl TokenCheck {
    /// Requires `token`, or nothing when `None`.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.into_bytes().into_boxed_slice())),
        }
    }

    /// The interceptor.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "a bearer token is required; pass --token or set GATEWAYCTL_TOKEN",
                )
            })?;
        if bool::from(given.as_bytes().ct_eq(expected)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("the bearer token is not valid"))
        }
    }
}

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gateway_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let check = TokenCheck::new(token);
    let admin = AdminServer::with_interceptor(AdminService::new(state), move |r| check.check(r));
    let mut router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(admin);
    match reflection {
        Ok(r) => router = router.add_service(r),
        Err(e) => tracing::warn!(message = "gRPC reflection unavailable.", error = %e),
    }
    // TCP_NODELAY on every accepted connection: a response is several small HTTP/2 frames,
    // and with Nagle's algorithm the last ones wait for the client's delayed ACK (~40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// Whether `addr` may serve the admin API without a token.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(v) = value {
            r.metadata_mut()
                .insert("authorization", v.parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn tokens_are_checked() {
        let open = TokenCheck::new(None);
        assert!(open.check(with_auth(None)).is_ok());
        let closed = TokenCheck::new(Some("s3cret".into()));
        assert!(closed.check(with_auth(Some("Bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Bearer s3cret2"),
        ] {
            let err = closed.check(with_auth(bad)).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!err.message().contains("s3cret"), "the token never leaks");
        }
    }
}
