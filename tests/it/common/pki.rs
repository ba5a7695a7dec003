//! Certificates for the TLS tests, made by the test: a CA, server
//! certificates for given host names (valid now, or expired), client
//! certificates for a role, all as PEM, with files in a temp dir for the
//! connection strings' `sslrootcert`, `sslcert` and `sslkey`.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its private key, PEM.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A certificate authority that signs the test's certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Holds the PEM files written by [`Ca::write`].
    dir: tempfile::TempDir,
}

impl Ca {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses);
    /// `expired` makes one that ended yesterday.
    pub fn server(&self, names: &[&str], expired: bool) -> Pem {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "walhook test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        if expired {
            params.not_before = now - Duration::days(30);
            params.not_after = now - Duration::days(1);
        }
        self.sign(params)
    }

    /// A client certificate for role `role` (its CN, as `cert` auth wants).
    pub fn client(&self, role: &str) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, role);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Pem {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes `contents` to `name` in this CA's temp dir (mode 0600, as
    /// libpq wants a private key); returns the path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.path().join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        std::io::Write::write_all(&mut file, contents.as_bytes()).expect("write PEM");
        path
    }
}
