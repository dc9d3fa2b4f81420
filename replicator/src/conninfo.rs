//! The database's connection settings as libpq accepts them (a `postgres://` URL or a
//! `key=value` string), TLS included: `sslmode` with libpq's meanings and `sslrootcert`,
//! `sslcert`, `sslkey`. tokio-postgres knows neither `verify-ca`/`verify-full` nor the file
//! options, so they are taken out here and turned into one rustls policy that the SQL connections
//! (tokio-postgres-rustls) and the replication connection (pgwire-replication) both follow.
//!
//! libpq's rules kept: `prefer` is the default; `require` verifies the chain like `verify-ca`
//! when a root certificate file is given (or `~/.postgresql/root.crt` exists); `verify-*` without
//! one is an error naming the file; `sslrootcert=system` trusts the public roots (Mozilla's list)
//! and implies `verify-full`. `PGSSLMODE` and `PGSSLROOTCERT` apply when the string has none.
//! `allow` is read as `prefer` (TLS first, then plain): never less safe than libpq's.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What to do when the connection string points at a pooler in transaction mode.
pub const POOLER_FIX: &str = "the connection goes through a pooler in transaction mode (PgBouncer, Supavisor), which carries neither replication nor session settings: use the database's direct connection string, or the pooler's session mode (Supabase: the session pooler on port 5432)";

/// The libpq options handled here rather than by tokio-postgres.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not a libpq sslmode: use disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Whom the server's certificate must be signed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// No verification (`prefer`/`require` without a root certificate file).
    None,
    /// The CA certificates in a PEM file.
    File(PathBuf),
    /// The publicly trusted roots (`sslrootcert=system`).
    System,
}

#[derive(Clone, Debug)]
pub struct Tls {
    /// The mode in effect (`require` with a root certificate is `verify-ca`, as in libpq).
    pub mode: SslMode,
    pub root: RootCert,
    /// A client certificate and key (`sslcert`, `sslkey`), for servers that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Parsed connection settings: everything but TLS for tokio-postgres, and the TLS policy.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub pg: tokio_postgres::Config,
    pub tls: Tls,
}

