//! Where model packages are kept: the [`BlobStore`] trait, name rules, and [`FolderStore`], which
//! keeps each blob as a file under one folder and replaces files atomically.

use std::fmt::Debug;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

/// Longest blob name, in bytes.
pub const MAX_NAME_LEN: usize = 512;
/// Longest name segment: leaves room for the temporary-file suffix under the usual 255-byte
/// file name limit.
pub const MAX_SEGMENT_LEN: usize = 200;

/// Why a blob operation failed. `NotFound` is its own variant so callers can tell "no such
/// model" from a broken disk.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("blob {name:?} not found at {}", path.display())]
    NotFound { name: String, path: PathBuf },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A flat namespace of byte blobs named like relative paths (`acme/mobilenet/v3.enclava`).
/// Small on purpose, so an object store can implement it as easily as a folder.
#[async_trait]
pub trait BlobStore: Send + Sync + Debug {
    /// Stores `bytes` under `name`, replacing any blob of that name; readers see the old or the
    /// new bytes, never a mix.
    async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BlobError>;
    async fn get(&self, name: &str) -> Result<Vec<u8>, BlobError>;
    /// Removes the blob; `false` if there was none.
    async fn delete(&self, name: &str) -> Result<bool, BlobError>;
    /// Every blob name, sorted.
    async fn list(&self) -> Result<Vec<String>, BlobError>;
}

/// The blob name of the package for (`model_id`, `version`): `<model id>/v<version>.enclava`.
pub fn package_blob_name(model_id: &str, version: u64) -> String {
    format!("{model_id}/v{version}.enclava")
}

/// Checks a blob name: `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`, at
/// most [`MAX_NAME_LEN`] bytes. The rules make a name a safe relative path on every platform.
pub fn validate_name(name: &str) -> Result<(), BlobError> {
    let invalid = |reason| Err(BlobError::InvalidName { name: name.to_owned(), reason });
    if name.len() > MAX_NAME_LEN {
        return invalid("longer than 512 bytes");
    }
    for segment in name.split('/') {
        if let Some(reason) = segment_problem(segment) {
            return invalid(reason);
        }
    }
    Ok(())
}

fn segment_problem(segment: &str) -> Option<&'static str> {
    match segment {
        "" => Some("empty segment"),
        "." | ".." => Some("'.' or '..' segment"),
        s if s.len() > MAX_SEGMENT_LEN => Some("segment longer than 200 bytes"),
        s if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) => {
            Some("characters outside [A-Za-z0-9._-]")
        }
        _ => None,
    }
}

/// Blobs as files under one folder; a name's segments are its subfolders.
#[derive(Debug, Clone)]
pub struct FolderStore {
    root: PathBuf,
}

impl FolderStore {
    /// A store under `dir`; the folder is created on the first `put`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { root: dir.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, BlobError> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BlobError {
    let path = path.to_owned();
    move |source| BlobError::Io { op, path, source }
}

/// Writes `bytes` to `tmp`, flushes them to disk, and renames `tmp` over `path`, so a crash
/// leaves the old file or the new one. The folder is synced too, so the rename itself survives.
/// Blocking: run it off the async threads.
fn write_atomically(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let mut file = std::fs::File::create(tmp).map_err(io_error("create", tmp))?;
    file.write_all(bytes).map_err(io_error("write", tmp))?;
    file.sync_all().map_err(io_error("sync", tmp))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(io_error("rename into place", path))?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("sync folder", dir))?;
    }
    Ok(())
}

