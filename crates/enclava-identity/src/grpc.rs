//! The tonic side: [`interceptor`] takes the bearer token from a call's `authorization` metadata
//! into the request's extensions (refusing a malformed one at once); a service then asks
//! [`Identity::caller`] who it is. Interceptors run synchronously, so the lookup itself happens in
//! the service.

use enclava_core::Error;
use zeroize::Zeroizing;

use crate::{Identity, Principal, unauthenticated};

/// A call's bearer token, as the interceptor found it.
#[derive(Clone)]
pub struct Bearer(Zeroizing<String>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(…)")
    }
}

/// Keeps a call's bearer token for [`Identity::caller`]; a call without one passes (the service
/// decides whether it needs a caller), a malformed one is refused.
pub fn interceptor(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let Some(value) = req.metadata().get("authorization") else { return Ok(req) };
    let token =
        value.to_str().ok().and_then(crate::http::bearer).ok_or_else(|| tonic::Status::from(unauthenticated()))?;
    let bearer = Bearer(Zeroizing::new(token.to_owned()));
    req.extensions_mut().insert(bearer);
    Ok(req)
}

impl Identity {
    /// The caller of a gRPC call that passed [`interceptor`].
    pub async fn caller<T>(&self, req: &tonic::Request<T>) -> Result<Principal, Error> {
        let bearer = req.extensions().get::<Bearer>().ok_or_else(unauthenticated)?;
        self.authenticate(&bearer.0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registration;

    #[tokio::test]
    async fn the_interceptor_carries_the_token_to_the_service() {
        let dir = tempfile::tempdir().expect("tmp");
        let identity = crate::tests::identity(dir.path(), Registration::Open).await;
        let (user, token) = identity.register(None).await.expect("register");
        let call = |auth: Option<&str>| {
            let mut req = tonic::Request::new(());
            if let Some(a) = auth {
                req.metadata_mut().insert("authorization", a.parse().expect("ascii"));
            }
            interceptor(req)
        };
        let req = call(Some(&format!("Bearer {token}"))).expect("passes");
        assert_eq!(identity.caller(&req).await.expect("caller").id, user);
        assert!(!format!("{:?}", req.extensions().get::<Bearer>()).contains(&token));
        let anonymous = call(None).expect("passes without a token");
        assert_eq!(
            identity.caller(&anonymous).await.expect_err("no caller").code,
            enclava_core::ErrorCode::Unauthenticated
        );
        let refused = call(Some("Token x")).expect_err("malformed");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(Error::from(refused).code, enclava_core::ErrorCode::Unauthenticated);
    }
}
