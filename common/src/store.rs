//! The segment store: `object_store` chosen from a URI (`file:///abs/dir`,
//! `memory://`), and the layout of r2o's objects in it:
//!
//! - `realtime/<raw>_REALTIME/<segment>.parquet`: REALTIME segments;
//! - `offline/<raw>_OFFLINE/<task>/attempt-<n>/<segment>.parquet`: an
//!   attempt's staged outputs. A commit publishes them by naming them in
//!   OFFLINE segment metadata (no copy); the janitor removes what no
//!   committed metadata names.

use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

use crate::error::{ConfigError, Error, Result};

/// A shared object store handle.
pub type Store = Arc<dyn ObjectStore>;

/// Opens the store named by `uri`: `file:///abs/dir` (created if missing)
/// or `memory://`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `store` for an unsupported scheme or a
/// directory that cannot be created.
pub fn open_store(uri: &str) -> Result<Store> {
    let bad = |expected: &str| {
        Error::Config(ConfigError::Invalid {
            field: "store".into(),
            value: uri.into(),
            expected: expected.into(),
        })
    };
    if uri == "memory://" || uri == "memory:///" {
        return Ok(Arc::new(object_store::memory::InMemory::new()));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("an absolute path after file://, e.g. file:///var/lib/r2o/store"));
        }
        std::fs::create_dir_all(path).map_err(|e| bad(&format!("a directory r2o can create ({e})")))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
            .map_err(|e| bad(&format!("a usable directory ({e})")))?;
        return Ok(Arc::new(fs));
    }
    Err(bad("file:///<absolute dir> or memory://"))
}

/// Object path of a REALTIME segment.
pub fn realtime_path(raw: &str, segment: &str) -> String {
    format!("realtime/{raw}_REALTIME/{segment}.parquet")
}

/// Staging prefix of one attempt (unique to the attempt).
pub fn staging_prefix(raw: &str, task_id: &str, attempt: u32) -> String {
    format!("offline/{raw}_OFFLINE/{task_id}/attempt-{attempt}/")
}

/// Prefix of all staged and committed OFFLINE objects of a table.
pub fn offline_prefix(raw: &str) -> String {
    format!("offline/{raw}_OFFLINE/")
}

/// Reads a whole object.
pub async fn get_bytes(store: &Store, path: &str) -> Result<Bytes> {
    let p = Path::from(path);
    let got = store.get(&p).await.map_err(|source| Error::Store {
        path: path.into(),
        source,
    })?;
    got.bytes().await.map_err(|source| Error::Store {
        path: path.into(),
        source,
    })
}

/// Writes a whole object (overwriting).
pub async fn put_bytes(store: &Store, path: &str, bytes: Bytes) -> Result<()> {
    store
        .put(&Path::from(path), PutPayload::from(bytes))
        .await
        .map_err(|source| Error::Store {
            path: path.into(),
            source,
        })?;
    Ok(())
}

/// Size of an object in bytes, `None` when it does not exist.
pub async fn object_size(store: &Store, path: &str) -> Result<Option<u64>> {
    match store.head(&Path::from(path)).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(Error::Store {
            path: path.into(),
            source,
        }),
    }
}
