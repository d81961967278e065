//! Reading stunnel configuration files and drafting a manifest from them
//! (`meshctl import-stunnel`).
//!
//! The reader follows stunnel.conf(5) as far as a migration needs: global options, then
//! `[sections]`; `option = value` with spaces around `=`; whole-line comments starting with
//! `;` or `#` (stunnel has no end-of-line comments: `;` after a value is part of the value);
//! option names compared without case, as stunnel does; `include` of a file or of a
//! directory (its `*.conf`, in name order) spliced in where it appears, relative paths
//! resolved from the including file. Service-level options written in the global section are
//! defaults for every section, as in stunnel; the importer honours that for `client`,
//! `PSKsecrets` and `PSKidentity`.
//!
//! Nothing in a file's content makes it fail: every line it cannot read becomes a
//! [`Finding`] with file:line, so one run reports on a whole fleet. Only a host file that
//! cannot be read at all, or bad arguments, are an [`ImportError`].
//!
//! PSK secrets are read only to measure them: no secret is ever copied into a message.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{is_exposed, HostPort, PeerName, ServiceName};

/// Includes nested deeper than this are refused (a loop that `canonicalize` cannot see).
const MAX_INCLUDE_DEPTH: usize = 16;
/// stunnel refuses shorter PSK secrets.
const MIN_PSK_LEN: usize = 16;
/// Mesh port written into drafted endpoints.
const MESH_PORT: u16 = 7443;

/// Options the draft carries over.
const TRANSLATED: &[&str] = &["client", "accept", "connect"];
/// Options whose job meshd does differently: per-peer keys and a fixed Noise suite.
const SUPERSEDED: &[&str] = &[
    "ciphers",
    "ciphersuites",
    "psksecrets",
    "pskidentity",
    "cert",
    "key",
    "cafile",
    "capath",
    "crlfile",
    "crlpath",
    "verify",
    "verifychain",
    "verifypeer",
    "checkhost",
    "checkip",
    "checkemail",
    "sslversion",
    "sslversionmin",
    "sslversionmax",
    "options",
    "curves",
    "ocspaia",
];

/// Where something was written: file and 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loc {
    /// The file, as reached from the host file (not canonicalized).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One `name = value` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    /// The option name as written.
    pub name: String,
    /// The value, trimmed.
    pub value: String,
    /// Where it was written.
    pub loc: Loc,
}

impl Opt {
    /// Option names are case-insensitive in stunnel.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// A `[name]` section and its options, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The name between the brackets, trimmed.
    pub name: String,
    /// Where the header was written.
    pub loc: Loc,
    /// Its options, in file order.
    pub options: Vec<Opt>,
}

impl Section {
    /// The last value of an option (stunnel keeps the last one of most options).
    pub fn last(&self, name: &str) -> Option<&Opt> {
        self.options.iter().rev().find(|o| o.is(name))
    }
}

/// One host's stunnel configuration, includes spliced in.
#[derive(Clone, Debug, Default)]
pub struct StunnelConfig {
    /// The host file.
    pub file: PathBuf,
    /// Options before the first section.
    pub global: Vec<Opt>,
    /// Sections in reading order.
    pub sections: Vec<Section>,
    /// Problems met while reading.
    pub findings: Vec<Finding>,
}

impl StunnelConfig {
    /// An option of a section, or its default from the global section.
    fn effective<'a>(&'a self, sec: &'a Section, name: &str) -> Option<&'a Opt> {
        sec.last(name)
            .or_else(|| self.global.iter().rev().find(|o| o.is(name)))
    }
}

/// What kind of problem a [`Finding`] is; `code()` is stable for scripts and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// An included file, or a PSK secrets file, does not exist or cannot be read.
    FileNotFound,
    /// A line that is not a comment, a section header or `option = value`.
    BadLine,
    /// Two sections with one name in one host's configuration.
    DuplicateSection,
    /// A client entrance listening on all interfaces or on a public address.
    ExposedEntrance,
    /// One PSK identity used for several services or by clients on several hosts.
    PskIdentityReused,
    /// A PSK secret shorter than stunnel's 16 bytes.
    ShortPskSecret,
    /// A client `connect` that reaches no server section of the imported hosts.
    UnmatchedConnect,
    /// A section or value that has no meshd equivalent and was skipped or changed.
    NotMapped,
    /// Options the draft does not carry over.
    UntranslatedOption,
}

impl FindingKind {
    /// Every kind, in report order.
    pub const ALL: [FindingKind; 9] = [
        FindingKind::FileNotFound,
        FindingKind::BadLine,
        FindingKind::DuplicateSection,
        FindingKind::ExposedEntrance,
        FindingKind::PskIdentityReused,
        FindingKind::ShortPskSecret,
        FindingKind::UnmatchedConnect,
        FindingKind::NotMapped,
        FindingKind::UntranslatedOption,
    ];

    /// Stable code, shown in the report.
    pub fn code(self) -> &'static str {
        match self {
            FindingKind::FileNotFound => "file-not-found",
            FindingKind::BadLine => "bad-line",
            FindingKind::DuplicateSection => "duplicate-section",
            FindingKind::ExposedEntrance => "exposed-entrance",
            FindingKind::PskIdentityReused => "psk-identity-reused",
            FindingKind::ShortPskSecret => "short-psk-secret",
            FindingKind::UnmatchedConnect => "unmatched-connect",
            FindingKind::NotMapped => "not-mapped",
            FindingKind::UntranslatedOption => "untranslated-option",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            FindingKind::FileNotFound => "Files not found",
            FindingKind::BadLine => "Lines that could not be read",
            FindingKind::DuplicateSection => "Duplicate section names",
            FindingKind::ExposedEntrance => {
                "Client entrances on all interfaces or on a public address"
            }
            FindingKind::PskIdentityReused => "PSK identities reused",
            FindingKind::ShortPskSecret => "PSK secrets shorter than 16 bytes",
            FindingKind::UnmatchedConnect => "connect targets that match no server section",
            FindingKind::NotMapped => "Sections and values not mapped as written",
            FindingKind::UntranslatedOption => "Options not translated",
        }
    }
}

/// One problem found in the stunnel files, or in mapping them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// Where, when it is one place.
    pub loc: Option<Loc>,
    /// What is wrong; never contains a secret.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.kind.code())?;
        if let Some(loc) = &self.loc {
            write!(f, "{loc}: ")?;
        }
        f.write_str(&self.message)
    }
}

