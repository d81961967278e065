//! The manifest loader on arbitrary directories: the input is `mesh.toml`, then
//! `%%% NAME.toml` lines starting each further file (see `meshd_fuzz::split_files`). Never
//! a panic; a manifest that loads is linted and its diagnostics get their codes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::config::{lint, lint_manifest, load_manifest, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = meshd_fuzz::scratch("manifest");
    for (name, body) in meshd_fuzz::split_files(text, "mesh.toml", 8) {
        std::fs::write(dir.join(name), body).expect("write manifest file");
    }
    let diags = match load_manifest(&dir) {
        Ok(m) => {
            assert!(!m.peers.is_empty());
            for (name, peer) in &m.peers {
                assert_eq!(name, &peer.name);
            }
            lint_manifest(&m)
        }
        Err(ConfigError::Invalid(diags)) => {
            assert!(!diags.is_empty(), "an error without a diagnostic");
            diags
        }
    };
    for d in &diags {
        assert!(
            d.file.starts_with(&dir),
            "{} is outside the manifest",
            d.file.display()
        );
        let code = d.code.as_str();
        assert!(
            lint::CODES.iter().any(|(c, _)| *c == code),
            "unlisted code {code}"
        );
        let _ = d.to_string();
    }
});
