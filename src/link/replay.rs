//! The handshake high-water marks: per dialing peer, the newest msg1 timestamp accepted.
//! Kept in `state_dir/handshake-marks.json` and rewritten atomically on every accepted
//! handshake, so a captured msg1 cannot be replayed even across a restart.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::PeerName;

/// Errors opening or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The state directory or file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state file is not what meshd writes.
    #[error("{path}: corrupt handshake state ({why}); move it aside to start over")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The high-water marks, shared by every handshake of the mesh listener.
#[derive(Debug)]
pub struct ReplayStore {
    path: PathBuf,
    marks: Mutex<BTreeMap<String, u64>>,
}

impl ReplayStore {
    /// Opens (creating the directory, mode 0700, if needed) and loads the marks.
    pub fn open(state_dir: &Path) -> Result<Self, ReplayError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| ReplayError::Io {
                path: state_dir.to_path_buf(),
                source,
            })?;
        let path = state_dir.join("handshake-marks.json");
        let marks = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ReplayError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(ReplayError::Io { path, source }),
        };
        Ok(Self {
            path,
            marks: Mutex::new(marks),
        })
    }

    /// Accepts `timestamp` from `peer` only if it is newer than every one accepted before,
    /// and records it durably before returning `Ok(true)`.
    pub fn check_and_update(&self, peer: &PeerName, timestamp: u64) -> Result<bool, ReplayError> {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if marks
            .get(peer.as_str())
            .is_some_and(|&last| timestamp <= last)
        {
            return Ok(false);
        }
        marks.insert(peer.as_str().to_owned(), timestamp);
        self.persist(&marks)?;
        Ok(true)
    }

    fn persist(&self, marks: &BTreeMap<String, u64>) -> Result<(), ReplayError> {
        let io = |source| ReplayError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(marks).map_err(|e| ReplayError::Corrupt {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&body).and_then(|_| f.sync_all()).map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_old_and_equal_timestamps_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = PeerName::new("a").expect("name");
        let b = PeerName::new("b").expect("name");
        let store = ReplayStore::open(dir.path()).expect("open");
        assert!(store.check_and_update(&a, 10).expect("io"));
        assert!(!store.check_and_update(&a, 10).expect("io"));
        assert!(!store.check_and_update(&a, 9).expect("io"));
        assert!(store.check_and_update(&b, 1).expect("io"));
        drop(store);
        let store = ReplayStore::open(dir.path()).expect("reopen");
        assert!(
            !store.check_and_update(&a, 10).expect("io"),
            "mark lost on restart"
        );
        assert!(store.check_and_update(&a, 11).expect("io"));
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("handshake-marks.json"), "garbage").expect("write");
        let err = ReplayStore::open(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("handshake-marks.json"), "{err}");
    }
}
