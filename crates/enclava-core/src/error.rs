//! One error space for every service and client: an [`ErrorCode`] with a stable wire name, one HTTP
//! status and one gRPC code, the JSON body every REST error and node refusal carries
//! ([`ErrorBody`]), and the [`Error`] the components return. A refusal has the same code whether
//! it travels over gRPC, REST, a node's answer or the CLI's message.

use serde::{Deserialize, Serialize};

/// What kind of failure, as every transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed; sending it again will not help.
    InvalidArgument,
    /// The workload's input is not what it takes (a tensor of the wrong shape, …).
    BadInput,
    /// A sealed request does not open: tampered with, or sealed to another key or context.
    Tampered,
    /// A sealed request was already received (its request id is in the replay window).
    Replayed,
    /// A sealed request's time is too far from the receiver's clock.
    Stale,
    /// No credential, or one the service does not know.
    Unauthenticated,
    /// The caller may not do this.
    PermissionDenied,
    /// The key broker does not release what this needs to this enclave (grant it).
    NotGranted,
    NotFound,
    /// What the request would create exists already (an organisation's name, …).
    AlreadyExists,
    /// The node does not serve this model or workload.
    NotServed,
    /// The request depends on a state that does not hold (an unknown or used nonce, …).
    FailedPrecondition,
    PayloadTooLarge,
    /// Sealed for another enclave measurement than this one: another instance may answer.
    OtherMeasurement,
    /// Too many requests from this source; retry after the time given.
    RateLimited,
    Internal,
    /// The service cannot answer now (a store down, a model still loading, an operator error to
    /// fix); retrying later may work.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::InvalidArgument,
        ErrorCode::BadInput,
        ErrorCode::Tampered,
        ErrorCode::Replayed,
        ErrorCode::Stale,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotGranted,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::NotServed,
        ErrorCode::FailedPrecondition,
        ErrorCode::PayloadTooLarge,
        ErrorCode::OtherMeasurement,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    /// The wire name (`not_granted`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::BadInput => "bad_input",
            ErrorCode::Tampered => "tampered",
            ErrorCode::Replayed => "replayed",
            ErrorCode::Stale => "stale",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotGranted => "not_granted",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::NotServed => "not_served",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::OtherMeasurement => "other_measurement",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// The HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument
            | ErrorCode::BadInput
            | ErrorCode::Tampered
            | ErrorCode::Replayed
            | ErrorCode::Stale => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied | ErrorCode::NotGranted => 403,
            ErrorCode::NotFound | ErrorCode::NotServed => 404,
            ErrorCode::FailedPrecondition | ErrorCode::AlreadyExists => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::OtherMeasurement => 421,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The gRPC status code (its number, as `tonic::Code::from_i32` takes it).
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::BadInput | ErrorCode::Tampered | ErrorCode::Stale => 3,
            ErrorCode::Replayed | ErrorCode::AlreadyExists => 6,
            ErrorCode::Unauthenticated => 16,
            ErrorCode::PermissionDenied | ErrorCode::NotGranted => 7,
            ErrorCode::NotFound | ErrorCode::NotServed => 5,
            ErrorCode::FailedPrecondition | ErrorCode::OtherMeasurement => 9,
            ErrorCode::PayloadTooLarge => 11,
            ErrorCode::RateLimited => 8,
            ErrorCode::Internal => 13,
            ErrorCode::Unavailable => 14,
        }
    }

    /// The code a gRPC status number stands for, when a peer sent no wire name.
    pub fn from_grpc(code: i32) -> ErrorCode {
        match code {
            3 => ErrorCode::InvalidArgument,
            6 => ErrorCode::Replayed,
            16 => ErrorCode::Unauthenticated,
            7 => ErrorCode::PermissionDenied,
            5 => ErrorCode::NotFound,
            9 => ErrorCode::FailedPrecondition,
            11 => ErrorCode::PayloadTooLarge,
            8 => ErrorCode::RateLimited,
            14 | 4 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// The code an HTTP status stands for, when a peer sent no body.
    pub fn from_http(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::InvalidArgument,
            401 => ErrorCode::Unauthenticated,
            403 => ErrorCode::PermissionDenied,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::FailedPrecondition,
            413 => ErrorCode::PayloadTooLarge,
            421 => ErrorCode::OtherMeasurement,
            429 => ErrorCode::RateLimited,
            502..=504 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// Whether another attempt (later, or at another instance) may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotServed | ErrorCode::OtherMeasurement | ErrorCode::RateLimited | ErrorCode::Unavailable
        )
    }
}

