//! The config hash: a short fingerprint of the exact bytes a daemon was started from, so
//! "which config is really live" has an answer (`meshd_config_info{hash}`, `/status`).
//!
//! SHA-256 over the host config file, then every `*.toml` file of the manifest directory
//! sorted by file name, each input framed by its name and its length so that moving bytes
//! from one file to the next changes the hash. The first 16 hex digits are kept: enough to
//! tell deployments apart at a glance, short enough for a label and a table column.

use std::fs;
use std::io;
use std::path::Path;

use ring::digest::{Context, SHA256};

/// Hex digits kept from the digest.
pub const CONFIG_HASH_LEN: usize = 16;

/// The config hash of in-memory inputs: the host config bytes and the manifest files as
/// `(file name, bytes)`, in any order (they are sorted here).
pub fn config_hash(host: &[u8], manifest: &[(String, Vec<u8>)]) -> String {
    let mut ctx = Context::new(&SHA256);
    let mut feed = |name: &str, bytes: &[u8]| {
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    // The host file is framed under a fixed name: renaming it is not a config change.
    feed("", host);
    let mut files: Vec<&(String, Vec<u8>)> = manifest.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, bytes) in files {
        feed(name, bytes);
    }
    let digest = ctx.finish();
    let mut hex = String::with_capacity(2 * digest.as_ref().len());
    for b in digest.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.truncate(CONFIG_HASH_LEN);
    hex
}

/// Reads the host config file and every `*.toml` file of `manifest_dir` and hashes them.
pub fn hash_config_files(host_file: &Path, manifest_dir: &Path) -> io::Result<String> {
    let host = fs::read(host_file)?;
    let mut files = Vec::new();
    for entry in fs::read_dir(manifest_dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, fs::read(&path)?));
        }
    }
    Ok(config_hash(&host, &files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, b)| (n.to_string(), b.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn is_short_hex_and_ignores_listing_order() {
        let a = config_hash(
            b"name = \"a\"",
            &files(&[("mesh.toml", "x"), ("a.toml", "y")]),
        );
        let b = config_hash(
            b"name = \"a\"",
            &files(&[("a.toml", "y"), ("mesh.toml", "x")]),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), CONFIG_HASH_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn every_byte_and_boundary_counts() {
        let base = config_hash(b"h", &files(&[("a.toml", "xy"), ("b.toml", "z")]));
        let moved = config_hash(b"h", &files(&[("a.toml", "x"), ("b.toml", "yz")]));
        let renamed = config_hash(b"h", &files(&[("a.toml", "xy"), ("c.toml", "z")]));
        let host = config_hash(b"H", &files(&[("a.toml", "xy"), ("b.toml", "z")]));
        assert_ne!(base, moved);
        assert_ne!(base, renamed);
        assert_ne!(base, host);
    }

    #[test]
    fn reads_only_toml_files_of_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("meshd.toml");
        let peers = dir.path().join("peers");
        fs::create_dir(&peers).expect("mkdir");
        fs::write(&host, "name = \"a\"\n").expect("write");
        fs::write(peers.join("mesh.toml"), "mesh_id = \"t\"\n").expect("write");
        let first = hash_config_files(&host, &peers).expect("hash");
        fs::write(peers.join("README.md"), "not config").expect("write");
        assert_eq!(first, hash_config_files(&host, &peers).expect("hash"));
        fs::write(peers.join("b.toml"), "endpoints = []\n").expect("write");
        assert_ne!(first, hash_config_files(&host, &peers).expect("hash"));
    }
}
