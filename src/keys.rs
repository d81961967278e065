//! Key material: X25519 static keys, the optional mesh secret, per-pair keys derived from
//! them, and the key files on disk (mode 0600, checked on every load).
//!
//! Secret types mask their `Debug` output and zeroize on drop, so a key can never reach a
//! log line by accident. Nothing here logs.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every key handled here (X25519 keys, mesh secret, pair keys).
pub const KEY_LEN: usize = 32;

/// The info prefix of the pair-key HKDF; bumping it re-keys every pair.
const PAIR_INFO: &[u8] = b"meshd pair v1";

/// Errors from key parsing, key files and derivation.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file can be read by group or others.
    #[error(
        "{path}: mode {mode:04o} lets other users read this secret; fix it with `chmod 600 {path}`"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file is a symbolic link.
    #[error(
        "{path}: is a symbolic link; meshd reads secrets only from the file itself (point the \
         configuration at it)"
    )]
    Symlink {
        /// The key file.
        path: PathBuf,
    },
    /// A key file is not a regular file, or the state directory not a directory.
    #[error("{path}: not a regular file (or, for state_dir, not a directory)")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A key file or the state directory belongs to another user.
    #[error(
        "{path}: owned by uid {owner}, but meshd runs as uid {me}; a secret must belong to the \
         user that reads it (`chown` it)"
    )]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// The state directory can be written by group or others.
    #[error(
        "{path}: mode {mode:04o} lets other users write meshd's state (its handshake replay \
         marks); fix it with `chmod 700 {path}`"
    )]
    StateDirWritable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file does not hold a base64 32-byte key.
    #[error("{path}: not a key file: expected one line of base64 holding {KEY_LEN} bytes")]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
    },
    /// A public key string is not base64 of 32 bytes.
    #[error("public key is not base64 of {KEY_LEN} bytes")]
    BadPublicKey,
    /// Creating a key file that already exists (keys are never overwritten).
    #[error("{path}: already exists; meshd never overwrites a key file")]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// An X25519 public key, as written in a peer's manifest file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses the base64 form used in manifests.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let raw = B64.decode(s.trim()).map_err(|_| KeyError::BadPublicKey)?;
        let bytes: [u8; KEY_LEN] = raw.try_into().map_err(|_| KeyError::BadPublicKey)?;
        Ok(Self(bytes))
    }

    /// The base64 form used in manifests.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// Wraps raw secret bytes.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// Raw bytes, for handing to the handshake.
            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(MASKED)"))
            }
        }
    };
}

secret_type!(
    /// This host's X25519 private key.
    PrivateKey
);
secret_type!(
    /// The optional 32-byte mesh secret, distributed once out of band.
    MeshSecret
);
secret_type!(
    /// A key unique to one pair of peers, derived from the mesh secret.
    PairKey
);

impl PrivateKey {
    /// The X25519 public key of this private key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_base(&self.0))
    }
}

/// A fresh X25519 key pair from the system random generator.
pub fn generate_keypair() -> Result<(PrivateKey, PublicKey), KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    fill_random(&mut bytes)?;
    let private = PrivateKey(bytes);
    bytes.zeroize();
    let public = private.public_key();
    Ok((private, public))
}

/// Fills `buf` from the operating system's random generator (ring's `SystemRandom`).
pub fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| KeyError::Random)
}

/// X25519 scalar multiplication by the base point, through snow's DH implementation, so
/// the public key we publish is computed exactly as the handshake computes it.
fn x25519_base(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    // snow derives the public key when a private key is set on a DH object; we reach it
    // through a throwaway builder-free resolver call.
    use snow::params::DHChoice;
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut out = [0u8; KEY_LEN];
    if let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) {
        dh.set(private);
        out.copy_from_slice(dh.pubkey());
    }
    out
}

/// Derives the key of the pair {a, b}:
/// `HKDF-SHA256(ikm = mesh_secret, salt = mesh_id, info = "meshd pair v1" 0 min(a,b) 0 max(a,b))`.
///
/// The NUL separators keep the encoding unambiguous ("a"+"bc" and "ab"+"c" differ); peer
/// names cannot contain NUL. The order of `a` and `b` does not matter.
pub fn derive_pair_key(secret: &MeshSecret, mesh_id: &str, a: &str, b: &str) -> PairKey {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let info: [&[u8]; 5] = [PAIR_INFO, b"\0", lo.as_bytes(), b"\0", hi.as_bytes()];
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, mesh_id.as_bytes());
    let prk = salt.extract(secret.as_bytes());
    let mut out = [0u8; KEY_LEN];
    // `expand` fails only when the requested length exceeds 255 * 32 bytes; 32 never does.
    if let Ok(okm) = prk.expand(&info, PairKeyLen) {
        let _ = okm.fill(&mut out);
    }
    let key = PairKey(out);
    out.zeroize();
    key
}

struct PairKeyLen;

