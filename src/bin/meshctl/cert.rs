//! `meshctl cert`: a small private CA for `auth = "tls"` meshes, made with rcgen through
//! the library's `tls::certgen` (the same code the tls demo and the tests use).
//!
//! - `new-ca` writes `ca.crt` and `ca.key` (0600) and prints the fingerprint to pin in
//!   mesh.toml;
//! - `issue NAME` writes `NAME.crt` and `NAME.key` (0600) signed by that CA: DNS SAN = NAME,
//!   server and client usage;
//! - `show FILE` prints what a certificate says (names, dates, key usages, fingerprint).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use meshd::config::PeerName;
use meshd::tls::certgen::{self, Validity};

#[derive(Subcommand)]
pub enum CertCommand {
    /// Create a mesh CA: DIR/ca.crt (public, goes to every host) and DIR/ca.key (0600, keep
    /// it offline). Prints the fingerprint for `ca_fingerprint` in mesh.toml.
    NewCa {
        /// Where to write ca.crt and ca.key.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The CA's common name (default: "meshd mesh CA" and 8 random hex digits, so
        /// that two meshes' CAs never share a name).
        #[arg(long, value_name = "CN")]
        name: Option<String>,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = 3650)]
        days: i64,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a peer certificate signed by the CA: OUT_DIR/NAME.crt and OUT_DIR/NAME.key
    /// (0600). Its DNS SAN is the peer name, which is what links check.
    Issue {
        /// The peer's name, as in the manifest.
        name: String,
        /// The directory holding ca.crt and ca.key.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Where to write the certificate and key (default: the CA directory).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = 397)]
        days: i64,
        /// Overwrite existing files (certificate rotation; reload meshd after).
        #[arg(long)]
        force: bool,
    },
    /// Print a certificate's subject, DNS names, validity, issuer, key usage and extended
    /// key usage, and SHA-256 fingerprint.
    Show {
        /// A PEM certificate file (several certificates are all shown).
        file: PathBuf,
    },
}

pub fn run(cmd: CertCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCommand::NewCa {
            out_dir,
            name,
            days,
            force,
        } => {
            let name = match name {
                Some(n) => n,
                None => certgen::default_ca_name()?,
            };
            new_ca(&out_dir, &name, days, force)
        }
        CertCommand::Issue {
            name,
            ca_dir,
            out_dir,
            days,
            force,
        } => issue(&name, &ca_dir, out_dir.as_deref(), days, force),
        CertCommand::Show { file } => show(&file),
    }
}

fn check_days(days: i64) -> anyhow::Result<()> {
    if !(1..=36500).contains(&days) {
        bail!("--days {days}: use 1 to 36500");
    }
    Ok(())
}

fn new_ca(dir: &Path, name: &str, days: i64, force: bool) -> anyhow::Result<ExitCode> {
    check_days(days)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    for p in [&crt, &key] {
        if p.exists() && !force {
            bail!("{} already exists; pass --force to replace the CA (every peer certificate must then be reissued)", p.display());
        }
    }
    let ca = certgen::new_ca(name, Validity::days_from_now(days))?;
    certgen::write_private(&key, &ca.key_pem, force)?;
    certgen::write_public(&crt, &ca.cert_pem, force)?;
    let fp = meshd::tls::fingerprint(&ca.der);
    println!(
        "wrote {} and {} (0600: keep it off the hosts)",
        crt.display(),
        key.display()
    );
    println!("pin it in peers/mesh.toml:\n\nca_fingerprint = \"{fp}\"");
    Ok(ExitCode::SUCCESS)
}

fn issue(
    name: &str,
    ca_dir: &Path,
    out_dir: Option<&Path>,
    days: i64,
    force: bool,
) -> anyhow::Result<ExitCode> {
    check_days(days)?;
    let name = PeerName::new(name).map_err(|e| anyhow!(e))?;
    let ca_cert = certgen::read_text(&ca_dir.join("ca.crt"))?;
    let ca_key = certgen::read_text(&ca_dir.join("ca.key"))?;
    let out = out_dir.unwrap_or(ca_dir);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let crt = out.join(format!("{name}.crt"));
    let key = out.join(format!("{name}.key"));
    let issued = certgen::issue(
        &ca_cert,
        &ca_key,
        name.as_str(),
        Validity::days_from_now(days),
    )
    .with_context(|| format!("signing with the CA in {}", ca_dir.display()))?;
    certgen::write_private(&key, &issued.key_pem, force)?;
    certgen::write_public(&crt, &issued.cert_pem, force)?;
    println!(
        "wrote {} ({}) and {} (0600)",
        crt.display(),
        meshd::tls::fingerprint(&issued.der),
        key.display()
    );
    // meshd.toml resolves relative paths against its own directory, not where this ran.
    let absolute =
        |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
    println!(
        "on host {name}, in meshd.toml:\n\ncert = \"{}\"\ncert_key = \"{}\"\nca = \"{}\"",
        absolute(&crt)?.display(),
        absolute(&key)?.display(),
        absolute(&ca_dir.join("ca.crt"))?.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(file: &Path) -> anyhow::Result<ExitCode> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: not PEM: {e}", file.display()))?;
    if certs.is_empty() {
        bail!("{}: no PEM certificate", file.display());
    }
    for der in &certs {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow!("{}: not an X.509 certificate: {e}", file.display()))?;
        let names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let validity = cert.validity();
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca);
        println!("subject:     {}", cert.subject());
        println!("issuer:      {}", cert.issuer());
        println!(
            "dns names:   {}",
            if names.is_empty() {
                "(none)".to_owned()
            } else {
                names.join(", ")
            }
        );
        println!("ca:          {}", if is_ca { "yes" } else { "no" });
        let usage =
            meshd::tls::CertUsage::of(der).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        println!("key usage:   {}", usage.key_usage_text());
        println!("ext usage:   {}", usage.extended_text());
        println!("not before:  {}", validity.not_before);
        println!("not after:   {}", validity.not_after);
        println!("fingerprint: {}", meshd::tls::fingerprint(der));
        if certs.len() > 1 {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}
