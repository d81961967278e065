//! The host config loader (`meshd.toml`) on arbitrary text: never a panic, and every
//! diagnostic names the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::config::{load_host_config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let dir = meshd_fuzz::scratch("host");
    let path = dir.join("meshd.toml");
    std::fs::write(&path, data).expect("write meshd.toml");
    match load_host_config(&path) {
        Ok(host) => {
            assert_eq!(host.path, path);
            // Relative paths are resolved against the file's directory.
            assert!(host.manifest.is_absolute() && host.key.is_absolute());
        }
        Err(ConfigError::Invalid(diags)) => {
            assert!(!diags.is_empty(), "an error without a diagnostic");
            for d in &diags {
                assert_eq!(d.file, path);
                let _ = d.to_string();
            }
        }
    }
});
