//! TLS to ZooKeeper: the CA bundle and client identity herald presents on `tcp+tls://` hosts,
//! checked from PEM before any connection is made, and the words for a connection that failed
//! in the TLS layer (wrong CA, a certificate the server wants or rejects, a port without TLS).

use std::fmt;
use std::path::{Path, PathBuf};

use zookeeper_client as zk;

/// True when this binary was built with TLS (the `tls` Cargo feature, on by default).
pub const TLS_BUILT: bool = cfg!(feature = "tls");

/// How to get a binary that speaks TLS, for the error a build without it gives.
pub const REBUILD_WITH_TLS: &str = "this herald was built without TLS (cargo --no-default-features); build it with the default features, or `cargo build --release --features tls`";

/// One of the PEM files TLS takes, named as the user gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Ca,
    Cert,
    Key,
}

impl TlsFile {
    /// The flag and variable that name the file.
    pub fn flag(self) -> &'static str {
        match self {
            TlsFile::Ca => "--zk-tls-ca/HERALD_ZK_TLS_CA",
            TlsFile::Cert => "--zk-tls-cert/HERALD_ZK_TLS_CERT",
            TlsFile::Key => "--zk-tls-key/HERALD_ZK_TLS_KEY",
        }
    }

    /// The end of the label of its PEM blocks.
    fn label(self) -> &'static str {
        match self {
            TlsFile::Ca | TlsFile::Cert => "CERTIFICATE",
            TlsFile::Key => "PRIVATE KEY",
        }
    }

    /// What the file must hold, for the error that says it does not.
    fn wanted(self) -> &'static str {
        match self {
            TlsFile::Ca => {
                "PEM certificates (-----BEGIN CERTIFICATE-----) of the CA that signed the servers' certificates"
            }
            TlsFile::Cert => "the client certificate in PEM (-----BEGIN CERTIFICATE-----)",
            TlsFile::Key => {
                "the client certificate's private key in PEM (-----BEGIN PRIVATE KEY----- or RSA/EC PRIVATE KEY)"
            }
        }
    }
}

/// A TLS file that does not hold what it should. Never shows the file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {}: {reason}; it must hold {}", .which.flag(), .path.display(), .which.wanted())]
pub struct TlsFileError {
    pub which: TlsFile,
    pub path: PathBuf,
    pub reason: String,
}

/// The TLS settings of a session: the CA bundle, and the client certificate and key when given.
/// `Debug` shows the file names only.
#[derive(Clone)]
pub struct ZkTls {
    ca_file: PathBuf,
    cert_file: Option<PathBuf>,
    #[cfg(feature = "tls")]
    options: zk::TlsOptions,
}

impl fmt::Debug for ZkTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkTls")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// A PEM file's name and content.
pub type Pem<'a> = (&'a Path, &'a [u8]);

impl ZkTls {
    /// Checks the CA bundle and the optional client identity (certificate, key) and builds the
    /// client's TLS options from them.
    ///
    /// # Notable errors
    /// [`TlsFileError`] naming the first file that is not UTF-8 PEM of the right kind, or that
    /// the client cannot load. In a build without TLS every call fails (see [`TLS_BUILT`]).
    pub fn from_pem(
        ca: Pem<'_>,
        identity: Option<(Pem<'_>, Pem<'_>)>,
    ) -> Result<ZkTls, TlsFileError> {
        let ca_text = pem_text(TlsFile::Ca, ca)?;
        let identity_text = match identity {
            Some((cert, key)) => {
                Some((pem_text(TlsFile::Cert, cert)?, pem_text(TlsFile::Key, key)?))
            }
            None => None,
        };
        #[cfg(feature = "tls")]
        {
            let fail = |which: TlsFile, path: &Path, err: zk::Error| TlsFileError {
                which,
                path: path.to_owned(),
                reason: format!("the ZooKeeper client cannot load it ({err})"),
            };
            let mut options = zk::TlsOptions::new()
                .with_pem_ca(ca_text)
                .map_err(|e| fail(TlsFile::Ca, ca.0, e))?;
            if let (Some((cert, key)), Some((cert_text, key_text))) = (identity, identity_text) {
                options = options
                    .with_pem_identity(cert_text, key_text)
                    .map_err(|e| {
                        // The client names the part it could not read ("cert" or "private key").
                        if e.to_string().contains("cert") && !e.to_string().contains("key") {
                            fail(TlsFile::Cert, cert.0, e)
                        } else {
                            fail(TlsFile::Key, key.0, e)
                        }
                    })?;
            }
            Ok(ZkTls {
                ca_file: ca.0.to_owned(),
                cert_file: identity.map(|((path, _), _)| path.to_owned()),
                options,
            })
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (ca_text, identity_text);
            Err(TlsFileError {
                which: TlsFile::Ca,
                path: ca.0.to_owned(),
                reason: REBUILD_WITH_TLS.to_owned(),
            })
        }
    }

    /// The CA bundle's file.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The client certificate's file, when one is presented.
    pub fn cert_file(&self) -> Option<&Path> {
        self.cert_file.as_deref()
    }

    #[cfg(feature = "tls")]
    pub(crate) fn options(&self) -> &zk::TlsOptions {
        &self.options
    }
}