impl ConnInfo {
    /// Parses `text`; `env` looks up `PGSSLMODE`, `PGSSLROOTCERT` and `HOME`.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<ConnInfo, String> {
        let (rest, options) = split_tls_options(text)?;
        let pg: tokio_postgres::Config = rest.parse().map_err(|e| format!("{e}"))?;
        let option = |key: &str, var: &str| {
            options
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| env(var))
                .filter(|v| !v.is_empty())
        };
        let requested = option("sslmode", "PGSSLMODE").map(|v| SslMode::parse(&v)).transpose()?;
        let rootcert = option("sslrootcert", "PGSSLROOTCERT");
        let root = match rootcert.as_deref() {
            Some("system") => RootCert::System,
            Some(path) => RootCert::File(PathBuf::from(path)),
            None => {
                // libpq's default file, used when it exists.
                let default = env("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt"));
                match default {
                    Some(path) if path.exists() => RootCert::File(path),
                    _ => RootCert::None,
                }
            }
        };
        let mode = match (requested, &root) {
            (Some(SslMode::Disable), _) => SslMode::Disable,
            // sslrootcert=system means full verification whatever the mode (libpq 16).
            (_, RootCert::System) => SslMode::VerifyFull,
            (Some(SslMode::VerifyCa | SslMode::VerifyFull), RootCert::None) => {
                return Err(format!(
                    "sslmode={} needs the CA certificate to verify the server with, and none is given: add sslrootcert=/path/to/ca.pem (your provider's CA bundle) or sslrootcert=system (publicly trusted roots) to the connection string",
                    requested.map(SslMode::name).unwrap_or_default()
                ))
            }
            (Some(SslMode::Require), RootCert::File(_)) => SslMode::VerifyCa,
            (Some(mode), _) => mode,
            (None, _) => SslMode::Prefer,
        };
        let client = match (option("sslcert", "PGSSLCERT"), option("sslkey", "PGSSLKEY")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => {
                return Err(
                    "sslcert and sslkey go together: give both (the client certificate and its key) or neither".into(),
                )
            }
        };
        Ok(ConnInfo {
            pg,
            tls: Tls { mode, root, client },
        })
    }

    /// The server a connection's settings name: a host, a Unix socket directory, or `localhost`.
    pub fn host(&self) -> String {
        match self.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }

    pub fn port(&self) -> u16 {
        self.pg.get_ports().first().copied().unwrap_or(5432)
    }

    /// `host:port/dbname (sslmode=...)` for log lines, without the password.
    pub fn describe(&self) -> String {
        format!(
            "{}:{}/{} (sslmode={})",
            self.host(),
            self.port(),
            self.pg.get_dbname().unwrap_or("postgres"),
            self.tls.mode.name()
        )
    }

    /// tokio-postgres's mode: it negotiates; the rustls policy decides what is verified.
    pub fn sql_ssl_mode(&self) -> tokio_postgres::config::SslMode {
        match self.tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The TLS connector of the SQL connections.
    pub fn sql_connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(self.client_config()?))
    }

    /// The same policy for the replication connection.
    pub fn replication_tls(&self) -> pgwire_replication::TlsConfig {
        use pgwire_replication::SslMode as Mode;
        let mode = match self.tls.mode {
            SslMode::Disable => Mode::Disable,
            SslMode::Prefer => Mode::Prefer,
            SslMode::Require => Mode::Require,
            SslMode::VerifyCa => Mode::VerifyCa,
            SslMode::VerifyFull => Mode::VerifyFull,
        };
        let host = self.host();
        pgwire_replication::TlsConfig {
            mode,
            ca_pem_path: match &self.tls.root {
                RootCert::File(path) => Some(path.clone()),
                // pgwire-replication trusts Mozilla's roots when given no file.
                RootCert::System | RootCert::None => None,
            },
            // An IP address is checked against the certificate's IP names, as libpq does.
            sni_hostname: host.parse::<std::net::IpAddr>().is_ok().then_some(host),
            client_cert_pem_path: self.tls.client.as_ref().map(|(cert, _)| cert.clone()),
            client_key_pem_path: self.tls.client.as_ref().map(|(_, key)| key.clone()),
        }
    }

    fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.tls.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(self.root_store()?), provider.clone())
                        .build()
                        .map_err(|e| format!("the CA certificates cannot verify servers: {e}"))?;
                if self.tls.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(Lenient {
                        chain: Some(webpki),
                        provider,
                    })
                }
            }
            _ => Arc::new(Lenient { chain: None, provider }),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        match &self.tls.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("sslcert={}: cannot read a PEM certificate ({e})", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey={}: cannot read a PEM private key ({e})", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey cannot be used: {e}"))
            }
        }
    }

    fn root_store(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.tls.root {
            RootCert::None => {}
            RootCert::System => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            RootCert::File(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        format!(
                            "sslrootcert={}: cannot read PEM certificates ({e}): point it at your provider's CA certificate file",
                            path.display()
                        )
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "sslrootcert={} holds no CA certificate: point it at your provider's CA certificate file",
                        path.display()
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// A connection failure as a sentence naming the fix, for the TLS and `pg_hba` cases an
    /// operator meets first with a managed database; `None` for other failures.
    pub fn explain(&self, error: &str) -> Option<String> {
        let root = match &self.tls.root {
            RootCert::File(path) => format!("sslrootcert={}", path.display()),
            RootCert::System => "the system's trusted roots (sslrootcert=system)".into(),
            RootCert::None => "no CA".into(),
        };
        if error.contains("NotValidForName") || error.contains("not valid for name") {
            Some(format!(
                "the server's certificate is not issued for host {}: connect with a host name the certificate lists (the provider's host name, not an IP or alias), or use sslmode=verify-ca to check only the CA",
                self.host()
            ))
        } else if error.contains("UnknownIssuer")
            || error.contains("BadSignature")
            || error.contains("invalid peer certificate")
        {
            Some(format!(
                "the server's certificate does not verify against {root}: set sslrootcert in SLUICE_DATABASE_URL to the CA certificate that signed the server's (your provider's CA bundle)"
            ))
        } else if error.contains("server does not support TLS") || error.contains("SSLRequest rejected") {
            Some(format!(
                "the server at {} does not accept TLS and sslmode={} requires it: enable ssl on the server, or use sslmode=prefer only on a trusted network",
                self.host(),
                self.tls.mode.name()
            ))
        } else if error.contains("unsupported startup parameter") {
            // PgBouncer refuses the session options every connection of the replicator sets.
            Some(POOLER_FIX.into())
        } else if error.contains("pg_hba.conf") && (error.contains("no encryption") || error.contains("SSL off")) {
            Some(
                "the server refuses connections without TLS: set sslmode=verify-full with sslrootcert=<CA file> (or sslmode=require) in SLUICE_DATABASE_URL".into(),
            )
        } else {
            None
        }
    }
}

/// Takes libpq's TLS options out of a URL's query or a `key=value` string; returns the rest (for
/// tokio-postgres) and the options, decoded.
fn split_tls_options(text: &str) -> Result<(String, Vec<(String, String)>), String> {
    let text = text.trim();
    let mut options = Vec::new();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let Some((base, query)) = text.split_once('?') else {
            return Ok((text.to_string(), options));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if TLS_KEYS.contains(&key) {
                let value = percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| format!("{key}'s value is not UTF-8"))?;
                options.push((key.to_string(), value.into_owned()));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, options));
    }
    let mut kept = Vec::new();
    for (key, value) in key_values(text)? {
        if TLS_KEYS.contains(&key.as_str()) {
            options.push((key, value));
        } else {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    Ok((kept.join(" "), options))
}

/// libpq's `key = value` pairs: values bare or in single quotes, `\` escaping the next character.
fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("{key:?} has no value: write {key}=value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of {key} has no closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// What libpq checks short of `verify-full`: with `chain` (`verify-ca`), that the certificate
/// chains to a trusted root, not the name in it; without (`prefer`/`require` and no CA), nothing of
/// the certificate. The handshake's signatures are always checked.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name: a name error means the chain verified.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConnInfo, String> {
        ConnInfo::parse(text, |_| None)
    }

    #[test]
    fn prefer_is_the_default() {
        let c = parse("postgres://u:p@db.example.com:6543/app").unwrap();
        assert_eq!(c.tls.mode, SslMode::Prefer);
        assert_eq!(c.describe(), "db.example.com:6543/app (sslmode=prefer)");
    }

    #[test]
    fn url_options_are_taken_out_and_decoded() {
        let c =
            parse("postgresql://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.root, RootCert::File("/etc/ca.pem".into()));
        assert_eq!(c.pg.get_application_name(), Some("x"));
    }

    #[test]
    fn key_value_strings_with_quotes() {
        let c = parse("host=h user=u password='it''s' dbname = 'my db' sslmode=require sslrootcert='/a b/ca.pem'");
        assert!(c.is_err(), "libpq does not double quotes: '' ends the value");
        let c = parse(r"host=h user=u password='it\'s' dbname = 'my db' sslmode=require sslrootcert='/a b/ca.pem'")
            .unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"it's"[..]));
        assert_eq!(c.pg.get_dbname(), Some("my db"));
        // require with a CA file verifies the chain, as libpq.
        assert_eq!(c.tls.mode, SslMode::VerifyCa);
    }

    #[test]
    fn verification_without_a_ca_names_the_fix() {
        let e = parse("postgres://u@h/db?sslmode=verify-full").unwrap_err();
        assert!(e.contains("add sslrootcert="), "{e}");
        let c = parse("postgres://u@h/db?sslrootcert=system").unwrap();
        assert_eq!((c.tls.mode, c.tls.root), (SslMode::VerifyFull, RootCert::System));
        assert!(parse("postgres://u@h/db?sslmode=strict")
            .unwrap_err()
            .contains("not a libpq sslmode"));
        assert!(parse("postgres://u@h/db?sslcert=/c.pem")
            .unwrap_err()
            .contains("go together"));
    }

    #[test]
    fn environment_fills_in_what_the_string_lacks() {
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("verify-ca".to_string()),
            "PGSSLROOTCERT" => Some("/ca.pem".to_string()),
            _ => None,
        };
        let c = ConnInfo::parse("postgres://u@h/db", env).unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyCa);
        let c = ConnInfo::parse("postgres://u@h/db?sslmode=disable", env).unwrap();
        assert_eq!(c.tls.mode, SslMode::Disable);
    }
}
