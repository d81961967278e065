//! `meshctl`: starts a mesh (`init`), onboards a server (`add-peer`), checks a manifest
//! as a CI step (`check`), prints pair fingerprints for out-of-band verification (`pair`),
//! drafts a manifest from stunnel configurations (`import-stunnel`), shows a running
//! daemon's links (`status`) and makes a private CA and peer certificates for `tls` links (`cert`).
//!
//! Exit codes: 0 success, 1 failure (including an invalid manifest, or a link down for
//! `status`), 64 (EX_USAGE) when the manifest directory or the stunnel input cannot be used
//! at all, 2 for command-line mistakes (clap) and when `status` cannot reach the admin
//! server.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use meshd::config::stunnel::{self, HostInput, ImportError};
use meshd::config::{self, ConfigError, Diagnostic, HostPort, PeerName};
use meshd::keys::{self, KeyError, PublicKey};

#[path = "meshctl/cert.rs"]
mod cert;
#[path = "meshctl/status.rs"]
mod status;

/// Exit code for an unusable manifest directory (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "meshctl", version, about = "Manage a meshd mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a new mesh: write DIR/mesh.toml (documented; commit it), and for psk the mesh
    /// secret file every host must hold.
    Init {
        /// The mesh id: salts every pair key and is bound into every handshake
        /// (1-64 characters from A-Z, a-z, 0-9, '.', '_' and '-').
        #[arg(long, value_name = "ID")]
        mesh_id: String,
        /// How links authenticate.
        #[arg(long, value_enum, default_value_t = InitAuth::Noise)]
        auth: InitAuth,
        /// The manifest directory to create (or an empty one to fill).
        #[arg(long, value_name = "DIR", default_value = "peers")]
        manifest: PathBuf,
        /// psk only: the mesh secret file to create (0600, never overwritten, never commit
        /// it).
        #[arg(long, value_name = "FILE", default_value = "/etc/meshd/mesh.secret")]
        secret: PathBuf,
    },
    /// Onboard this server: create its key file (if absent) and write DIR/NAME.toml to commit.
    AddPeer {
        /// The new peer's name (a-z, 0-9, '-').
        name: String,
        /// Where other peers dial this one: IPv4:port, [IPv6]:port or dns-name:port.
        #[arg(long = "endpoint", value_name = "HOST:PORT", required = true)]
        endpoints: Vec<String>,
        /// The manifest directory.
        #[arg(long, value_name = "DIR", default_value = "peers")]
        manifest: PathBuf,
        /// This host's private key file (created 0600 if absent, never overwritten).
        #[arg(long, value_name = "FILE", default_value = "/etc/meshd/host.key")]
        key: PathBuf,
    },
    /// Validate a manifest directory: errors fail (exit 1), warnings are only printed.
    Check {
        /// The manifest directory.
        #[arg(long, value_name = "DIR", default_value = "peers")]
        manifest: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Draft a manifest from the stunnel configurations of several hosts, and report what
    /// is wrong in them or could not be mapped (exit 0 when a draft was written).
    ImportStunnel {
        /// A host and its stunnel configuration file; once per host.
        #[arg(long = "host", value_name = "NAME=FILE", required = true)]
        hosts: Vec<String>,
        /// A public DNS name or IP address of a host, to match `connect` lines and to write
        /// its endpoints; repeatable.
        #[arg(long = "addr", value_name = "NAME=HOST")]
        addrs: Vec<String>,
        /// The directory to write the draft manifest into (created; must be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The mesh id of the draft.
        #[arg(long, value_name = "ID", default_value = "imported")]
        mesh_id: String,
    },
    /// Make a private CA and peer certificates for `auth = "tls"` (new-ca, issue, show).
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Print the fingerprint of a pair of peers, to compare out of band.
    Pair {
        /// One peer.
        a: String,
        /// The other peer (the order does not matter).
        b: String,
        /// The manifest directory.
        #[arg(long, value_name = "DIR", default_value = "peers")]
        manifest: PathBuf,
    },
    /// Ask the running meshd to re-read its host config and manifest and apply the
    /// difference (as SIGHUP does): exit 0 when the new configuration runs, 1 when it was
    /// refused (every error printed; the old configuration keeps running), 2 when the
    /// admin server cannot be reached.
    Reload {
        /// The daemon's admin address (`admin` in its host config).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        admin: String,
    },
    /// Show the links of the running meshd: exit 0 when all are up, 1 when any is down,
    /// 2 when the admin server cannot be reached.
    Status {
        /// The daemon's admin address (`admin` in its host config).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        admin: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// The whole mesh: this host's links and those of every peer it dials (asked over
        /// the links), as a matrix, with the pairs whose two ends disagree.
        #[arg(long)]
        mesh: bool,
    },
}