fn finding(kind: FindingKind, loc: Option<&Loc>, message: impl Into<String>) -> Finding {
    Finding {
        kind,
        loc: loc.cloned(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// One line, classified.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Blank,
    Section(&'a str),
    Option(&'a str, &'a str),
    Bad(&'static str),
}

fn lex(raw: &str) -> Line<'_> {
    let line = raw.trim_end_matches('\r').trim();
    if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
        return Line::Blank;
    }
    if let Some(rest) = line.strip_prefix('[') {
        return match rest.strip_suffix(']').map(str::trim) {
            Some(name) if !name.is_empty() && !name.contains(['[', ']']) => Line::Section(name),
            _ => Line::Bad("a section header is written [name]"),
        };
    }
    match line.split_once('=') {
        None => Line::Bad("expected `option = value`, `[section]` or a comment (; or #)"),
        Some((name, value)) => {
            let name = name.trim();
            if name.is_empty() {
                Line::Bad("missing option name before '='")
            } else if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                Line::Bad("the option name has characters stunnel does not use")
            } else {
                Line::Option(name, value.trim())
            }
        }
    }
}

struct Reader {
    cfg: StunnelConfig,
    current: Option<usize>,
    /// Files being read, canonical, to refuse include loops.
    stack: Vec<PathBuf>,
}

impl Reader {
    fn text(&mut self, file: &Path, text: &str) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, raw) in text.split('\n').enumerate() {
            let loc = Loc {
                file: file.to_path_buf(),
                line: i + 1,
            };
            match lex(raw) {
                Line::Blank => {}
                Line::Section(name) => {
                    self.cfg.sections.push(Section {
                        name: name.to_owned(),
                        loc,
                        options: Vec::new(),
                    });
                    self.current = Some(self.cfg.sections.len() - 1);
                }
                Line::Option(name, value) if name.eq_ignore_ascii_case("include") => {
                    self.include(&loc, value);
                }
                Line::Option(name, value) => {
                    let opt = Opt {
                        name: name.to_owned(),
                        value: value.to_owned(),
                        loc,
                    };
                    match self.current {
                        Some(i) => self.cfg.sections[i].options.push(opt),
                        None => self.cfg.global.push(opt),
                    }
                }
                Line::Bad(why) => self.cfg.findings.push(finding(
                    FindingKind::BadLine,
                    Some(&loc),
                    format!("{why}; line skipped"),
                )),
            }
        }
    }

    fn include(&mut self, loc: &Loc, value: &str) {
        let path = resolve(&loc.file, value);
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            self.cfg.findings.push(finding(
                FindingKind::BadLine,
                Some(loc),
                format!(
                    "include = {value}: includes nested deeper than {MAX_INCLUDE_DEPTH}; not read"
                ),
            ));
            return;
        }
        match fs::metadata(&path) {
            Err(e) => self.cfg.findings.push(finding(
                FindingKind::FileNotFound,
                Some(loc),
                format!("include = {value}: {}: {e}", path.display()),
            )),
            Ok(meta) if meta.is_dir() => {
                let mut files: Vec<PathBuf> = match fs::read_dir(&path) {
                    Ok(entries) => entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
                        .collect(),
                    Err(e) => {
                        self.cfg.findings.push(finding(
                            FindingKind::FileNotFound,
                            Some(loc),
                            format!("include = {value}: cannot list {}: {e}", path.display()),
                        ));
                        return;
                    }
                };
                files.sort();
                for f in files {
                    self.file(&f, loc);
                }
            }
            Ok(_) => self.file(&path, loc),
        }
    }

    fn file(&mut self, path: &Path, from: &Loc) {
        let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.stack.contains(&canon) {
            self.cfg.findings.push(finding(
                FindingKind::BadLine,
                Some(from),
                format!("include loop: {} is already being read", path.display()),
            ));
            return;
        }
        match fs::read(path) {
            Err(e) => self.cfg.findings.push(finding(
                FindingKind::FileNotFound,
                Some(from),
                format!("include: {}: {e}", path.display()),
            )),
            Ok(bytes) => {
                self.stack.push(canon);
                self.text(path, &String::from_utf8_lossy(&bytes));
                self.stack.pop();
            }
        }
    }

    fn finish(mut self) -> StunnelConfig {
        let mut first: HashMap<String, Loc> = HashMap::new();
        for s in &self.cfg.sections {
            let key = s.name.to_ascii_lowercase();
            match first.get(&key) {
                Some(at) => self.cfg.findings.push(finding(
                    FindingKind::DuplicateSection,
                    Some(&s.loc),
                    format!(
                        "section [{}] is defined again (first at {at}); both are imported, \
                         under different service names where they export one",
                        s.name
                    ),
                )),
                None => {
                    first.insert(key, s.loc.clone());
                }
            }
        }
        self.cfg
    }
}

/// A path written in a file, relative to that file's directory unless absolute.
fn resolve(from: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match from.parent() {
        Some(dir) => dir.join(p),
        None => p.to_path_buf(),
    }
}

/// Reads a host's stunnel file and what it includes. Fails only when the file itself cannot
/// be read; every other problem is a finding in the result.
pub fn read_config(path: &Path) -> io::Result<StunnelConfig> {
    let bytes = fs::read(path)?;
    let mut r = Reader {
        cfg: StunnelConfig {
            file: path.to_path_buf(),
            ..StunnelConfig::default()
        },
        current: None,
        stack: vec![fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())],
    };
    r.text(path, &String::from_utf8_lossy(&bytes));
    Ok(r.finish())
}

/// Parses text as if read from `path` (includes are still read from disk, relative to it).
pub fn parse_str(path: &Path, text: &str) -> StunnelConfig {
    let mut r = Reader {
        cfg: StunnelConfig {
            file: path.to_path_buf(),
            ..StunnelConfig::default()
        },
        current: None,
        stack: vec![path.to_path_buf()],
    };
    r.text(path, text);
    r.finish()
}

// ---------------------------------------------------------------------------------------
// Addresses

/// An `accept` or `connect` value.
#[derive(Debug, PartialEq, Eq)]
enum StAddr {
    /// A bare port: all interfaces for `accept`, localhost for `connect`.
    Port(u16),
    /// `host:port`, the host without brackets.
    Host(String, u16),
    /// A Unix socket path.
    Unix,
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n != 0 => Ok(n),
        _ => Err(format!("port {p:?} is not a number in 1-65535")),
    }
}

