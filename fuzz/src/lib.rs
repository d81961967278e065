//! What the fuzz targets share: the text format of inputs that are several files, a
//! scratch directory per process for loaders that read files, and the fixed keys of the
//! golden vectors (`tests/vectors/`), so that the vectors are valid seeds.

#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Splits an input into named files: the text before the first `%%% NAME` line belongs to
/// `first`; each `%%% NAME` line starts the file `NAME` (sanitized to a plain file name).
/// At most `max` files; later markers stay part of the last file's text.
pub fn split_files<'a>(text: &'a str, first: &str, max: usize) -> Vec<(String, &'a str)> {
    let mut files = Vec::new();
    let mut name = first.to_owned();
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
        let line = &text[pos..end];
        if let Some(marker) = line.strip_prefix("%%% ") {
            if files.len() + 1 < max {
                files.push((name, &text[start..pos]));
                name = file_name(marker.trim());
                start = end;
            }
        }
        pos = end;
    }
    files.push((name, &text[start..]));
    files
}

/// A file name from a marker: `[A-Za-z0-9_.-]`, at most 40 bytes, never empty, never a
/// path, `.` or `..`.
fn file_name(s: &str) -> String {
    let name: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(40)
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '.') {
        "x".to_owned()
    } else {
        name
    }
}

/// A directory of this process's own, empty on every call: the loaders under test read
/// files, and each input gets a fresh set.
pub fn scratch(tag: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("meshd-fuzz-{}", std::process::id()))
    });
    let dir = root.join(tag);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Reads a fuzz input front to back; past its end every read gives zeros, so any input is
/// a valid one. The structured targets use it rather than `arbitrary` so that seeds can be
/// written by hand (`fuzz/make_seeds.py`) from real records.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    /// Whether all of it was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next `n` bytes, or as many as are left.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }

    /// A `u16` length, then that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }
}

/// Key material of the golden vectors (`src/proto/vectors.rs`): `N` bytes counting up.
pub fn counting<const N: usize>(first: u8) -> [u8; N] {
    std::array::from_fn(|i| first.wrapping_add(i as u8))
}

/// The vectors' names, mesh id and keys.
pub mod vector {
    use super::counting;
    use meshd::config::{AuthMode, PeerName};
    use meshd::keys::{MeshSecret, PairKey, PrivateKey};

    /// The mesh id.
    pub const MESH_ID: &str = "example";
    /// The dialer's msg1 timestamp.
    pub const TIMESTAMP: u64 = 1_764_000_000_000_000_000;

    /// Everything a side of the vectors' handshakes needs.
    pub struct Pair {
        pub mode: AuthMode,
        pub dialer: PeerName,
        pub acceptor: PeerName,
        pub dialer_static: PrivateKey,
        pub acceptor_static: PrivateKey,
        pub psk: PairKey,
        pub dialer_ephemeral: [u8; 32],
        pub acceptor_ephemeral: [u8; 32],
    }

    /// The pair of `tests/vectors/noise.hex` or `psk.hex`.
    pub fn pair(mode: AuthMode) -> Pair {
        let dialer = PeerName::new("ovh1").expect("name");
        let acceptor = PeerName::new("off2").expect("name");
        let secret = (mode == AuthMode::Psk).then(|| MeshSecret::from_bytes(counting(0x90)));
        let psk = meshd::daemon::pair_psk(MESH_ID, secret.as_ref(), &dialer, &acceptor);
        Pair {
            mode,
            dialer,
            acceptor,
            dialer_static: PrivateKey::from_bytes(counting(0x10)),
            acceptor_static: PrivateKey::from_bytes(counting(0x30)),
            psk,
            dialer_ephemeral: counting(0x50),
            acceptor_ephemeral: counting(0x70),
        }
    }
}