#[async_trait]
impl BlobStore for FolderStore {
    async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BlobError> {
        // Temporary names contain '~', which no blob name may, so they never clash with blobs
        // and `list` skips them; pid and counter keep concurrent writers apart.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.path_of(name)?;
        let dir = path.parent().unwrap_or(&self.root);
        tokio::fs::create_dir_all(dir).await.map_err(io_error("create folder", dir))?;
        let base = name.rsplit('/').next().unwrap_or(name);
        let tmp = dir.join(format!(".{base}.{}-{}~tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        // The copy lets the blocking task own the bytes; it costs far less than the fsync.
        let (owned, task_path) = (bytes.to_vec(), path.clone());
        let result = tokio::task::spawn_blocking(move || {
            let result = write_atomically(&tmp, &task_path, &owned);
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await
        .map_err(|e| io_error("write", &path)(std::io::Error::other(e)))
        .and_then(|result| result);
        tracing::debug!(name, bytes = bytes.len(), ok = result.is_ok(), "blob put");
        result
    }

    async fn get(&self, name: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(name)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(BlobError::NotFound { name: name.to_owned(), path }),
            Err(e) => Err(io_error("read", &path)(e)),
        }
    }

    async fn delete(&self, name: &str) -> Result<bool, BlobError> {
        let path = self.path_of(name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("delete", &path)(e)),
        }
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        let root = self.root.clone();
        let mut names = tokio::task::spawn_blocking(move || {
            let mut names = Vec::new();
            walk(&root, "", &mut names).map(|()| names)
        })
        .await
        .map_err(|e| io_error("list", &self.root)(std::io::Error::other(e)))??;
        names.sort();
        Ok(names)
    }
}

/// Collects blob names under `dir`. Entries that are not valid names (temporary files, stray
/// files) and symlinks are skipped; a missing root is an empty store.
fn walk(dir: &Path, prefix: &str, names: &mut Vec<String>) -> Result<(), BlobError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound && prefix.is_empty() => return Ok(()),
        Err(e) => return Err(io_error("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if segment_problem(&file_name).is_some() {
            continue;
        }
        let name = if prefix.is_empty() { file_name } else { format!("{prefix}/{file_name}") };
        let kind = entry.file_type().map_err(io_error("list", &entry.path()))?;
        if kind.is_dir() {
            walk(&entry.path(), &name, names)?;
        } else if kind.is_file() && name.len() <= MAX_NAME_LEN {
            names.push(name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FolderStore::new(dir.path().join("blobs"));
        assert_eq!(store.list().await.expect("list empty"), Vec::<String>::new());

        let name = package_blob_name("acme/mobilenet", 3);
        assert_eq!(name, "acme/mobilenet/v3.enclava");
        store.put(&name, b"first").await.expect("put");
        store.put(&name, b"second").await.expect("overwrite");
        store.put("top.bin", b"").await.expect("put top");
        assert_eq!(store.get(&name).await.expect("get"), b"second");
        assert_eq!(store.get("top.bin").await.expect("get empty"), b"");
        assert_eq!(store.list().await.expect("list"), [name.as_str(), "top.bin"]);

        // No temporary files are left behind next to the blob.
        let files = std::fs::read_dir(dir.path().join("blobs/acme/mobilenet")).expect("read dir").count();
        assert_eq!(files, 1);

        assert!(store.delete(&name).await.expect("delete"));
        assert!(!store.delete(&name).await.expect("delete again"));
        assert_eq!(store.list().await.expect("list"), ["top.bin"]);
    }

    #[tokio::test]
    async fn missing_blob_is_not_found_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FolderStore::new(dir.path());
        let err = store.get("acme/none.enclava").await.expect_err("missing");
        assert!(matches!(err, BlobError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().join("acme/none.enclava").display().to_string()), "{err}");
    }

    #[tokio::test]
    async fn bad_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FolderStore::new(dir.path());
        let long_segment = "a".repeat(MAX_SEGMENT_LEN + 1);
        let long_name = ["a"; 257].join("/");
        for name in [
            "",
            "/a",
            "a/",
            "a//b",
            "..",
            "../x",
            "a/./b",
            "a/..",
            "a b",
            "a\\b",
            "a~tmp",
            "é",
            &long_segment,
            &long_name,
        ] {
            let err = store.put(name, b"x").await.expect_err(name);
            assert!(matches!(err, BlobError::InvalidName { .. }), "{name:?}: {err}");
            assert!(matches!(store.get(name).await, Err(BlobError::InvalidName { .. })), "{name:?}");
            assert!(matches!(store.delete(name).await, Err(BlobError::InvalidName { .. })), "{name:?}");
        }
        assert!(validate_name("acme/mobile-net_2/v3.enclava").is_ok());
        assert_eq!(store.list().await.expect("list"), Vec::<String>::new());
    }
}
