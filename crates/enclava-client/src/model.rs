//! Uploading a model: a fresh key registered with the key broker as the model's next version, the
//! ONNX file encrypted into a package bound to (id, version) and stored where the nodes read
//! packages, and grants for the uploader's own requests.

use enclava_core::Error;
use enclava_model::blob::{BlobStore, package_blob_name};
use enclava_model::package::{self, ModelKey};

use crate::keys::KeysClient;

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub version: u64,
    pub package_len: usize,
    /// The package's name in the blob store.
    pub blob: String,
}

/// Uploads `onnx` as model `id` for `user` (the identity `keys` holds): its key (with `policy`, or
/// the broker's default), its package in `blobs`, and a grant to each of `grants` (measurements,
/// hex) for `user`'s own requests.
pub async fn upload(
    keys: &KeysClient,
    user: &str,
    blobs: &dyn BlobStore,
    id: &str,
    onnx: &[u8],
    policy: Option<&str>,
    grants: &[String],
) -> Result<Uploaded, Error> {
    enclava_core::id::check_model_id(id)?;
    let key = ModelKey::generate().map_err(|e| Error::internal(e.to_string()))?;
    let v = keys.put_model_key(id, key.as_bytes(), policy, false).await?;
    let package =
        package::encrypt(id, v.version, &key, onnx).map_err(|e| Error::invalid(format!("encrypting {id}: {e}")))?;
    let blob = package_blob_name(id, v.version);
    blobs.put(&blob, &package).await.map_err(|e| {
        Error::unavailable(format!("key version {} is stored but its package is not: {e}; upload again", v.version))
    })?;
    for m in grants {
        keys.grant(id, m, user).await?;
    }
    Ok(Uploaded { version: v.version, package_len: package.len(), blob })
}