/// The `auth` of a new mesh.
#[derive(Clone, Copy, ValueEnum)]
enum InitAuth {
    /// Each peer is identified by its X25519 public key in the manifest.
    Noise,
    /// Noise with every pair key also derived from a mesh secret all hosts hold.
    Psk,
    /// TLS 1.3 with certificates of the mesh's own CA (`meshctl cert`).
    Tls,
}

impl InitAuth {
    fn as_str(self) -> &'static str {
        match self {
            InitAuth::Noise => "noise",
            InitAuth::Psk => "psk",
            InitAuth::Tls => "tls",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            mesh_id,
            auth,
            manifest,
            secret,
        } => init(&mesh_id, auth, &manifest, &secret),
        Command::AddPeer {
            name,
            endpoints,
            manifest,
            key,
        } => add_peer(&name, &endpoints, &manifest, &key),
        Command::Check { manifest, format } => check(&manifest, format),
        Command::Pair { a, b, manifest } => pair(&a, &b, &manifest),
        Command::ImportStunnel {
            hosts,
            addrs,
            out,
            mesh_id,
        } => import_stunnel(&hosts, &addrs, &out, &mesh_id),
        Command::Status {
            admin,
            format,
            mesh: false,
        } => status::run(&admin, matches!(format, Format::Json)),
        Command::Status {
            admin,
            format,
            mesh: true,
        } => status::run_mesh(&admin, matches!(format, Format::Json)),
        Command::Reload { admin } => status::reload(&admin),
        Command::Cert(cmd) => cert::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshctl: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A reader that closed our stdout (`meshctl check | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn add_peer(
    name: &str,
    endpoints: &[String],
    manifest: &Path,
    key: &Path,
) -> anyhow::Result<ExitCode> {
    // Validate everything before touching the disk, so a typo leaves no half-made key.
    let name = PeerName::new(name).map_err(anyhow::Error::msg)?;
    let mut parsed = Vec::new();
    for ep in endpoints {
        let hp: HostPort = ep
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--endpoint {e}"))?;
        parsed.push(hp);
    }
    if !manifest.is_dir() {
        bail!(
            "{}: manifest directory does not exist (use --manifest DIR, or start a new mesh \
             with `meshctl init --mesh-id ID --manifest {}`)",
            manifest.display(),
            manifest.display()
        );
    }
    let file = manifest.join(format!("{name}.toml"));
    if file.exists() {
        bail!(
            "{}: already exists; peer \"{name}\" is already in the manifest (edit that file, \
             or pick another name)",
            file.display()
        );
    }

    let (public, created) = host_public_key(key)?;
    let text = peer_file_text(&name, &parsed, &public);
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    out.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;

    let mut stdout = io::stdout().lock();
    if created {
        writeln!(
            stdout,
            "created private key {} (mode 0600, never commit it)",
            key.display()
        )?;
    } else {
        writeln!(stdout, "reusing the existing private key {}", key.display())?;
    }
    writeln!(stdout, "wrote {}", file.display())?;
    writeln!(stdout)?;
    writeln!(stdout, "next steps:")?;
    writeln!(
        stdout,
        "  1. add services and forwards to {} if this host needs them, then \
         `meshctl check --manifest {}`",
        file.display(),
        manifest.display()
    )?;
    writeln!(stdout, "  2. commit {} and push it", file.display())?;
    writeln!(
        stdout,
        "  3. on the other hosts: `git pull`, then `meshctl reload` (or `systemctl reload meshd`)"
    )?;
    writeln!(
        stdout,
        "  4. add \"{name}\" to the allow list of every service it should reach \
         (services.NAME.allow in that peer's file)"
    )?;
    Ok(ExitCode::SUCCESS)
}

fn init(mesh_id: &str, auth: InitAuth, manifest: &Path, secret: &Path) -> anyhow::Result<ExitCode> {
    // Every check before anything is written.
    let id_ok = (1..=64).contains(&mesh_id.len())
        && mesh_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        bail!("--mesh-id {mesh_id:?}: use 1-64 characters from A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    let mesh_file = manifest.join("mesh.toml");
    if manifest.exists() {
        if !manifest.is_dir() {
            bail!("{}: exists and is not a directory", manifest.display());
        }
        if mesh_file.exists() {
            bail!(
                "{}: already exists; this directory already holds a mesh (nothing changed)",
                mesh_file.display()
            );
        }
        let mut entries = fs::read_dir(manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        if entries.next().is_some() {
            bail!(
                "{}: not empty; init writes a new manifest into an empty or missing directory",
                manifest.display()
            );
        }
    }
    if matches!(auth, InitAuth::Psk) && secret.exists() {
        bail!(
            "{}: already exists; it is never overwritten (another mesh may use it). Pick \
             another --secret FILE, or remove it if it is yours and unused",
            secret.display()
        );
    }
    fs::create_dir_all(manifest)
        .with_context(|| format!("cannot create {}", manifest.display()))?;
    if matches!(auth, InitAuth::Psk) {
        keys::create_mesh_secret_file(secret)?;
    }
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&mesh_file)
        .with_context(|| format!("cannot create {}", mesh_file.display()))?;
    out.write_all(mesh_file_text(mesh_id, auth).as_bytes())
        .with_context(|| format!("cannot write {}", mesh_file.display()))?;

    let mut stdout = io::stdout().lock();
    writeln!(stdout, "wrote {}", mesh_file.display())?;
    if matches!(auth, InitAuth::Psk) {
        writeln!(
            stdout,
            "created mesh secret {} (mode 0600, 32 random bytes; never commit it)",
            secret.display()
        )?;
    }
    writeln!(stdout)?;
    writeln!(stdout, "next steps:")?;
    let mut step = 1;
    if matches!(auth, InitAuth::Psk) {
        writeln!(
            stdout,
            "  {step}. copy {} to every host of the mesh out of band (scp, your secret \
             store; not git), mode 0600 owned by meshd, and name it in each host's \
             meshd.toml: mesh_secret = \"{}\"",
            secret.display(),
            secret.display()
        )?;
        step += 1;
    }
    if matches!(auth, InitAuth::Tls) {
        writeln!(
            stdout,
            "  {step}. make the mesh CA and a certificate per host: `meshctl cert new-ca \
             --out-dir DIR`, then `meshctl cert issue NAME --ca-dir DIR` (see `meshctl cert --help`)"
        )?;
        step += 1;
    }
    writeln!(
        stdout,
        "  {step}. on each host: `meshctl add-peer NAME --endpoint HOST:PORT --manifest {}`",
        manifest.display()
    )?;
    writeln!(
        stdout,
        "  {}. `meshctl check --manifest {}`, then commit the directory and push it",
        step + 1,
        manifest.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// A new mesh's `mesh.toml`: the two settings it needs, and every limit commented out at
/// its default, so that an edit is a visible, reviewable change.
fn mesh_file_text(mesh_id: &str, auth: InitAuth) -> String {
    let d = config::Limits::default();
    format!(
        "# Mesh-wide settings, written by `meshctl init`. Everything in this directory is \
         public:\n\
         # names, addresses and public keys only; each peer has its own file, NAME.toml \
         (`meshctl add-peer`).\n\
         \n\
         # Salts every pair key and is bound into every handshake, so two meshes never share \
         keys.\n\
         mesh_id = \"{mesh_id}\"\n\
         \n\
         # How links authenticate: \"noise\" (each peer is identified by its public key), \"psk\" \
         (noise,\n\
         # plus every pair key derived from the mesh_secret file each host holds) or \"tls\" \
         (TLS 1.3\n\
         # with certificates of the mesh CA, made with `meshctl cert`; ca_fingerprint may pin \
         it).\n\
         # A [[pairs]] table sets another mode for one pair:\n\
         #   [[pairs]]\n\
         #   peers = [\"off1\", \"web1\"]\n\
         #   auth = \"tls\"\n\
         auth = \"{auth}\"\n\
         \n\
         # Link limits and timers, all optional; uncomment to change. The values shown are the \
         defaults.\n\
         # [limits]\n\
         # Initial per-stream receive window in bytes.\n\
         # stream_window = {window}\n\
         # Streams open at once on one link.\n\
         # max_streams = {streams}\n\
         # Interval between keepalive pings, in milliseconds.\n\
         # ping_interval_ms = {ping}\n\
         # Deadline for a whole handshake, in milliseconds.\n\
         # handshake_timeout_ms = {hs}\n\
         # How long a new local connection waits for its link before it is reset, in \
         milliseconds.\n\
         # link_wait_ms = {wait}\n",
        auth = auth.as_str(),
        window = d.stream_window,
        streams = d.max_streams,
        ping = d.ping_interval.as_millis(),
        hs = d.handshake_timeout.as_millis(),
        wait = d.link_wait.as_millis(),
    )
}

/// The public key of this host's key file, creating the file if absent. An existing key file
/// is only read (and mode-checked): replacing it would cut this host off from the mesh.
fn host_public_key(key: &Path) -> anyhow::Result<(PublicKey, bool)> {
    match keys::create_private_key_file(key) {
        Ok(public) => Ok((public, true)),
        Err(KeyError::Exists { .. }) => {
            let private = keys::load_private_key(key)?;
            Ok((private.public_key(), false))
        }
        Err(e) => Err(e.into()),
    }
}

/// The new peer's file: only the required keys, then commented examples, so that a script
/// can append `[services.X]` and `[[forwards]]` tables to the file as it stands.
fn peer_file_text(name: &PeerName, endpoints: &[HostPort], public: &PublicKey) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{:?}", e.to_string()))
        .collect();
    format!(
        "# Peer \"{name}\", written by `meshctl add-peer`. Public information, safe to commit.\n\
         # Where other peers dial this one, in order of preference.\n\
         endpoints = [{}]\n\
         # X25519 public key; the private key stays in this host's key file.\n\
         public_key = \"{public}\"\n\
         \n\
         # A service this peer exports, reachable only by the peers listed in allow:\n\
         # [services.postgres]\n\
         # target = \"127.0.0.1:5432\"\n\
         # allow = [\"web1\"]\n\
         #\n\
         # An entrance on this peer to another peer's service:\n\
         # [[forwards]]\n\
         # listen = \"127.0.0.1:16001\"\n\
         # to = \"db1/postgres\"\n",
        eps.join(", ")
    )
}

fn check(manifest: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let (errors, warnings, code) = match config::check_manifest_dir(manifest) {
        Err(d) => (vec![d], Vec::new(), ExitCode::from(EX_USAGE)),
        Ok(()) => match config::load_manifest(manifest) {
            Ok(m) => (Vec::new(), config::lint_manifest(&m), ExitCode::SUCCESS),
            Err(e @ ConfigError::Invalid(_)) => {
                (e.diagnostics().to_vec(), Vec::new(), ExitCode::FAILURE)
            }
        },
    };
    let mut stdout = io::stdout().lock();
    match format {
        Format::Text => {
            for d in &errors {
                writeln!(stdout, "error: {d} [{}]", d.code)?;
            }
            for d in &warnings {
                writeln!(stdout, "warning: {d} [{}]", d.code)?;
            }
            writeln!(
                stdout,
                "{} error{}, {} warning{}",
                errors.len(),
                plural(errors.len()),
                warnings.len(),
                plural(warnings.len())
            )?;
        }
        Format::Json => {
            let doc = serde_json::json!({
                "ok": errors.is_empty(),
                "errors": errors.iter().map(diag_json).collect::<Vec<_>>(),
                "warnings": warnings.iter().map(diag_json).collect::<Vec<_>>(),
            });
            writeln!(stdout, "{doc}")?;
        }
    }
    stdout.flush()?;
    Ok(code)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn diag_json(d: &Diagnostic) -> serde_json::Value {
    serde_json::json!({
        "code": d.code.as_str(),
        "file": d.file.display().to_string(),
        "line": d.line,
        "field": d.field,
        "message": d.message,
    })
}

fn pair(a: &str, b: &str, manifest: &Path) -> anyhow::Result<ExitCode> {
    let m = config::load_manifest(manifest)
        .with_context(|| format!("manifest {} is not valid", manifest.display()))?;
    let key_of = |n: &str| -> anyhow::Result<(PeerName, PublicKey)> {
        let name = PeerName::new(n).map_err(anyhow::Error::msg)?;
        match m.peers.get(&name) {
            Some(p) => Ok((name, p.public_key)),
            None => bail!(
                "unknown peer \"{n}\" (no {} in the manifest)",
                manifest.join(format!("{n}.toml")).display()
            ),
        }
    };
    let (a, ka) = key_of(a)?;
    let (b, kb) = key_of(b)?;
    if a == b {
        bail!("a pair needs two different peers");
    }
    let fp = keys::pair_fingerprint(&m.mesh.mesh_id, (a.as_str(), &ka), (b.as_str(), &kb));
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{fp}")?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Usage errors of `import-stunnel`: printed once, exit 64.
fn usage(err: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("meshctl: error: {err}");
    Ok(ExitCode::from(EX_USAGE))
}

fn import_stunnel(
    host_args: &[String],
    addr_args: &[String],
    out: &Path,
    mesh_id: &str,
) -> anyhow::Result<ExitCode> {
    let mut hosts: Vec<HostInput> = Vec::new();
    for arg in host_args {
        match stunnel::parse_name_arg("--host", arg) {
            Ok((name, file)) => hosts.push(HostInput {
                name,
                file: PathBuf::from(file),
                addrs: Vec::new(),
            }),
            Err(e) => return usage(e),
        }
    }
    for arg in addr_args {
        let (name, addr) = match stunnel::parse_name_arg("--addr", arg) {
            Ok(v) => v,
            Err(e) => return usage(e),
        };
        match hosts.iter_mut().find(|h| h.name == name) {
            Some(h) => h.addrs.push(addr),
            None => return usage(ImportError::AddrForUnknownHost { host: name, addr }),
        }
    }
    // Refuse before reading anything: a draft must never overwrite a real manifest.
    if out.exists() {
        let empty = fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return usage(format!(
                "{}: exists and is not an empty directory; give --out a new directory",
                out.display()
            ));
        }
    }
    let draft = match stunnel::import(&hosts, mesh_id) {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = out.join(name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("mesh.toml", &draft.mesh_toml)?;
    for (name, text) in &draft.peers {
        write(&format!("{name}.toml"), text)?;
    }
    let report = draft.report(out);
    write("IMPORT-REPORT.md", &report)?;
    let mut stdout = io::stdout().lock();
    stdout.write_all(report.as_bytes())?;
    writeln!(
        stdout,
        "\nwrote {} (this report is also in {})",
        out.display(),
        out.join("IMPORT-REPORT.md").display()
    )?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}