/// A code equals its wire name.
impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every REST error and every node refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// An error a component returns: a code and a message meant for the caller (never a key, an
/// input, or a policy detail the caller should not learn), and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds to wait before retrying (`Retry-After`, or gRPC `retry-after`).
    pub retry_after: Option<u64>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error { code, message: message.into(), retry_after: None }
    }
    pub fn invalid(m: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidArgument, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Error {
        Error::new(ErrorCode::PermissionDenied, m)
    }
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(ErrorCode::NotFound, m)
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(ErrorCode::Internal, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Error {
        Error::new(ErrorCode::Unavailable, m)
    }
    /// Too many requests from one source; retry after `secs`.
    pub fn rate_limited(what: &str, secs: u64) -> Error {
        Error {
            code: ErrorCode::RateLimited,
            message: format!("too many {what} from this address: try again in {secs} s"),
            retry_after: Some(secs),
        }
    }

    /// The body this error is sent as.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { code: self.code, message: self.message.clone() }
    }
}

impl From<ErrorBody> for Error {
    fn from(b: ErrorBody) -> Error {
        Error::new(b.code, b.message)
    }
}

/// A REST body as JSON of `T`, or a clear error that quotes at most a short prefix of what serde
/// refused (serde quotes the values it refuses).
#[cfg(feature = "axum")]
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| {
        Error::invalid(format!("the body is not what this call takes: {}", crate::text::prefix(&e.to_string(), 160)))
    })
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let status = axum::http::StatusCode::from_u16(self.code.http_status())
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after;
        let mut r = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = retry
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        r
    }
}

/// The gRPC metadata key carrying the wire name of an [`ErrorCode`], so a gRPC client recovers
/// exactly the code a REST client would see.
pub const GRPC_CODE_KEY: &str = "enclava-code";

#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let mut status = tonic::Status::new(tonic::Code::from_i32(e.code.grpc_code()), e.message);
        if let Ok(v) = e.code.as_str().parse() {
            status.metadata_mut().insert(GRPC_CODE_KEY, v);
        }
        if let Some(secs) = e.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}

#[cfg(feature = "tonic")]
impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        let named = s
            .metadata()
            .get(GRPC_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|n| ErrorCode::ALL.into_iter().find(|c| c.as_str() == n));
        let code = named.unwrap_or_else(|| ErrorCode::from_grpc(s.code() as i32));
        let retry_after = s.metadata().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
        Error { code, message: s.message().to_owned(), retry_after }
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        let disk_full = match &e {
            // SQLITE_FULL (13; extended codes keep it in the low byte) and PostgreSQL's disk_full.
            sqlx::Error::Database(d) => {
                d.code().is_some_and(|c| c == "53100" || c.parse::<u32>().is_ok_and(|n| n & 0xff == 13))
                    || d.message().contains("database or disk is full")
            }
            _ => false,
        };
        if disk_full {
            tracing::error!(error = %e, "the store is out of disk space");
            return Error::unavailable(
                "the store is out of disk space: nothing was changed; the operator must free space, then try again",
            );
        }
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %e, "store unavailable");
                Error::unavailable("the store is unavailable: nothing was changed; try again shortly")
            }
            e => {
                tracing::error!(error = %e, "store error");
                Error::unavailable(
                    "the store failed: nothing was changed; try again shortly (the server log has the details)",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_name_status_and_grpc_code() {
        let mut names = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(names.insert(c.as_str()), "{c} named twice");
            assert_eq!(serde_json::to_string(&c).expect("json"), format!("\"{c}\""));
            assert!((400..600).contains(&c.http_status()));
            assert!((1..=16).contains(&c.grpc_code()));
        }
        assert_eq!(ErrorCode::from_http(421), ErrorCode::OtherMeasurement);
        assert!(ErrorCode::OtherMeasurement.retryable() && !ErrorCode::Tampered.retryable());
        let body: ErrorBody = serde_json::from_str(r#"{"code":"not_granted","message":"ask"}"#).expect("body");
        assert_eq!(Error::from(body).code, ErrorCode::NotGranted);
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn grpc_carries_the_exact_code() {
        for c in ErrorCode::ALL {
            let mut e = Error::new(c, "m");
            e.retry_after = Some(3);
            let back = Error::from(tonic::Status::from(e.clone()));
            assert_eq!(back, e, "{c}");
        }
    }
}