fn parse_addr(v: &str) -> Result<StAddr, String> {
    let v = v.trim();
    if v.starts_with('/') {
        return Ok(StAddr::Unix);
    }
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return parse_port(v).map(StAddr::Port);
    }
    let (host, port) = match v.strip_prefix('[') {
        Some(rest) => rest
            .split_once("]:")
            .ok_or_else(|| "an IPv6 address is written [addr]:port".to_owned())?,
        // stunnel splits at the last ':', so `::1:6379` is host ::1, port 6379.
        None => v
            .rsplit_once(':')
            .ok_or_else(|| "expected [host:]port".to_owned())?,
    };
    if host.is_empty() {
        return Err("missing host before ':'".into());
    }
    Ok(StAddr::Host(host.to_owned(), parse_port(port)?))
}

/// A host as compared when matching: IPs in canonical form, names lowercased.
fn host_key(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix('[').unwrap_or(s);
    let s = s.strip_suffix(']').unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    match s.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => s.to_ascii_lowercase(),
    }
}

fn is_any(host: &str) -> bool {
    host == "*" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

fn host_port(host: &str, port: u16) -> Result<HostPort, String> {
    let text = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    text.parse()
}

/// A service name from a section name: lowercase, other characters become '-'.
fn service_name(section: &str) -> String {
    let mapped: String = section
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = mapped.trim_start_matches(['-', '_']).to_owned();
    name.truncate(63);
    if name.is_empty() {
        "service".into()
    } else {
        name
    }
}

// ---------------------------------------------------------------------------------------
// Importing

/// One host to import: its peer name, its stunnel file, and the addresses others reach it by.
#[derive(Clone, Debug)]
pub struct HostInput {
    /// The peer name in the draft.
    pub name: PeerName,
    /// Its stunnel configuration file.
    pub file: PathBuf,
    /// Its public DNS names or IPs (`--addr`), used to match `connect` and as endpoints.
    pub addrs: Vec<String>,
}

/// Input that makes an import impossible (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A `NAME=VALUE` argument is malformed.
    #[error("{flag} {arg:?}: {why}")]
    BadArg {
        /// `--host` or `--addr`.
        flag: &'static str,
        /// The argument as given.
        arg: String,
        /// What is wrong.
        why: String,
    },
    /// A host's stunnel file cannot be read.
    #[error("{}: cannot read the stunnel configuration of host \"{host}\": {source}", file.display())]
    Unreadable {
        /// The host.
        host: PeerName,
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The same host given twice.
    #[error("host \"{0}\" is given twice with --host")]
    DuplicateHost(PeerName),
    /// An `--addr` for a host without `--host`.
    #[error("--addr {host}={addr}: there is no --host {host}=FILE")]
    AddrForUnknownHost {
        /// The host named.
        host: PeerName,
        /// The address.
        addr: String,
    },
    /// The mesh id is not valid.
    #[error("--mesh-id {0:?}: use 1-64 characters from A-Z, a-z, 0-9, '.', '_' and '-'")]
    BadMeshId(String),
    /// Nothing to import.
    #[error("no host given: use --host NAME=FILE, once per host")]
    NoHosts,
}

/// Splits a `NAME=VALUE` argument of `flag`, checking the name is a peer name.
pub fn parse_name_arg(flag: &'static str, arg: &str) -> Result<(PeerName, String), ImportError> {
    let bad = |why: String| ImportError::BadArg {
        flag,
        arg: arg.to_owned(),
        why,
    };
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=VALUE".into()))?;
    let name = PeerName::new(name.trim()).map_err(bad)?;
    let value = value.trim();
    if value.is_empty() {
        return Err(bad("empty value after '='".into()));
    }
    Ok((name, value.to_owned()))
}

/// Checks an `--addr` value can become an endpoint.
pub fn check_addr(host: &PeerName, addr: &str) -> Result<(), ImportError> {
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    host_port(bare, MESH_PORT)
        .map(drop)
        .map_err(|why| ImportError::BadArg {
            flag: "--addr",
            arg: format!("{host}={addr}"),
            why: format!("not an IP address or DNS name ({why})"),
        })
}

/// The result of an import: file texts to write and what the report says.
#[derive(Debug)]
pub struct Draft {
    /// `mesh.toml`.
    pub mesh_toml: String,
    /// `NAME.toml` for each host.
    pub peers: BTreeMap<PeerName, String>,
    /// Everything found wrong or not mapped.
    pub findings: Vec<Finding>,
    /// Services drafted.
    pub services: usize,
    /// Forwards drafted.
    pub forwards: usize,
    hosts: Vec<(PeerName, PathBuf, Vec<String>)>,
}

struct Server {
    host: usize,
    section: String,
    loc: Loc,
    port: u16,
    /// The accept host when it names one address (not all interfaces).
    accept_key: Option<String>,
    service: ServiceName,
    target: HostPort,
    connect: String,
    allow: BTreeSet<PeerName>,
}

struct Fwd {
    listen: SocketAddr,
    peer: PeerName,
    service: ServiceName,
    comment: String,
}

fn mesh_id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads every host's stunnel files, maps client sections to the server sections they reach,
/// and drafts a manifest.
pub fn import(hosts: &[HostInput], mesh_id: &str) -> Result<Draft, ImportError> {
    if hosts.is_empty() {
        return Err(ImportError::NoHosts);
    }
    if !mesh_id_ok(mesh_id) {
        return Err(ImportError::BadMeshId(mesh_id.to_owned()));
    }
    let mut seen = BTreeSet::new();
    for h in hosts {
        if !seen.insert(&h.name) {
            return Err(ImportError::DuplicateHost(h.name.clone()));
        }
        for a in &h.addrs {
            check_addr(&h.name, a)?;
        }
    }
    let mut cfgs = Vec::new();
    for h in hosts {
        let cfg = read_config(&h.file).map_err(|source| ImportError::Unreadable {
            host: h.name.clone(),
            file: h.file.clone(),
            source,
        })?;
        cfgs.push(cfg);
    }

    let mut findings: Vec<Finding> = cfgs.iter().flat_map(|c| c.findings.clone()).collect();
    let keys: Vec<BTreeSet<String>> = hosts
        .iter()
        .map(|h| {
            std::iter::once(host_key(h.name.as_str()))
                .chain(h.addrs.iter().map(|a| host_key(a)))
                .collect()
        })
        .collect();

    // Per host and section: is it a client?
    let mut is_client: Vec<Vec<bool>> = Vec::new();
    for (hi, cfg) in cfgs.iter().enumerate() {
        let mut flags = Vec::new();
        for sec in &cfg.sections {
            let client = match cfg.effective(sec, "client") {
                None => false,
                Some(o) if o.value.eq_ignore_ascii_case("yes") => true,
                Some(o) if o.value.eq_ignore_ascii_case("no") => false,
                Some(o) => {
                    findings.push(finding(
                        FindingKind::BadLine,
                        Some(&o.loc),
                        format!(
                            "host {}, [{}]: client = {}: expected yes or no; read as no",
                            hosts[hi].name, sec.name, o.value
                        ),
                    ));
                    false
                }
            };
            flags.push(client);
        }
        is_client.push(flags);
    }

    untranslated(hosts, &cfgs, &mut findings);

    // Server sections become services.
    let mut servers: Vec<Server> = Vec::new();
    let mut server_of: HashMap<(usize, usize), usize> = HashMap::new();
    for (hi, cfg) in cfgs.iter().enumerate() {
        let host = &hosts[hi].name;
        let mut names: BTreeSet<String> = BTreeSet::new();
        for (si, sec) in cfg.sections.iter().enumerate() {
            if is_client[hi][si] {
                continue;
            }
            let skip = |findings: &mut Vec<Finding>, why: String| {
                findings.push(finding(
                    FindingKind::NotMapped,
                    Some(&sec.loc),
                    format!(
                        "host {host}, server section [{}]: {why}; no service drafted",
                        sec.name
                    ),
                ));
            };
            let Some(accept) = sec.last("accept") else {
                skip(&mut findings, "no accept".into());
                continue;
            };
            let connects: Vec<&Opt> = sec.options.iter().filter(|o| o.is("connect")).collect();
            let Some(connect) = connects.first() else {
                skip(
                    &mut findings,
                    "no connect (exec and other ways of serving are not translated)".into(),
                );
                continue;
            };
            let (accept_key, port) = match parse_addr(&accept.value) {
                Ok(StAddr::Port(p)) => (None, p),
                Ok(StAddr::Host(h, p)) => ((!is_any(&h)).then(|| host_key(&h)), p),
                Ok(StAddr::Unix) => {
                    skip(
                        &mut findings,
                        format!("accept = {} is a Unix socket", accept.value),
                    );
                    continue;
                }
                Err(e) => {
                    skip(&mut findings, format!("accept = {}: {e}", accept.value));
                    continue;
                }
            };
            let target = match parse_addr(&connect.value) {
                Ok(StAddr::Port(p)) => host_port("127.0.0.1", p),
                Ok(StAddr::Host(h, p)) => host_port(&h, p),
                Ok(StAddr::Unix) => {
                    Err("a Unix socket; meshd services target TCP addresses".into())
                }
                Err(e) => Err(e),
            };
            let target = match target {
                Ok(t) => t,
                Err(e) => {
                    skip(&mut findings, format!("connect = {}: {e}", connect.value));
                    continue;
                }
            };
            let base = service_name(&sec.name);
            let mut name = base.clone();
            let mut n = 2;
            while names.contains(&name) {
                let mut b = base.clone();
                b.truncate(58);
                name = format!("{b}-{n}");
                n += 1;
            }
            let Ok(service) = ServiceName::new(&name) else {
                skip(
                    &mut findings,
                    format!("cannot make a service name from {:?}", sec.name),
                );
                continue;
            };
            names.insert(name);
            if connects.len() > 1 {
                findings.push(finding(
                    FindingKind::NotMapped,
                    Some(&connects[1].loc),
                    format!(
                        "host {host}, [{}]: {} connect addresses (stunnel fails over between \
                         them); the service targets only the first, {}",
                        sec.name,
                        connects.len(),
                        connect.value
                    ),
                ));
            }
            server_of.insert((hi, si), servers.len());
            servers.push(Server {
                host: hi,
                section: sec.name.clone(),
                loc: sec.loc.clone(),
                port,
                accept_key,
                service,
                target,
                connect: connect.value.clone(),
                allow: BTreeSet::new(),
            });
        }
    }

    // Client sections become forwards to the service they reach.
    let mut forwards: Vec<Vec<Fwd>> = hosts.iter().map(|_| Vec::new()).collect();
    let mut reaches: HashMap<(usize, usize), usize> = HashMap::new();
    for (hi, cfg) in cfgs.iter().enumerate() {
        let host = &hosts[hi].name;
        let mut listens: HashMap<SocketAddr, String> = HashMap::new();
        for (si, sec) in cfg.sections.iter().enumerate() {
            if !is_client[hi][si] {
                continue;
            }
            let skip = |findings: &mut Vec<Finding>, kind: FindingKind, loc: &Loc, why: String| {
                findings.push(finding(
                    kind,
                    Some(loc),
                    format!("host {host}, client section [{}]: {why}", sec.name),
                ));
            };
            let (Some(accept), Some(_)) = (sec.last("accept"), sec.last("connect")) else {
                skip(
                    &mut findings,
                    FindingKind::NotMapped,
                    &sec.loc,
                    "needs both accept and connect; no forward drafted".into(),
                );
                continue;
            };
            let connects: Vec<&Opt> = sec.options.iter().filter(|o| o.is("connect")).collect();
            let matched = connects.iter().find_map(|c| match parse_addr(&c.value) {
                Ok(StAddr::Host(h, p)) => {
                    let key = host_key(&h);
                    servers
                        .iter()
                        .position(|s| {
                            s.port == p
                                && (keys[s.host].contains(&key)
                                    || s.accept_key.as_deref() == Some(key.as_str()))
                        })
                        .map(|i| (i, *c))
                }
                _ => None,
            });
            let Some((srv, connect)) = matched else {
                let values: Vec<&str> = connects.iter().map(|c| c.value.as_str()).collect();
                skip(
                    &mut findings,
                    FindingKind::UnmatchedConnect,
                    &connects[0].loc,
                    format!(
                        "connect = {} matches no server section of the imported hosts \
                         (give the server's host with --host, and its address with --addr); \
                         no forward drafted",
                        values.join(", ")
                    ),
                );
                continue;
            };
            reaches.insert((hi, si), srv);
            let s = &servers[srv];
            if s.host == hi {
                skip(
                    &mut findings,
                    FindingKind::NotMapped,
                    &connect.loc,
                    format!(
                        "reaches [{}] on its own host; a host needs no forward to itself",
                        s.section
                    ),
                );
                continue;
            }
            let Some(listen) = client_listen(host, sec, accept, &mut findings) else {
                continue;
            };
            if let Some(first) = listens.get(&listen) {
                skip(
                    &mut findings,
                    FindingKind::NotMapped,
                    &accept.loc,
                    format!("listens on {listen} like [{first}]; no second forward drafted"),
                );
                continue;
            }
            listens.insert(listen, sec.name.clone());
            let peer = hosts[s.host].name.clone();
            forwards[hi].push(Fwd {
                listen,
                peer: peer.clone(),
                service: s.service.clone(),
                comment: format!(
                    "From stunnel section [{}] ({}): accept = {}, connect = {}",
                    sec.name, sec.loc, accept.value, connect.value
                ),
            });
            servers[srv].allow.insert(host.clone());
        }
    }

    psk_checks(
        hosts,
        &cfgs,
        &is_client,
        &server_of,
        &reaches,
        &servers,
        &mut findings,
    );

    for s in &servers {
        if s.allow.is_empty() {
            findings.push(finding(
                FindingKind::NotMapped,
                Some(&s.loc),
                format!(
                    "host {}, server section [{}]: no client section of the imported hosts \
                     reaches it; service {} is drafted with an empty allow list",
                    hosts[s.host].name, s.section, s.service
                ),
            ));
        }
    }

    let mut peers = BTreeMap::new();
    for (hi, h) in hosts.iter().enumerate() {
        let own: Vec<&Server> = servers.iter().filter(|s| s.host == hi).collect();
        peers.insert(h.name.clone(), peer_text(h, &own, &forwards[hi]));
    }
    Ok(Draft {
        mesh_toml: format!(
            "# Mesh-wide settings, drafted by `meshctl import-stunnel`; see IMPORT-REPORT.md.\n\
             mesh_id = {}\n\
             auth = \"noise\"\n",
            toml_str(mesh_id)
        ),
        peers,
        findings,
        services: servers.len(),
        forwards: forwards.iter().map(Vec::len).sum(),
        hosts: hosts
            .iter()
            .map(|h| (h.name.clone(), h.file.clone(), h.addrs.clone()))
            .collect(),
    })
}

/// The listen address of a client entrance, narrowed to loopback when stunnel listened on
/// every interface or a public address (the exposure DESIGN.md tells of).
fn client_listen(
    host: &PeerName,
    sec: &Section,
    accept: &Opt,
    findings: &mut Vec<Finding>,
) -> Option<SocketAddr> {
    let loopback = |p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p);
    let mut narrowed = |p: u16, what: String| {
        findings.push(finding(
            FindingKind::ExposedEntrance,
            Some(&accept.loc),
            format!(
                "host {host}, client section [{}]: accept = {} listens on {what}, so anyone \
                 who can reach the host can use the tunnel; the draft listens on {} instead \
                 (set listen back and public = true only if that exposure is intended)",
                sec.name,
                accept.value,
                loopback(p)
            ),
        ));
        Some(loopback(p))
    };
    match parse_addr(&accept.value) {
        Ok(StAddr::Port(p)) => narrowed(p, "all interfaces (a bare port)".into()),
        Ok(StAddr::Host(h, p)) if is_any(&h) => narrowed(p, format!("all interfaces ({h})")),
        Ok(StAddr::Host(h, p)) => match h.parse::<IpAddr>() {
            Ok(ip) if is_exposed(ip) => narrowed(p, format!("the public address {ip}")),
            Ok(ip) => Some(SocketAddr::new(ip, p)),
            Err(_) if h.eq_ignore_ascii_case("localhost") => Some(loopback(p)),
            Err(_) => {
                findings.push(finding(
                    FindingKind::NotMapped,
                    Some(&accept.loc),
                    format!(
                        "host {host}, client section [{}]: accept = {} names a host; meshd \
                         listens on IP addresses only, the draft uses {}",
                        sec.name,
                        accept.value,
                        loopback(p)
                    ),
                ));
                Some(loopback(p))
            }
        },
        Ok(StAddr::Unix) => {
            findings.push(finding(
                FindingKind::NotMapped,
                Some(&accept.loc),
                format!(
                    "host {host}, client section [{}]: accept = {} is a Unix socket; meshd \
                     entrances are TCP; no forward drafted",
                    sec.name, accept.value
                ),
            ));
            None
        }
        Err(e) => {
            findings.push(finding(
                FindingKind::NotMapped,
                Some(&accept.loc),
                format!(
                    "host {host}, client section [{}]: accept = {}: {e}; no forward drafted",
                    sec.name, accept.value
                ),
            ));
            None
        }
    }
}

