//! The handshake high-water marks: per dialing peer, the newest msg1 timestamp accepted.
//! Kept in `state_dir/handshake-marks.json` and rewritten atomically (write, fsync,
//! rename, fsync of the directory) before an accepted handshake goes on, so a captured
//! msg1 cannot be replayed even across a restart. The write runs on a blocking thread, so
//! other links' tasks keep running while the disk syncs; concurrent handshakes share one
//! write when they can.
//!
//! A timestamp more than [`MAX_AHEAD`] past this host's clock is refused and leaves the
//! mark where it was: a mark moved to the far future (a bad clock, or `u64::MAX`) would
//! refuse every later handshake of that peer.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

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

/// How far past this host's clock a msg1 timestamp may be.
pub const MAX_AHEAD: Duration = Duration::from_secs(600);

/// The verdict on one msg1 timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Newer than every one accepted before: recorded durably, go on.
    Fresh,
    /// Not newer than the mark: a replay (or a stale dial).
    Replayed,
    /// More than [`MAX_AHEAD`] past this host's clock; the mark did not move.
    TooFarAhead,
}

#[derive(Debug, Default)]
struct Marks {
    by_peer: BTreeMap<String, u64>,
    /// Bumped by every accepted timestamp.
    generation: u64,
}

/// The high-water marks, shared by every handshake of the mesh listener.
#[derive(Debug)]
pub struct ReplayStore {
    path: PathBuf,
    dir: PathBuf,
    marks: Mutex<Marks>,
    /// The generation on disk; held while a write is in flight, so writes never cross.
    written: tokio::sync::Mutex<u64>,
    /// The thread of the last write (for the test that it is not the runtime's).
    #[cfg(test)]
    writer: std::sync::Arc<Mutex<Option<std::thread::ThreadId>>>,
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
        let by_peer = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ReplayError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(ReplayError::Io { path, source }),
        };
        Ok(Self {
            path,
            dir: state_dir.to_path_buf(),
            marks: Mutex::new(Marks {
                by_peer,
                generation: 0,
            }),
            written: tokio::sync::Mutex::new(0),
            #[cfg(test)]
            writer: std::sync::Arc::default(),
        })
    }

    /// Accepts `timestamp` (ns since the epoch) from `peer` only if it is newer than every
    /// one accepted before and at most [`MAX_AHEAD`] past `now` (this host's clock, same
    /// unit), and records it durably before returning [`Mark::Fresh`]. The mark moves at
    /// once, so a concurrent replay of the same msg1 is refused while the write runs.
    pub async fn check_and_update(
        &self,
        peer: &PeerName,
        timestamp: u64,
        now: u64,
    ) -> Result<Mark, ReplayError> {
        let generation = {
            let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
            let ahead = u64::try_from(MAX_AHEAD.as_nanos()).unwrap_or(u64::MAX);
            if timestamp > now.saturating_add(ahead) {
                return Ok(Mark::TooFarAhead);
            }
            if marks
                .by_peer
                .get(peer.as_str())
                .is_some_and(|&last| timestamp <= last)
            {
                return Ok(Mark::Replayed);
            }
            marks.by_peer.insert(peer.as_str().to_owned(), timestamp);
            marks.generation += 1;
            marks.generation
        };
        self.persist_through(generation).await?;
        Ok(Mark::Fresh)
    }

    /// Returns once a state at least as new as `generation` is on disk.
    async fn persist_through(&self, generation: u64) -> Result<(), ReplayError> {
        let mut written = self.written.lock().await;
        if *written >= generation {
            // A write that started after ours was recorded carried it.
            return Ok(());
        }
        let (snapshot, latest) = {
            let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
            (marks.by_peer.clone(), marks.generation)
        };
        let (path, dir) = (self.path.clone(), self.dir.clone());
        #[cfg(test)]
        let writer = self.writer.clone();
        let result = tokio::task::spawn_blocking(move || {
            #[cfg(test)]
            {
                *writer.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(std::thread::current().id());
            }
            write_marks(&path, &dir, &snapshot)
        })
        .await;
        match result {
            Ok(Ok(())) => {
                *written = latest;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(join) => Err(ReplayError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }
}

/// Writes `marks` to `path` atomically and durably: temp file, fsync, rename, fsync of
/// `dir` (so the rename itself survives a crash). Blocking.
fn write_marks(path: &Path, dir: &Path, marks: &BTreeMap<String, u64>) -> Result<(), ReplayError> {
    let io = |at: &Path| {
        let at = at.to_path_buf();
        move |source| ReplayError::Io { path: at, source }
    };
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(marks).map_err(|e| ReplayError::Corrupt {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&body)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const NOW: u64 = 1_800_000_000_000_000_000;
    const DAY: u64 = 86_400_000_000_000;

    #[tokio::test]
    async fn rejects_old_and_equal_timestamps_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = PeerName::new("a").expect("name");
        let b = PeerName::new("b").expect("name");
        let store = ReplayStore::open(dir.path()).expect("open");
        assert_eq!(
            store.check_and_update(&a, 10, NOW).await.expect("io"),
            Mark::Fresh
        );
        assert_eq!(
            store.check_and_update(&a, 10, NOW).await.expect("io"),
            Mark::Replayed
        );
        assert_eq!(
            store.check_and_update(&a, 9, NOW).await.expect("io"),
            Mark::Replayed
        );
        assert_eq!(
            store.check_and_update(&b, 1, NOW).await.expect("io"),
            Mark::Fresh
        );
        drop(store);
        let store = ReplayStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.check_and_update(&a, 10, NOW).await.expect("io"),
            Mark::Replayed,
            "mark lost on restart"
        );
        assert_eq!(
            store.check_and_update(&a, 11, NOW).await.expect("io"),
            Mark::Fresh
        );
    }

    #[tokio::test]
    async fn a_timestamp_far_ahead_is_refused_and_leaves_the_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = PeerName::new("a").expect("name");
        let store = ReplayStore::open(dir.path()).expect("open");
        assert_eq!(
            store.check_and_update(&a, NOW, NOW).await.expect("io"),
            Mark::Fresh
        );
        for far in [u64::MAX, NOW + DAY, NOW + 601_000_000_000] {
            assert_eq!(
                store.check_and_update(&a, far, NOW).await.expect("io"),
                Mark::TooFarAhead,
                "{far}"
            );
        }
        // The mark did not move, in memory or on disk: the next real dial gets in.
        assert_eq!(
            store.check_and_update(&a, NOW + 1, NOW).await.expect("io"),
            Mark::Fresh
        );
        drop(store);
        let store = ReplayStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.check_and_update(&a, NOW + 2, NOW).await.expect("io"),
            Mark::Fresh
        );
        // Within the allowance a clock a little ahead is fine.
        assert_eq!(
            store
                .check_and_update(&a, NOW + 540_000_000_000, NOW)
                .await
                .expect("io"),
            Mark::Fresh
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_mark_is_written_off_the_runtime_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = PeerName::new("a").expect("name");
        let store = ReplayStore::open(dir.path()).expect("open");
        assert_eq!(
            store.check_and_update(&a, 5, NOW).await.expect("io"),
            Mark::Fresh
        );
        let writer = store
            .writer
            .lock()
            .expect("lock")
            .expect("a write happened");
        assert_ne!(
            writer,
            std::thread::current().id(),
            "fsync on the runtime thread"
        );
        let on_disk = fs::read_to_string(dir.path().join("handshake-marks.json")).expect("read");
        assert!(on_disk.contains("\"a\": 5"), "{on_disk}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_handshakes_all_end_up_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ReplayStore::open(dir.path()).expect("open"));
        let mut tasks = Vec::new();
        for i in 0..32u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let peer = PeerName::new(&format!("p{}", i % 8)).expect("name");
                store.check_and_update(&peer, 100 + i, NOW).await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("io");
        }
        drop(store);
        let store = ReplayStore::open(dir.path()).expect("reopen");
        for p in 0..8u64 {
            let peer = PeerName::new(&format!("p{p}")).expect("name");
            // The newest of p's four (100 + p + 24) is the mark, whatever the order.
            assert_eq!(
                store
                    .check_and_update(&peer, 124 + p, NOW)
                    .await
                    .expect("io"),
                Mark::Replayed,
                "{peer}"
            );
            assert_eq!(
                store
                    .check_and_update(&peer, 125 + p, NOW)
                    .await
                    .expect("io"),
                Mark::Fresh,
                "{peer}"
            );
        }
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("handshake-marks.json"), "garbage").expect("write");
        let err = ReplayStore::open(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("handshake-marks.json"), "{err}");
    }
}