/// The file as text, when it is UTF-8 and holds a PEM block of its kind
/// (`-----BEGIN … CERTIFICATE-----`, `-----BEGIN … PRIVATE KEY-----`).
fn pem_text<'a>(which: TlsFile, (path, raw): Pem<'a>) -> Result<&'a str, TlsFileError> {
    let fail = |reason: &str| TlsFileError {
        which,
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(raw)
        .map_err(|_| fail("it is not text (DER? convert it with openssl x509 -outform PEM)"))?;
    let found = text.lines().any(|line| {
        let line = line.trim();
        line.strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(which.label()))
    });
    if !found {
        return Err(fail(if text.trim().is_empty() {
            "it is empty"
        } else {
            "it has no PEM block of that kind"
        }));
    }
    Ok(text)
}

/// Why a connection attempt failed, in words that say what to do, when the failure tells
/// (a TLS handshake error, a server that closed the connection); `None` when it says nothing
/// more than "unreachable".
pub fn explain(err: &zk::Error, tls: Option<&ZkTls>) -> Option<String> {
    if let zk::Error::ConnectionLoss = err {
        return Some(
            "the server closed the connection before a session was established; if that port is a secureClientPort (TLS), write its host as tcp+tls://HOST:PORT and give --zk-tls-ca".to_owned(),
        );
    }
    let io = io_cause(err)?;
    #[cfg(feature = "tls")]
    if let Some(tls_err) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return Some(explain_tls(tls_err, tls));
    }
    let _ = tls;
    let attempt = err.to_string();
    if attempt.contains("tcp+tls://")
        && matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        )
    {
        return Some(format!(
            "the server closed the connection during the TLS handshake ({io}); it may not speak TLS on that port: give its secureClientPort, or write tcp://HOST:PORT for a plaintext one"
        ));
    }
    Some(format!(
        "{attempt}; check --zk/HERALD_ZK and that the ensemble is up"
    ))
}

/// The I/O error under a connect failure, if there is one.
fn io_cause(err: &zk::Error) -> Option<&std::io::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cause = e.source();
    }
    None
}

#[cfg(feature = "tls")]
fn explain_tls(err: &rustls::Error, tls: Option<&ZkTls>) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as E};
    let ca = tls.map_or_else(|| "?".to_owned(), |t| t.ca_file().display().to_string());
    match (err, tls.and_then(ZkTls::cert_file)) {
        (E::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature), _) => format!(
            "the server's certificate is not signed by a CA in --zk-tls-ca {ca} ({err}); give the CA bundle that signed the ZooKeeper servers' certificates"
        ),
        (E::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }), _) => {
            format!(
                "the server's certificate does not name the host dialled ({err}); connect to a name or address its subjectAltName lists"
            )
        }
        (
            E::InvalidCertificate(
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. },
            ),
            _,
        ) => format!(
            "the server's certificate is outside its validity period ({err}); renew it, or check this machine's clock"
        ),
        (E::InvalidCertificate(_), _) => format!(
            "the server's certificate was refused ({err}); check it against --zk-tls-ca {ca}"
        ),
        (
            E::AlertReceived(
                Alert::CertificateRequired | Alert::BadCertificate | Alert::HandshakeFailure,
            ),
            None,
        ) => format!(
            "the server requires a client certificate ({err}); give --zk-tls-cert and --zk-tls-key"
        ),
        (
            E::AlertReceived(
                Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::AccessDenied
                | Alert::CertificateRequired
                | Alert::HandshakeFailure,
            ),
            Some(cert),
        ) => format!(
            "the server rejected the client certificate --zk-tls-cert {} ({err}); it must be signed by a CA in the server's ssl.trustStore and be valid now",
            cert.display()
        ),
        (
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. },
            _,
        ) => format!(
            "the server does not speak TLS on that port ({err}); give its secureClientPort, or write tcp://HOST:PORT for a plaintext one"
        ),
        _ => format!("the TLS handshake failed ({err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn pem_files_are_checked_by_kind() {
        let path = Path::new("/x.pem");
        let table: &[(TlsFile, &[u8], Option<&str>)] = &[
            (TlsFile::Ca, CERT.as_bytes(), None),
            (TlsFile::Ca, b"", Some("it is empty")),
            (TlsFile::Ca, b"\x30\x82\x01\xff", Some("it is not text")),
            (TlsFile::Cert, b"hello", Some("no PEM block")),
            (
                TlsFile::Key,
                b"-----BEGIN EC PRIVATE KEY-----\nAA\n-----END EC PRIVATE KEY-----\n",
                None,
            ),
            (TlsFile::Key, CERT.as_bytes(), Some("no PEM block")),
        ];
        for (which, raw, want) in table {
            let got = pem_text(*which, (path, raw)).err().map(|e| e.to_string());
            match (want, &got) {
                (None, None) => {}
                (Some(want), Some(got)) => {
                    assert!(got.contains(want) && got.contains(which.flag()), "{got}")
                }
                _ => panic!("{which:?} {raw:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_key_error_never_shows_the_key() {
        let key = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
        let err = ZkTls::from_pem(
            (Path::new("/ca.pem"), CERT.as_bytes()),
            Some((
                (Path::new("/c.pem"), CERT.as_bytes()),
                (Path::new("/k.pem"), key),
            )),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