/// One finding per section (and global section) listing the options the draft leaves out.
fn untranslated(hosts: &[HostInput], cfgs: &[StunnelConfig], findings: &mut Vec<Finding>) {
    let split = |opts: &[Opt], translated: &[&str]| {
        let mut not = Vec::new();
        let mut sup = Vec::new();
        for o in opts {
            let lower = o.name.to_ascii_lowercase();
            let list = if translated.contains(&lower.as_str()) {
                continue;
            } else if SUPERSEDED.contains(&lower.as_str()) {
                &mut sup
            } else {
                &mut not
            };
            if !list.contains(&o.name) {
                list.push(o.name.clone());
            }
        }
        (not, sup)
    };
    let describe = |(not, sup): (Vec<String>, Vec<String>)| -> Option<String> {
        let mut parts = Vec::new();
        if !not.is_empty() {
            parts.push(format!("not translated: {}", not.join(", ")));
        }
        if !sup.is_empty() {
            parts.push(format!(
                "superseded by meshd's per-peer keys and fixed Noise suite: {}",
                sup.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    };
    for (h, cfg) in hosts.iter().zip(cfgs) {
        // In the global section, client and the PSK options are defaults that the mapping
        // honours; accept and connect outside a section (inetd mode) are not translated.
        if let Some(text) = describe(split(&cfg.global, &["client"])) {
            let loc = cfg.global.first().map(|o| o.loc.clone());
            findings.push(finding(
                FindingKind::UntranslatedOption,
                loc.as_ref(),
                format!("host {}, global options: {text}", h.name),
            ));
        }
        for sec in &cfg.sections {
            if let Some(text) = describe(split(&sec.options, TRANSLATED)) {
                findings.push(finding(
                    FindingKind::UntranslatedOption,
                    Some(&sec.loc),
                    format!("host {}, [{}]: {text}", h.name, sec.name),
                ));
            }
        }
    }
}

/// A readable PSK secrets file: identities and secret lengths, never the secrets.
struct PskFile {
    entries: Vec<(String, usize)>,
}

fn read_psk_file(path: &Path, findings: &mut Vec<Finding>) -> io::Result<PskFile> {
    let bytes = fs::read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut entries = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let loc = Loc {
            file: path.to_path_buf(),
            line: i + 1,
        };
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        match line.split_once(':') {
            Some((id, secret)) if !id.is_empty() => {
                if secret.len() < MIN_PSK_LEN {
                    findings.push(finding(
                        FindingKind::ShortPskSecret,
                        Some(&loc),
                        format!(
                            "identity \"{id}\": the secret is {} bytes; stunnel needs at least \
                             {MIN_PSK_LEN} (meshd replaces it with per-pair keys)",
                            secret.len()
                        ),
                    ));
                }
                entries.push((id.to_owned(), secret.len()));
            }
            // The line may hold a secret: say where it is, never what it says.
            _ => findings.push(finding(
                FindingKind::BadLine,
                Some(&loc),
                "not IDENTITY:SECRET (content not shown: it may be a secret)",
            )),
        }
    }
    Ok(PskFile { entries })
}

/// Short secrets, unreadable secrets files, and identities used for several services or by
/// clients on several hosts ("keep each identity unique per server and per service").
#[allow(clippy::too_many_arguments)]
fn psk_checks(
    hosts: &[HostInput],
    cfgs: &[StunnelConfig],
    is_client: &[Vec<bool>],
    server_of: &HashMap<(usize, usize), usize>,
    reaches: &HashMap<(usize, usize), usize>,
    servers: &[Server],
    findings: &mut Vec<Finding>,
) {
    let mut files: HashMap<PathBuf, Option<PskFile>> = HashMap::new();
    let mut missing_reported: HashSet<PathBuf> = HashSet::new();
    // identity -> (tunnel, client host, description)
    let mut uses: BTreeMap<String, Vec<(String, Option<usize>, String)>> = BTreeMap::new();
    for (hi, cfg) in cfgs.iter().enumerate() {
        let host = &hosts[hi].name;
        for (si, sec) in cfg.sections.iter().enumerate() {
            let Some(opt) = cfg.effective(sec, "PSKsecrets") else {
                continue;
            };
            let path = resolve(&opt.loc.file, &opt.value);
            if !files.contains_key(&path) {
                let read = match read_psk_file(&path, findings) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        if missing_reported.insert(path.clone()) {
                            findings.push(finding(
                                FindingKind::FileNotFound,
                                Some(&opt.loc),
                                format!(
                                    "host {host}, [{}]: PSKsecrets = {}: {}: {e}; its secrets \
                                     were not checked",
                                    sec.name,
                                    opt.value,
                                    path.display()
                                ),
                            ));
                        }
                        None
                    }
                };
                files.insert(path.clone(), read);
            }
            let Some(Some(file)) = files.get(&path) else {
                continue;
            };
            let own = format!("{host}/[{}]", sec.name);
            if is_client[hi][si] {
                let identity = match cfg.effective(sec, "PSKidentity") {
                    Some(o) => o.value.clone(),
                    None => match file.entries.first() {
                        Some((id, _)) => id.clone(),
                        None => continue,
                    },
                };
                let tunnel = match reaches.get(&(hi, si)) {
                    Some(&s) => format!("{}/{}", hosts[servers[s].host].name, servers[s].service),
                    None => own.clone(),
                };
                uses.entry(identity).or_default().push((
                    tunnel,
                    Some(hi),
                    format!("{own} (client)"),
                ));
            } else {
                let tunnel = match server_of.get(&(hi, si)) {
                    Some(&s) => format!("{}/{}", hosts[servers[s].host].name, servers[s].service),
                    None => own.clone(),
                };
                for (id, _) in &file.entries {
                    uses.entry(id.clone()).or_default().push((
                        tunnel.clone(),
                        None,
                        format!("{own} (server)"),
                    ));
                }
            }
        }
    }
    for (identity, list) in uses {
        let tunnels: BTreeSet<&str> = list.iter().map(|(t, _, _)| t.as_str()).collect();
        let clients: BTreeSet<usize> = list.iter().filter_map(|(_, c, _)| *c).collect();
        let mut why = Vec::new();
        if tunnels.len() > 1 {
            why.push(format!(
                "for {} services ({})",
                tunnels.len(),
                tunnels.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        if clients.len() > 1 {
            let names: Vec<&str> = clients.iter().map(|&c| hosts[c].name.as_str()).collect();
            why.push(format!(
                "by clients on {} hosts ({})",
                names.len(),
                names.join(", ")
            ));
        }
        if why.is_empty() {
            continue;
        }
        let mut seen = HashSet::new();
        let places: Vec<&str> = list
            .iter()
            .map(|(_, _, d)| d.as_str())
            .filter(|d| seen.insert(*d))
            .collect();
        findings.push(finding(
            FindingKind::PskIdentityReused,
            None,
            format!(
                "PSK identity \"{identity}\" is used {}: {}. stunnel needs one identity per \
                 server and per service; meshd derives a key per pair of hosts instead",
                why.join(" and "),
                places.join(", ")
            ),
        ));
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn peer_text(h: &HostInput, services: &[&Server], forwards: &[Fwd]) -> String {
    let endpoints: Vec<String> = h
        .addrs
        .iter()
        .filter_map(|a| host_port(a.trim_start_matches('[').trim_end_matches(']'), MESH_PORT).ok())
        .map(|hp| toml_str(&hp.to_string()))
        .collect();
    let mut t = format!(
        "# Peer \"{name}\", drafted by `meshctl import-stunnel` from {file}.\n\
         # Review it, fill public_key (see IMPORT-REPORT.md), then run `meshctl check`.\n\
         # Where other peers dial this one: {how}.\n\
         endpoints = [{eps}]\n\
         # Empty on purpose: run `meshctl add-peer` on {name} and copy its public key here.\n\
         public_key = \"\"\n",
        name = h.name,
        file = h.file.display(),
        how = if endpoints.is_empty() {
            "none known (no --addr); add one if other peers must reach it"
        } else {
            "its --addr values, on the mesh port"
        },
        eps = endpoints.join(", "),
    );
    let mut sorted: Vec<&&Server> = services.iter().collect();
    sorted.sort_by(|a, b| a.service.cmp(&b.service));
    for s in sorted {
        let allow: Vec<String> = s.allow.iter().map(|p| toml_str(p.as_str())).collect();
        t.push_str(&format!(
            "\n# From stunnel section [{}] ({}): connect = {}\n\
             [services.{}]\n\
             target = {}\n\
             allow = [{}]\n",
            s.section,
            s.loc,
            s.connect,
            s.service,
            toml_str(&s.target.to_string()),
            allow.join(", ")
        ));
    }
    for f in forwards {
        t.push_str(&format!(
            "\n# {}\n[[forwards]]\nlisten = {}\nto = {}\n",
            f.comment,
            toml_str(&f.listen.to_string()),
            toml_str(&format!("{}/{}", f.peer, f.service))
        ));
    }
    t
}

impl Draft {
    /// The report, in Markdown: what was drafted, what to do before committing, and every
    /// finding grouped by kind.
    pub fn report(&self, out: &Path) -> String {
        let mut r = String::from("# stunnel import report\n\n");
        r.push_str(&format!(
            "Drafted {} service{}, {} forward{} and {} peer file{} into `{}` from:\n\n",
            self.services,
            plural(self.services),
            self.forwards,
            plural(self.forwards),
            self.peers.len(),
            plural(self.peers.len()),
            out.display()
        ));
        for (name, file, addrs) in &self.hosts {
            let addrs = if addrs.is_empty() {
                "no --addr".to_owned()
            } else {
                addrs.join(", ")
            };
            r.push_str(&format!("- {name}: `{}` ({addrs})\n", file.display()));
        }
        r.push_str("\n## Before you commit\n\n");
        r.push_str(
            "1. Every peer file has `public_key = \"\"`: run `meshctl add-peer` on each host to \
             fill public_key. On host NAME: `mkdir -p /tmp/meshd-key && meshctl add-peer NAME \
             --endpoint HOST:7443 --manifest /tmp/meshd-key`, then copy the `public_key` line \
             of /tmp/meshd-key/NAME.toml into NAME.toml here. The private key stays in \
             /etc/meshd/host.key.\n",
        );
        let no_addr: Vec<&str> = self
            .hosts
            .iter()
            .filter(|(_, _, a)| a.is_empty())
            .map(|(n, _, _)| n.as_str())
            .collect();
        if !no_addr.is_empty() {
            r.push_str(&format!(
                "2. No --addr was given for {}: their `endpoints` are empty, so no peer can \
                 dial them. Add endpoints where other peers must reach them.\n",
                no_addr.join(", ")
            ));
        }
        r.push_str(&format!(
            "{}. Review the findings below, then `meshctl check --manifest {}`.\n",
            if no_addr.is_empty() { 2 } else { 3 },
            out.display()
        ));
        r.push_str(&format!(
            "{}. Once meshd carries these services, remove the stunnel sections and PSK \
             files: meshd needs no copied secret.\n",
            if no_addr.is_empty() { 3 } else { 4 }
        ));
        r.push_str(&format!("\n## Findings ({})\n", self.findings.len()));
        if self.findings.is_empty() {
            r.push_str("\nNone.\n");
        }
        for kind in FindingKind::ALL {
            let mut of_kind: Vec<&Finding> =
                self.findings.iter().filter(|f| f.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            of_kind.sort_by(|a, b| a.loc.cmp(&b.loc));
            r.push_str(&format!("\n### {} (`{}`)\n\n", kind.heading(), kind.code()));
            for f in of_kind {
                r.push_str(&format!("- {f}\n"));
            }
        }
        r
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> StunnelConfig {
        parse_str(Path::new("/nonexistent/host.conf"), text)
    }

    fn kinds(cfg: &StunnelConfig) -> Vec<FindingKind> {
        cfg.findings.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn sections_options_and_comments() {
        let cfg = parse(
            "; comment\n# another\nsetuid = stunnel4\n  pid=/run/x.pid  \n\n\
             [mongodb]\nclient = yes\naccept  =  127.0.0.1:27017\n  ; indented comment\n\
             connect = off2.example.org:27018\n[ redis ]\nAccept = 6379\n",
        );
        assert!(cfg.findings.is_empty(), "{:?}", cfg.findings);
        assert_eq!(cfg.global.len(), 2);
        assert_eq!(cfg.global[1].name, "pid");
        assert_eq!(cfg.global[1].value, "/run/x.pid");
        assert_eq!(cfg.sections.len(), 2);
        let m = &cfg.sections[0];
        assert_eq!(m.name, "mongodb");
        assert_eq!(m.loc.line, 6);
        assert_eq!(
            m.last("ACCEPT").map(|o| o.value.as_str()),
            Some("127.0.0.1:27017")
        );
        assert_eq!(m.last("connect").map(|o| o.loc.line), Some(10));
        assert_eq!(cfg.sections[1].name, "redis");
        assert!(cfg.sections[1].last("accept").is_some());
    }

    #[test]
    fn a_semicolon_after_a_value_is_part_of_it() {
        let cfg = parse("[a]\nconnect = 127.0.0.1:1 ; old\n");
        assert_eq!(cfg.sections[0].options[0].value, "127.0.0.1:1 ; old");
    }

    #[test]
    fn crlf_and_bom() {
        let cfg = parse("\u{feff}; sample\r\n[a]\r\naccept = 1\r\nconnect = 2\r\n");
        assert!(cfg.findings.is_empty(), "{:?}", cfg.findings);
        assert_eq!(cfg.sections[0].name, "a");
        assert_eq!(cfg.sections[0].options[1].value, "2");
        assert_eq!(cfg.sections[0].options[1].loc.line, 4);
    }

    #[test]
    fn garbage_lines_are_reported_with_file_and_line() {
        let cfg = parse("[a]\njust words\n[unclosed\n= value\n[]\nbad name = 1\naccept = 1\n");
        assert_eq!(kinds(&cfg), vec![FindingKind::BadLine; 5]);
        let lines: Vec<usize> = cfg
            .findings
            .iter()
            .map(|f| f.loc.as_ref().map_or(0, |l| l.line))
            .collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6]);
        let shown = cfg.findings[0].to_string();
        assert!(shown.contains("/nonexistent/host.conf:2"), "{shown}");
        assert_eq!(cfg.sections[0].options.len(), 1);
    }

    #[test]
    fn duplicate_sections_are_reported_and_kept() {
        let cfg = parse("[db]\naccept = 1\n[other]\n[DB]\naccept = 2\n");
        assert_eq!(kinds(&cfg), vec![FindingKind::DuplicateSection]);
        assert!(cfg.findings[0].message.contains(":1)"));
        assert_eq!(cfg.findings[0].loc.as_ref().map(|l| l.line), Some(4));
        assert_eq!(cfg.sections.len(), 3);
    }

    #[test]
    fn include_of_a_directory_and_a_file_and_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::create_dir(d.join("conf.d")).expect("mkdir");
        fs::write(d.join("conf.d/b.conf"), "[b]\naccept = 2\n").expect("write");
        fs::write(d.join("conf.d/a.conf"), "[a]\naccept = 1\n").expect("write");
        fs::write(d.join("conf.d/ignored.txt"), "[x]\n").expect("write");
        fs::write(d.join("one.inc"), "[c]\naccept = 3\n").expect("write");
        fs::write(d.join("loop.conf"), "include = loop.conf\n").expect("write");
        fs::write(
            d.join("main.conf"),
            "pid = /x\ninclude = conf.d\n[own]\ninclude = one.inc\naccept = 4\n\
             include = missing.d\ninclude = loop.conf\n",
        )
        .expect("write");
        let cfg = read_config(&d.join("main.conf")).expect("read");
        let names: Vec<&str> = cfg.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "own", "c"]);
        // Options after an include belong to the section the included file left open.
        assert_eq!(cfg.sections[3].options.len(), 2);
        assert_eq!(
            cfg.sections[0].loc.file,
            d.join("conf.d").join("a.conf"),
            "locations name the included file"
        );
        assert_eq!(
            kinds(&cfg),
            vec![FindingKind::FileNotFound, FindingKind::BadLine],
            "{:?}",
            cfg.findings
        );
        assert!(cfg.findings[1].message.contains("include loop"));
    }

    #[test]
    fn never_panics_on_odd_input() {
        let inputs = [
            "",
            "\n\n\r\r",
            "[",
            "]",
            "=",
            "==",
            "[a]]",
            "\u{feff}",
            "[é]\naccept = ::\nconnect = [::1\n",
            "\0\0\0",
            "include =",
            "[a]\nclient = maybe\naccept = 99999\nconnect = :80\n",
        ];
        for text in inputs {
            let cfg = parse(text);
            let _ = cfg.findings.len();
        }
        let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let _ = parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("27017"), Ok(StAddr::Port(27017)));
        assert_eq!(
            parse_addr("127.0.0.1:1"),
            Ok(StAddr::Host("127.0.0.1".into(), 1))
        );
        assert_eq!(
            parse_addr("[2001:db8::2]:27018"),
            Ok(StAddr::Host("2001:db8::2".into(), 27018))
        );
        assert_eq!(parse_addr(":::443"), Ok(StAddr::Host("::".into(), 443)));
        assert_eq!(parse_addr("/run/mysqld/mysqld.sock"), Ok(StAddr::Unix));
        assert!(parse_addr("0").is_err());
        assert!(parse_addr("host").is_err());
        assert!(parse_addr(":80").is_err());
        assert!(parse_addr("[::1]80").is_err());
        assert_eq!(host_key("[2001:0db8::0002]"), "2001:db8::2");
        assert_eq!(host_key("Off2.Example.org."), "off2.example.org");
    }

    #[test]
    fn service_names_are_valid() {
        assert_eq!(service_name("MongoDB"), "mongodb");
        assert_eq!(service_name("off query.v2"), "off-query-v2");
        assert_eq!(service_name("_x"), "x");
        assert_eq!(service_name("éé"), "service");
        assert!(ServiceName::new(&service_name(&"a".repeat(100))).is_ok());
    }

    #[test]
    fn import_edge_cases_never_yield_an_invalid_draft() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::write(
            d.join("a.conf"),
            "[Redis]\naccept = 6380\nconnect = 6379\n[redis]\naccept = 6381\nconnect = 6379\n\
             [sock]\naccept = 3307\nconnect = /run/mysqld/mysqld.sock\n\
             [self]\nclient = yes\naccept = 127.0.0.1:1\nconnect = a:6380\n",
        )
        .expect("write");
        fs::write(
            d.join("b.conf"),
            "client = yes\n[r1]\naccept = [::1]:7000\nconnect = a:6381\n\
             [r2]\naccept = ::1:7000\nconnect = A.:6380\n",
        )
        .expect("write");
        let host = |n: &str| HostInput {
            name: PeerName::new(n).expect("name"),
            file: d.join(format!("{n}.conf")),
            addrs: Vec::new(),
        };
        let draft = import(&[host("a"), host("b")], "t").expect("import");
        let a = &draft.peers[&PeerName::new("a").expect("name")];
        assert!(
            a.contains("[services.redis]\ntarget = \"127.0.0.1:6379\""),
            "{a}"
        );
        assert!(a.contains("[services.redis-2]"), "{a}");
        assert!(!a.contains("[services.sock]"), "{a}");
        assert!(
            !a.contains("[[forwards]]"),
            "no forward to its own host: {a}"
        );
        let b = &draft.peers[&PeerName::new("b").expect("name")];
        assert_eq!(b.matches("[[forwards]]").count(), 1, "{b}");
        assert!(b.contains("to = \"a/redis-2\""), "{b}");
        let codes: Vec<&str> = draft.findings.iter().map(|f| f.kind.code()).collect();
        assert!(codes.contains(&"duplicate-section"), "{codes:?}");
        let not_mapped: Vec<String> = draft
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::NotMapped)
            .map(|f| f.message.clone())
            .collect();
        for needle in ["Unix socket", "own host", "listens on [::1]:7000"] {
            assert!(
                not_mapped.iter().any(|m| m.contains(needle)),
                "{needle}: {not_mapped:#?}"
            );
        }
        for text in draft.peers.values() {
            let _: toml::Value = toml::from_str(text).expect("drafted TOML parses");
        }
    }

    #[test]
    fn name_args() {
        assert!(parse_name_arg("--host", "off2=/etc/stunnel.conf").is_ok());
        assert!(parse_name_arg("--host", "off2").is_err());
        assert!(parse_name_arg("--host", "Off2=x").is_err());
        assert!(parse_name_arg("--host", "off2=").is_err());
        let p = PeerName::new("a").expect("name");
        assert!(check_addr(&p, "2001:db8::2").is_ok());
        assert!(check_addr(&p, "[2001:db8::2]").is_ok());
        assert!(check_addr(&p, "off2.example.org").is_ok());
        assert!(check_addr(&p, "bad host").is_err());
    }
}
