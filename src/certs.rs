//! `moonwire certs`: a local CA, the broker's server certificate and device client
//! certificates, as PEM files. Private keys are written with mode 0600.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(
        "{0} already exists; pass --force to replace the CA (every issued certificate becomes invalid)"
    )]
    Exists(PathBuf),
    #[error("invalid device name `{0}`: use 1-64 of A-Z a-z 0-9 _ . -")]
    BadName(String),
    #[error("no CA in {0}: run `moonwire certs init` first")]
    NoCa(PathBuf),
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, data).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|source| CertsError::Io {
        path: path.to_owned(),
        source,
    })
}

pub fn valid_device_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Creates `dir/ca.{crt,key}` and `dir/server.{crt,key}` for the given host names and IPs.
pub fn init(dir: &Path, hosts: &[String], force: bool) -> Result<Vec<PathBuf>, CertsError> {
    let ca_crt = dir.join("ca.crt");
    if ca_crt.exists() && !force {
        return Err(CertsError::Exists(ca_crt));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "moonwire local CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(hosts.iter().cloned());
    names.dedup();
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "moonwire broker");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let files = [
        (dir.join("ca.crt"), ca_cert.pem(), false),
        (dir.join("ca.key"), ca_key.serialize_pem(), true),
        (dir.join("server.crt"), server_cert.pem(), false),
        (dir.join("server.key"), server_key.serialize_pem(), true),
    ];
    for (p, data, private) in &files {
        write(p, data, *private)?;
    }
    Ok(files.into_iter().map(|(p, _, _)| p).collect())
}

/// Issues `dir/devices/NAME.{crt,key}`: a client certificate with CN and DNS SAN = NAME.
pub fn issue(dir: &Path, name: &str) -> Result<Vec<PathBuf>, CertsError> {
    if !valid_device_name(name) {
        return Err(CertsError::BadName(name.to_string()));
    }
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if !ca_crt.exists() || !ca_key.exists() {
        return Err(CertsError::NoCa(dir.to_owned()));
    }
    let ca_key = KeyPair::from_pem(&read(&ca_key)?)?;
    // Re-signing the CA's own parameters gives an issuer with the same name and key.
    let ca_cert = CertificateParams::from_ca_cert_pem(&read(&ca_crt)?)?.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    let crt = dir.join("devices").join(format!("{name}.crt"));
    let keyp = dir.join("devices").join(format!("{name}.key"));
    write(&crt, &cert.pem(), false)?;
    write(&keyp, &key.serialize_pem(), true)?;
    Ok(vec![crt, keyp])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(
            dir.path(),
            &["broker.lan".into(), "192.168.1.2".into()],
            false,
        )
        .unwrap();
        assert_eq!(files.len(), 4);
        assert!(matches!(
            init(dir.path(), &[], false),
            Err(CertsError::Exists(_))
        ));
        let dev = issue(dir.path(), "cam-1").unwrap();
        assert!(dev[0].ends_with("devices/cam-1.crt"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dev[1]).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            issue(dir.path(), "../evil"),
            Err(CertsError::BadName(_))
        ));
    }
}