impl ring::hkdf::KeyType for PairKeyLen {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// A short fingerprint of a pair, for reading aloud between two operators: the first 16
/// bytes of SHA-256 over the mesh id, both names (sorted) and both public keys, grouped.
/// It reveals nothing secret: everything hashed is in the manifest.
pub fn pair_fingerprint(
    mesh_id: &str,
    (a, a_key): (&str, &PublicKey),
    (b, b_key): (&str, &PublicKey),
) -> String {
    let ((lo, lo_key), (hi, hi_key)) = if a <= b {
        ((a, a_key), (b, b_key))
    } else {
        ((b, b_key), (a, a_key))
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        b"meshd fingerprint v1".as_slice(),
        mesh_id.as_bytes(),
        lo.as_bytes(),
        lo_key.as_bytes(),
        hi.as_bytes(),
        hi_key.as_bytes(),
    ] {
        ctx.update(&(part.len() as u32).to_be_bytes());
        ctx.update(part);
    }
    let digest = ctx.finish();
    digest.as_ref()[..16]
        .chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join("-")
}

/// Checks that a secret file is not readable by group or others.
fn check_mode(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks that `meta` (of `path`) belongs to the user meshd runs as.
fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    let me = effective_uid();
    if meta.uid() != me {
        return Err(KeyError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// The effective user id of this process.
#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail
    // (POSIX: "always successful").
    unsafe { libc::geteuid() }
}

/// Opens a secret file once and checks the open file itself, so that what is checked is
/// what is read (no swap between a check by name and the read): not a symbolic link (the
/// open refuses one), a regular file, owned by the user meshd runs as, and not readable
/// by group or others.
fn open_secret_file(path: &Path) -> Result<fs::File, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                KeyError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    check_owner(path, &meta)?;
    check_mode(path, &meta)?;
    Ok(file)
}

/// Reads a whole secret file (at most `limit` bytes) with the checks of
/// [`open_secret_file`]: for key files other than meshd's own (a TLS private key).
pub fn read_secret_bytes(path: &Path, limit: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
    use std::io::Read;
    let mut file = open_secret_file(path)?;
    let mut raw = zeroize::Zeroizing::new(Vec::new());
    (&mut file)
        .take(limit)
        .read_to_end(&mut raw)
        .map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(raw)
}

/// Checks meshd's state directory: a directory owned by the user meshd runs as that no
/// one else can write (its handshake marks are what refuses replayed handshakes).
pub fn check_state_dir(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(KeyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    check_owner(path, &meta)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(KeyError::StateDirWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads a 32-byte secret from a file holding one line of base64 (or exactly 32 raw bytes,
/// for a mesh secret made with `head -c 32 /dev/urandom`). The file must be mode 0600 or
/// stricter, owned by this user, and not a symbolic link ([`open_secret_file`]).
fn read_secret_file(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    // A key file is one short line: anything much longer is not one, and is not read whole.
    let raw = read_secret_bytes(path, 4096)?;
    if raw.len() == KEY_LEN {
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(&raw);
        Ok(out)
    } else {
        let text = std::str::from_utf8(&raw).unwrap_or("");
        match B64.decode(text.trim()) {
            Ok(mut decoded) => {
                let r = <[u8; KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| {
                    KeyError::BadKeyFile {
                        path: path.to_path_buf(),
                    }
                });
                decoded.zeroize();
                r
            }
            Err(_) => Err(KeyError::BadKeyFile {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Loads this host's private key from its key file (mode checked).
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let mut bytes = read_secret_file(path)?;
    let key = PrivateKey(bytes);
    bytes.zeroize();
    Ok(key)
}

/// Loads the mesh secret from its file (mode checked).
pub fn load_mesh_secret(path: &Path) -> Result<MeshSecret, KeyError> {
    let mut bytes = read_secret_file(path)?;
    let key = MeshSecret(bytes);
    bytes.zeroize();
    Ok(key)
}

/// Writes a new secret file with mode 0600, refusing to overwrite an existing one.
fn write_secret_file(path: &Path, bytes: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let mut line = B64.encode(bytes);
    line.push('\n');
    let r = file
        .write_all(line.as_bytes())
        .and_then(|_| file.sync_all());
    line.zeroize();
    r.map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a new private key file (0600); never overwrites an existing file.
pub fn create_private_key_file(path: &Path) -> Result<PublicKey, KeyError> {
    let (private, public) = generate_keypair()?;
    write_secret_file(path, private.as_bytes())?;
    Ok(public)
}

/// Creates a new mesh secret file (0600) with 32 random bytes; never overwrites.
pub fn create_mesh_secret_file(path: &Path) -> Result<(), KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    fill_random(&mut bytes)?;
    let r = write_secret_file(path, &bytes);
    bytes.zeroize();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> MeshSecret {
        MeshSecret::from_bytes([b; KEY_LEN])
    }

    fn hex(k: &PairKey) -> String {
        k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn pair_key_fixed_vector() {
        // Computed independently with Python:
        // hmac/hashlib HKDF-SHA256(ikm=b"\x01"*32, salt=b"example",
        //   info=b"meshd pair v1\x00moji\x00off2"), 32 bytes.
        let k = derive_pair_key(&secret(1), "example", "off2", "moji");
        assert_eq!(hex(&k), PAIR_VECTOR);
    }

    const PAIR_VECTOR: &str = "fa249cc2daae1db3d393a3b462e53491a78605dd924593f6b3a52b8f6cc1c5b1";

    #[test]
    fn a_key_file_is_checked_on_the_file_that_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("host.key");
        create_private_key_file(&key).expect("create");
        load_private_key(&key).expect("the file itself loads");

        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&key, &link).expect("symlink");
        let err = load_private_key(&link).expect_err("a symlink");
        assert!(matches!(err, KeyError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let err = load_private_key(dir.path()).expect_err("a directory");
        assert!(
            matches!(err, KeyError::NotAFile { .. } | KeyError::Io { .. }),
            "{err}"
        );

        // Someone else's file: as root, a copy given to nobody (65534); otherwise a file of
        // root's.
        let foreign = if effective_uid() == 0 {
            let other = dir.path().join("other.key");
            std::fs::copy(&key, &other).expect("copy");
            std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            std::os::unix::fs::chown(&other, Some(65534), None).expect("chown as root");
            other
        } else {
            std::path::PathBuf::from("/etc/hostname")
        };
        let err = load_private_key(&foreign).expect_err("another user's file");
        assert!(matches!(err, KeyError::Owner { .. }), "{err}");
        assert!(err.to_string().contains("owned by uid"), "{err}");
    }

    #[test]
    fn the_state_dir_must_be_ours_and_not_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("mkdir");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        check_state_dir(&state).expect("0700 is fine");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        check_state_dir(&state).expect("0755 is fine: nobody else writes");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = check_state_dir(&state).expect_err("world-writable");
        assert!(
            matches!(err, KeyError::StateDirWritable { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 700"), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(
            check_state_dir(&file),
            Err(KeyError::NotAFile { .. })
        ));
    }

    #[test]
    fn pair_key_is_symmetric() {
        let ab = derive_pair_key(&secret(7), "m", "alpha", "beta");
        let ba = derive_pair_key(&secret(7), "m", "beta", "alpha");
        assert_eq!(ab.as_bytes(), ba.as_bytes());
    }

    #[test]
    fn pair_key_differs_per_pair_mesh_and_secret() {
        let base = derive_pair_key(&secret(7), "m", "alpha", "beta");
        let other_pair = derive_pair_key(&secret(7), "m", "alpha", "gamma");
        let other_mesh = derive_pair_key(&secret(7), "n", "alpha", "beta");
        let other_secret = derive_pair_key(&secret(8), "m", "alpha", "beta");
        // "a"+"bc" vs "ab"+"c" must not collide.
        let split1 = derive_pair_key(&secret(7), "m", "a", "bc");
        let split2 = derive_pair_key(&secret(7), "m", "ab", "c");
        for k in [&other_pair, &other_mesh, &other_secret] {
            assert_ne!(base.as_bytes(), k.as_bytes());
        }
        assert_ne!(split1.as_bytes(), split2.as_bytes());
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let k = PrivateKey::from_bytes([0xab; KEY_LEN]);
        let shown = format!("{k:?}");
        assert_eq!(shown, "PrivateKey(MASKED)");
        assert!(!format!("{:?}", secret(0xcd)).contains("cd"));
    }

    #[test]
    fn public_key_round_trips_base64() {
        let (_, public) = generate_keypair().expect("rng");
        let parsed = PublicKey::from_base64(&public.to_base64()).expect("parse");
        assert_eq!(parsed, public);
        assert!(PublicKey::from_base64("c2hvcnQ=").is_err());
        assert!(PublicKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn x25519_matches_rfc7748_vector() {
        // RFC 7748 section 6.1, Alice's key pair.
        let private = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(
            PrivateKey::from_bytes(private).public_key().as_bytes(),
            &public
        );
    }

    fn hex32(s: &str) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }

    #[test]
    fn key_file_created_0600_never_overwritten_and_mode_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("host.key");
        let public = create_private_key_file(&path).expect("create");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_private_key(&path).expect("load").public_key(), public);
        assert!(matches!(
            create_private_key_file(&path),
            Err(KeyError::Exists { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_private_key(&path).expect_err("group-readable key must be refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn garbage_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.key");
        fs::write(&path, "hello\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            load_private_key(&path),
            Err(KeyError::BadKeyFile { .. })
        ));
    }

    #[test]
    fn fingerprint_same_from_both_sides() {
        let (_, ka) = generate_keypair().expect("rng");
        let (_, kb) = generate_keypair().expect("rng");
        let f1 = pair_fingerprint("m", ("a", &ka), ("b", &kb));
        let f2 = pair_fingerprint("m", ("b", &kb), ("a", &ka));
        assert_eq!(f1, f2);
        assert_eq!(f1.len(), 39);
    }
}
