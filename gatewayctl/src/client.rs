//! The connection to gatewayd's admin API: connects to `--addr`, adds
//! `authorization: Bearer <token>` to every call when `--token` is given (the token is never
//! printed), and turns gRPC failures into one line an operator understands — "cannot reach
//! gatewayd at …" when nothing answers, the server's own words for NOT_FOUND and
//! UNAUTHENTICATED, and `CODE: message` for the rest.

use std::error::Error as _;
use std::time::Duration;

use anyhow::anyhow;
use gateway_proto::admin::admin_client::AdminClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call (not the event stream) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin client with the bearer-token interceptor.
pub type Client = AdminClient<InterceptedService<Channel, Auth>>;

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connected client and what is needed to explain its failures.
pub struct Api {
    /// The gRPC client.
    pub client: Client,
    addr: String,
}

/// Checks `--addr`: an `http://HOST:PORT` URL; a bare `HOST:PORT` gets `http://`.
pub fn parse_addr(s: &str) -> Result<String, String> {
    let url = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| format!("`{s}` is not an address: {e}; use http://HOST:PORT"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "`{s}`: only plain http://HOST:PORT is supported (the admin API has no TLS)"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{s}` has no host; use http://HOST:PORT"));
    }
    Ok(url)
}

impl Api {
    /// Connects to `addr` (already checked by [`parse_addr`]). `streaming` leaves calls without
    /// a time limit, for the event stream.
    pub async fn connect(addr: &str, token: Option<&str>, streaming: bool) -> anyhow::Result<Api> {
        let auth = match token {
            None => Auth(None),
            Some(token) => {
                // The token is never echoed, not even in this error.
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {token}").parse().map_err(|_| {
                        anyhow!("the token (--token / GATEWAYCTL_TOKEN) must be printable ASCII")
                    })?;
                value.set_sensitive(true);
                Auth(Some(value))
            }
        };
        let mut endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| anyhow!("bad --addr `{addr}`: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT);
        if !streaming {
            endpoint = endpoint.timeout(CALL_TIMEOUT);
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable_error(addr, &e))?;
        Ok(Api {
            client: AdminClient::with_interceptor(channel, auth),
            addr: addr.to_owned(),
        })
    }

    /// The one-line error for a failed call.
    pub fn error(&self, status: Status) -> anyhow::Error {
        call_error(&self.addr, &status)
    }

    /// The one-line error for a stream that broke after it was established: the daemon
    /// stopped or the connection dropped, rather than "cannot reach".
    pub fn stream_error(&self, status: Status) -> anyhow::Error {
        if status.source().is_some() {
            anyhow!(
                "lost the connection to gatewayd at {}: {}",
                self.addr,
                root_cause(&status)
            )
        } else {
            self.error(status)
        }
    }
}

/// The innermost cause of `e`: "Connection refused (os error 111)" rather than
/// "transport error".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Runs one call under the usual time limit. For connections made with `streaming` (which
/// leaves calls unlimited): `workflows run --wait` follows the event stream and still gives up
/// on a call that hangs.
pub async fn within<T>(
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "gatewayd did not answer within {}s",
                CALL_TIMEOUT.as_secs()
            )))
        })
}

/// "cannot reach gatewayd at …; start it with …".
fn unreachable_error(addr: &str, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    anyhow!(
        "cannot reach gatewayd at {addr}: {}; start it with `cargo run --release --bin gatewayd` \
         (or check --addr / GATEWAYCTL_ADDR)",
        root_cause(e)
    )
}

/// The one-line error for a failed call to gatewayd at `addr`.
pub fn call_error(addr: &str, status: &Status) -> anyhow::Error {
    let message = status.message();
    match status.code() {
        // A status made on this side from a transport failure (the daemon went away).
        Code::Unavailable | Code::Unknown if status.source().is_some() => {
            unreachable_error(addr, status)
        }
        Code::NotFound if !message.is_empty() => anyhow!("{message}"),
        Code::Unauthenticated if message.contains("--token") => anyhow!("{message}"),
        Code::Unauthenticated => anyhow!(
            "{}; pass the admin token with --token or GATEWAYCTL_TOKEN",
            if message.is_empty() {
                "gatewayd refused the call"
            } else {
                message
            }
        ),
        code if message.is_empty() => anyhow!("{}", code_name(code)),
        code => anyhow!("{}: {message}", code_name(code)),
    }
}

/// The canonical gRPC name of a code, e.g. `FAILED_PRECONDITION`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme_and_bad_ones_are_refused() {
        assert_eq!(
            parse_addr("http://127.0.0.1:50051").as_deref(),
            Ok("http://127.0.0.1:50051")
        );
        assert_eq!(
            parse_addr("127.0.0.1:9").as_deref(),
            Ok("http://127.0.0.1:9")
        );
        for bad in ["https://host:1", "ftp://x", "http://", "not a url"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_become_operator_sentences() {
        let addr = "http://127.0.0.1:1";
        let e = |s: Status| call_error(addr, &s).to_string();
        assert_eq!(
            e(Status::not_found("no session user:99")),
            "no session user:99"
        );
        assert_eq!(
            e(Status::unauthenticated("the bearer token is not valid")),
            "the bearer token is not valid; pass the admin token with --token or GATEWAYCTL_TOKEN"
        );
        assert_eq!(
            e(Status::unauthenticated(
                "a bearer token is required; pass --token or set GATEWAYCTL_TOKEN"
            )),
            "a bearer token is required; pass --token or set GATEWAYCTL_TOKEN"
        );
        assert_eq!(
            e(Status::failed_precondition("session is busy")),
            "FAILED_PRECONDITION: session is busy"
        );
        assert_eq!(e(Status::internal("")), "INTERNAL");
        // A server-sent UNAVAILABLE (no local transport cause) is not "cannot reach".
        assert_eq!(
            e(Status::unavailable("the gateway is shutting down")),
            "UNAVAILABLE: the gateway is shutting down"
        );
    }

    #[test]
    fn the_token_is_sent_as_a_bearer_header() {
        let mut auth = Auth(Some("Bearer s3cret".parse().expect("ascii")));
        let r = auth.call(Request::new(())).expect("intercepted");
        assert_eq!(
            r.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer s3cret")
        );
        let r = Auth(None).call(Request::new(())).expect("intercepted");
        assert!(r.metadata().get("authorization").is_none());
    }
}
