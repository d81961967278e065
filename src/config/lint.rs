//! Stable codes for manifest diagnostics, so a CI job can match a finding
//! (`"code": "duplicate-key"` in `meshctl check --format json`) without parsing messages.
//!
//! Each [`Diagnostic`](super::Diagnostic) carries its [`Code`] from the place validation
//! finds the problem; the English message can be reworded freely. `tests/lint.rs` runs a
//! fixture per code through the real binary.

/// The stable code of a finding, set where the finding is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// A service's `allow` lists the peer that exports it.
    AllowSelf,
    /// An `allow` list names a peer with no file.
    AllowUnknownPeer,
    /// An `allow` entry that is not a peer name.
    BadAllow,
    /// An endpoint that is not `host:port`.
    BadEndpoint,
    /// A forward's `to` that is not `peer/service`.
    BadForwardTo,
    /// A `public_key` that is not a base64 X25519 key.
    BadKey,
    /// A forward's `listen` that is not an IP address and port.
    BadListen,
    /// `mesh_id`, `auth` or a `[limits]` value out of its range.
    BadMeshSettings,
    /// A peer file whose name is not a peer name.
    BadPeerName,
    /// A service name that is not a service name (or is reserved).
    BadServiceName,
    /// A service `target` that is not `host:port`.
    BadTarget,
    /// Two peers share one `public_key`.
    DuplicateKey,
    /// Two forwards of one peer listen on one address.
    DuplicateListen,
    /// A forward listens on a public address without `public = true`.
    ExposedForward,
    /// A forward's target service does not allow the forwarding peer.
    ForwardNotAllowed,
    /// A forward to a service of its own peer.
    ForwardToSelf,
    /// A forward names a peer that does not exist.
    ForwardUnknownPeer,
    /// A forward names a service its peer does not export.
    ForwardUnknownService,
    /// Anything not classified more precisely (pairs, CA pins, host config).
    Invalid,
    /// A manifest without peer files.
    NoPeers,
    /// A service whose target is a public address.
    PublicTarget,
    /// TOML syntax, a missing or unknown field, a wrong type.
    Schema,
    /// A peer without endpoints that others forward to.
    UnreachablePeer,
    /// A file that cannot be read.
    UnreadableFile,
    /// The manifest directory is missing or has no `mesh.toml`.
    UnusableManifest,
    /// A service that allows nobody.
    UnusedService,
}

impl Code {
    /// Every code, in the order of [`CODES`].
    pub const ALL: [Code; 26] = [
        Code::AllowSelf,
        Code::AllowUnknownPeer,
        Code::BadAllow,
        Code::BadEndpoint,
        Code::BadForwardTo,
        Code::BadKey,
        Code::BadListen,
        Code::BadMeshSettings,
        Code::BadPeerName,
        Code::BadServiceName,
        Code::BadTarget,
        Code::DuplicateKey,
        Code::DuplicateListen,
        Code::ExposedForward,
        Code::ForwardNotAllowed,
        Code::ForwardToSelf,
        Code::ForwardUnknownPeer,
        Code::ForwardUnknownService,
        Code::Invalid,
        Code::NoPeers,
        Code::PublicTarget,
        Code::Schema,
        Code::UnreachablePeer,
        Code::UnreadableFile,
        Code::UnusableManifest,
        Code::UnusedService,
    ];

    /// The code as `meshctl check` prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::AllowSelf => "allow-self",
            Code::AllowUnknownPeer => "allow-unknown-peer",
            Code::BadAllow => "bad-allow",
            Code::BadEndpoint => "bad-endpoint",
            Code::BadForwardTo => "bad-forward-to",
            Code::BadKey => "bad-key",
            Code::BadListen => "bad-listen",
            Code::BadMeshSettings => "bad-mesh-settings",
            Code::BadPeerName => "bad-peer-name",
            Code::BadServiceName => "bad-service-name",
            Code::BadTarget => "bad-target",
            Code::DuplicateKey => "duplicate-key",
            Code::DuplicateListen => "duplicate-listen",
            Code::ExposedForward => "exposed-forward",
            Code::ForwardNotAllowed => "forward-not-allowed",
            Code::ForwardToSelf => "forward-to-self",
            Code::ForwardUnknownPeer => "forward-unknown-peer",
            Code::ForwardUnknownService => "forward-unknown-service",
            Code::Invalid => "invalid",
            Code::NoPeers => "no-peers",
            Code::PublicTarget => "public-target",
            Code::Schema => "schema",
            Code::UnreachablePeer => "unreachable-peer",
            Code::UnreadableFile => "unreadable-file",
            Code::UnusableManifest => "unusable-manifest",
            Code::UnusedService => "unused-service",
        }
    }

    /// Whether a finding with this code fails `meshctl check`.
    pub const fn severity(self) -> Severity {
        match self {
            Code::PublicTarget | Code::UnreachablePeer | Code::UnusedService => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every code a finding of `meshctl check` can carry, with whether it is a warning (the
/// manifest still loads) or an error.
pub const CODES: &[(&str, Severity)] = &{
    let mut out = [("", Severity::Error); Code::ALL.len()];
    let mut i = 0;
    while i < Code::ALL.len() {
        out[i] = (Code::ALL[i].as_str(), Code::ALL[i].severity());
        i += 1;
    }
    out
};

/// Whether a finding fails `meshctl check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The manifest does not load; exit 1.
    Error,
    /// The manifest loads but is probably not what was meant; exit 0.
    Warning,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_listed_in_order() {
        let names: Vec<&str> = CODES.iter().map(|(c, _)| *c).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "CODES are sorted and unique");
        assert_eq!(names.len(), Code::ALL.len());
        for (code, (name, sev)) in Code::ALL.iter().zip(CODES) {
            assert_eq!(code.as_str(), *name);
            assert_eq!(code.severity(), *sev);
        }
        let warnings: Vec<&str> = CODES
            .iter()
            .filter(|(_, s)| *s == Severity::Warning)
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(
            warnings,
            ["public-target", "unreachable-peer", "unused-service"]
        );
    }
}
