//! Encrypted ONNX model packages and where they are kept: the format a model owner seals a model
//! into, the in-memory decryption an enclave node runs, and a blob store for the packages.
//!
//! # Layout
//! - [`package`]: the package format (also in `FORMAT.md`), [`ModelKey`], [`encrypt`],
//!   [`read_header`], [`decrypt`] and [`decrypt_in_place`].
//! - [`blob`]: the [`BlobStore`] trait, [`FolderStore`] (files under one folder) and
//!   [`package_blob_name`].
//! - [`bench`]: encryption and decryption throughput, measured for `enclava bench serving`.

pub mod bench;
pub mod blob;
pub mod package;

pub use blob::{BlobError, BlobStore, FolderStore, package_blob_name};
pub use package::{
    Header, ModelKey, PackageError, decrypt, decrypt_in_place, encrypt, encrypt_with_chunk_size, read_header,
};
