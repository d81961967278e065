//! Validation of raw structs into the typed configuration.

use std::path::Path;

use super::{Config, ConfigError, HostConfig, Manifest};

/// Loads and validates a manifest directory (`mesh.toml` + `*.toml`).
pub fn load_manifest(dir: &Path) -> Result<Manifest, ConfigError> {
    todo!("{}", dir.display())
}

/// Loads and validates a host config file alone.
pub fn load_host_config(path: &Path) -> Result<HostConfig, ConfigError> {
    todo!("{}", path.display())
}

/// Loads the host config, its manifest, its key and mesh secret, and checks them together.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    todo!("{}", path.display())
}
