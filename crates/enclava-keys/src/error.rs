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
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// The code a gRPC status maps back to (for clients).
    pub fn from_grpc(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
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
/// detail a node should not learn).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeysError {
    pub code: ErrorCode,
    pub message: String,
}

impl KeysError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> KeysError {
        KeysError { code, message: message.into() }
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
}

impl From<sqlx::Error> for KeysError {
    fn from(e: sqlx::Error) -> KeysError {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %e, "key store unavailable");
                KeysError::new(ErrorCode::Unavailable, "the key store is unavailable; try again shortly")
            }
            e => {
                tracing::error!(error = %e, "key store error");
                KeysError::internal("the key store failed; the server log has the details")
            }
        }
    }
}

impl From<KeysError> for tonic::Status {
    fn from(e: KeysError) -> tonic::Status {
        tonic::Status::new(e.code.grpc(), e.message)
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
        (self.code.http(), axum::Json(ErrorBody { code: self.code, message: self.message })).into_response()
    }
}
