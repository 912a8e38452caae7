//! One error type for the key broker, with one code that maps to both an HTTP status and a gRPC
//! code, so REST and gRPC clients see the same meaning.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What kind of failure, as both transports report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    FailedPrecondition,
    /// The request is larger than the server accepts.
    PayloadTooLarge,
    /// Too many requests from this source; retry after the time the error gives.
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn http(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::FailedPrecondition => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::PayloadTooLarge => tonic::Code::OutOfRange,
            ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// The code a gRPC status maps back to (for clients).
    pub fn from_grpc(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
            tonic::Code::OutOfRange => ErrorCode::PayloadTooLarge,
            tonic::Code::ResourceExhausted => ErrorCode::RateLimited,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => ErrorCode::FailedPrecondition,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// A key broker error: a code and a message meant for the caller (never a key, never a policy
/// detail a node should not learn), and for [`ErrorCode::RateLimited`] when to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeysError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds to wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl KeysError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> KeysError {
        KeysError { code, message: message.into(), retry_after: None }
    }
    pub fn invalid(m: impl Into<String>) -> KeysError {
        KeysError::new(ErrorCode::InvalidArgument, m)
    }
    pub fn forbidden(m: impl Into<String>) -> KeysError {
        KeysError::new(ErrorCode::PermissionDenied, m)
    }
    pub fn not_found(m: impl Into<String>) -> KeysError {
        KeysError::new(ErrorCode::NotFound, m)
    }
    pub fn unauthenticated() -> KeysError {
        KeysError::new(
            ErrorCode::Unauthenticated,
            "missing or unknown credential: run `enclava keys register` (or check --config-dir)",
        )
    }
    pub fn internal(m: impl Into<String>) -> KeysError {
        KeysError::new(ErrorCode::Internal, m)
    }
    pub fn unavailable(m: impl Into<String>) -> KeysError {
        KeysError::new(ErrorCode::Unavailable, m)
    }
    /// Too many requests from one source; retry after `secs`.
    pub fn rate_limited(what: &str, secs: u64) -> KeysError {
        KeysError {
            code: ErrorCode::RateLimited,
            message: format!("too many {what} from this address: try again in {secs} s"),
            retry_after: Some(secs),
        }
    }
}

/// Every store error is the caller's 503: nothing was changed (a write that fails is rolled back
/// whole), and trying again later may work. The message says why in words; the log has the rest.
impl From<sqlx::Error> for KeysError {
    fn from(e: sqlx::Error) -> KeysError {
        let disk_full = match &e {
            // SQLITE_FULL (13, extended codes keep it in the low byte) and PostgreSQL's disk_full.
            sqlx::Error::Database(d) => {
                d.code().is_some_and(|c| c == "53100" || c.parse::<u32>().is_ok_and(|n| n & 0xff == 13))
                    || d.message().contains("database or disk is full")
            }
            _ => false,
        };
        if disk_full {
            tracing::error!(error = %e, "key store is out of disk space");
            return KeysError::unavailable(
                "the key store is out of disk space: nothing was changed; the operator must free space, then try again",
            );
        }
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %e, "key store unavailable");
                KeysError::unavailable("the key store is unavailable: nothing was changed; try again shortly")
            }
            e => {
                tracing::error!(error = %e, "key store error");
                KeysError::unavailable(
                    "the key store failed: nothing was changed; try again shortly (the server log has the details)",
                )
            }
        }
    }
}

impl From<KeysError> for tonic::Status {
    fn from(e: KeysError) -> tonic::Status {
        let mut status = tonic::Status::new(e.code.grpc(), e.message);
        if let Some(secs) = e.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}

/// The JSON body of every REST error.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl IntoResponse for KeysError {
    fn into_response(self) -> Response {
        let retry = self.retry_after;
        let mut r =
            (self.code.http(), axum::Json(ErrorBody { code: self.code, message: self.message })).into_response();
        if let Some(secs) = retry
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        r
    }
}
