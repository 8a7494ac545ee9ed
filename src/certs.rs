//! `r2o certs`: a throwaway CA and the certificates of a small cluster, for
//! the quickstart and the tests (production uses its own PKI, e.g.
//! cert-manager; see deploy/README.md). ECDSA P-256 keys (rcgen on ring).
//!
//! `certs init --dir D` writes, under `D`:
//! - `ca.pem`, `ca.key`, `ca.name`: the CA (the name is its common name, so
//!   `certs issue` can sign more certificates later);
//! - `controller.pem/.key`: a server certificate for `--hosts` (default
//!   `localhost,127.0.0.1`) and the DNS name `r2o-controller`;
//! - `minion.pem/.key`: DNS name `r2o-minion` (the default `--cert-roles`
//!   maps it to the `minion` role);
//! - `admin.pem/.key`: DNS name `r2o-admin` (mapped to `admin` by default).
//!
//! Keys are written with mode 0600.

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::Path;

/// Validity of what `certs` makes, as a range of days from today (UTC):
/// `from_days` may be negative (an expired certificate for tests).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// First valid day, relative to today.
    pub from_days: i64,
    /// Last valid day, relative to today.
    pub until_days: i64,
}

/// Today (UTC) plus `days`, as (year, month, day): jiff does the calendar
/// arithmetic, rcgen takes the date.
fn day(days: i64) -> Result<(i32, u8, u8)> {
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
    let d = today.checked_add(jiff::Span::new().days(days)).context("certificate validity out of range")?;
    Ok((i32::from(d.year()), d.month() as u8, d.day() as u8))
}

fn set_validity(p: &mut CertificateParams, v: Validity) -> Result<()> {
    let ((ay, am, ad), (by, bm, bd)) = (day(v.from_days)?, day(v.until_days)?);
    p.not_before = rcgen::date_time_ymd(ay, am, ad);
    p.not_after = rcgen::date_time_ymd(by, bm, bd);
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str, secret: bool) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    Ok(())
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// Makes a new CA under `dir` (refusing to overwrite one) and the
/// controller, minion and admin certificates; returns the CA's name.
///
/// Errors: `dir` holds a CA already, a host that is neither a DNS name nor
/// an IP address, unwritable files.
pub fn init(dir: &Path, hosts: &[String], validity: Validity) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join("ca.key").exists() {
        bail!(
            "{} holds a CA already (ca.key): use `r2o certs issue` to add certificates, or another --dir",
            dir.display()
        );
    }
    let name = format!("r2o CA {:08x}", rand::random::<u32>());
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = ca_params(&name);
    set_validity(&mut params, validity)?;
    let cert = params.self_signed(&key).context("signing the CA certificate")?;
    write(dir, "ca.pem", &cert.pem(), false)?;
    write(dir, "ca.key", &key.serialize_pem(), true)?;
    write(dir, "ca.name", &name, false)?;
    let mut controller_names: Vec<String> = hosts.to_vec();
    controller_names.push("r2o-controller".into());
    issue(dir, "controller", &controller_names, validity)?;
    issue(dir, "minion", &["r2o-minion".into()], validity)?;
    issue(dir, "admin", &["r2o-admin".into()], validity)?;
    Ok(name)
}

/// Signs a certificate for `names` (DNS names or IP addresses, as subject
/// alternative names; the first is also the common name) with the CA under
/// `dir`, written as `<file>.pem` and `<file>.key` there. Usable as a server
/// and as a client certificate.
///
/// Errors: no CA under `dir`, a bad name, unwritable files.
pub fn issue(dir: &Path, file: &str, names: &[String], validity: Validity) -> Result<()> {
    if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
        bail!("certificate file name '{file}': expected a plain name such as 'reader'");
    }
    let ca_name = std::fs::read_to_string(dir.join("ca.name")).with_context(|| {
        format!("reading {} (make a CA with `r2o certs init --dir`)", dir.join("ca.name").display())
    })?;
    let ca_key_pem = std::fs::read_to_string(dir.join("ca.key"))
        .with_context(|| format!("reading {}", dir.join("ca.key").display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("ca.key is not a PEM private key")?;
    let issuer = Issuer::new(ca_params(ca_name.trim()), ca_key);
    let mut params = CertificateParams::new(names.to_vec())
        .with_context(|| format!("certificate names {names:?}: expected DNS names or IP addresses"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    set_validity(&mut params, validity)?;
    let key = KeyPair::generate().context("generating a key")?;
    let cert = params.signed_by(&key, &issuer).context("signing the certificate")?;
    write(dir, &format!("{file}.pem"), &cert.pem(), false)?;
    write(dir, &format!("{file}.key"), &key.serialize_pem(), true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2o_common::access::{cert_identity, parse_cert_roles, Role};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn leaf(dir: &Path, file: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(dir.join(format!("{file}.pem"))).unwrap()
    }

    #[test]
    fn init_makes_a_ca_and_certificates_whose_names_map_to_roles() {
        let dir = tempfile::tempdir().unwrap();
        let v = Validity { from_days: -1, until_days: 30 };
        init(dir.path(), &["localhost".into(), "127.0.0.1".into()], v).unwrap();
        let roles = parse_cert_roles("r2o-minion=minion,r2o-admin=admin").unwrap();
        assert_eq!(cert_identity(&leaf(dir.path(), "minion"), &roles).map(|i| i.role), Some(Role::Minion));
        assert_eq!(cert_identity(&leaf(dir.path(), "admin"), &roles).map(|i| i.role), Some(Role::Admin));
        assert_eq!(cert_identity(&leaf(dir.path(), "controller"), &roles), None, "no role for the server's names");
        // the files load as a server config (key matches certificate, CA parses)
        let files = r2o_common::tls::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("controller.pem"),
            key: dir.path().join("controller.key"),
        };
        files.server_config().unwrap();
        issue(dir.path(), "ops", &["ops.example.com".into()], v).unwrap();
        let roles = parse_cert_roles("ops.example.com=operator").unwrap();
        assert_eq!(cert_identity(&leaf(dir.path(), "ops"), &roles).map(|i| i.role), Some(Role::Operator));
        assert!(init(dir.path(), &[], v).unwrap_err().to_string().contains("holds a CA already"));
        assert!(issue(dir.path(), "../x", &["a".into()], v).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
