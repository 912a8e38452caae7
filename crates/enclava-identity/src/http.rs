//! The axum side: [`Caller`], an extractor that authenticates `Authorization: Bearer <token>`
//! against the [`Identity`] a router carries ([`layer`]), and refuses with the core's
//! `unauthenticated` error otherwise.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use enclava_core::Error;

use crate::{Identity, Principal, unauthenticated};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// Makes `identity` available to [`Caller`] in a router: `router.layer(layer(identity))`.
pub fn layer(identity: Arc<Identity>) -> axum::Extension<Arc<Identity>> {
    axum::Extension(identity)
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Error> {
        let identity = parts
            .extensions
            .get::<Arc<Identity>>()
            .cloned()
            .ok_or_else(|| Error::internal("this route needs the identity layer"))?;
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(unauthenticated)?;
        identity.authenticate(token).await.map(Caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registration;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn caller_is_the_token_holder_or_the_request_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let identity = Arc::new(crate::tests::identity(dir.path(), Registration::Open).await);
        let (user, token) = identity.register(None).await.expect("register");
        let app = Router::new().route("/me", get(|Caller(p): Caller| async move { p.id })).layer(layer(identity));
        let call = |auth: Option<String>| {
            let app = app.clone();
            async move {
                let mut req = axum::http::Request::get("/me");
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let resp = app.oneshot(req.body(Body::empty()).expect("req")).await.expect("resp");
                let status = resp.status().as_u16();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.expect("body");
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        assert_eq!(call(Some(format!("Bearer {token}"))).await, (200, user));
        for bad in [None, Some("Bearer ".into()), Some("Basic abc".into()), Some("Bearer ekt_unknown".into())] {
            let (status, body) = call(bad).await;
            assert!(status == 401 && body.contains("\"code\":\"unauthenticated\""), "{status} {body}");
        }
        assert_eq!(bearer("bearer  t1 "), Some("t1"));
    }
}
