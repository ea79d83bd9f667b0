//! TLS to the database. A URL with `sslmode=require` connects over TLS
//! and verifies the server's certificate and its name against the public
//! (webpki) roots and the certificates in `store.ca_file` — what libpq
//! calls `verify-full`. There is no unverified TLS: it would protect
//! against nothing a machine in the path could not do anyway.
//!
//! So `sslmode=prefer`, the default when the URL says nothing, connects
//! without TLS, as `disable` does; and `store.ca_file` without
//! `sslmode=require` is refused rather than left unused.

use super::config_error;
use crate::store::StoreError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector for `config`, which is settled to TLS or no TLS.
pub(crate) fn connector(
    config: &mut tokio_postgres::Config,
    ca_file: Option<&Path>,
) -> Result<MakeRustlsConnect, StoreError> {
    let tls = config.get_ssl_mode() == SslMode::Require;
    if !tls {
        config.ssl_mode(SslMode::Disable);
        if ca_file.is_some() {
            return Err(StoreError::Config {
                key: "store.ca_file",
                problem: "is set, but the database URL does not ask for TLS: add \
                          `sslmode=require` to its query"
                    .into(),
            });
        }
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        for cert in ca_certificates(path)? {
            roots.add(cert).map_err(|e| StoreError::Config {
                key: "store.ca_file",
                problem: format!("holds a certificate that cannot be used: {e}"),
            })?;
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| config_error(format!("cannot set up TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(client))
}

/// The PEM certificates in `path`: at least one, every block readable.
fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let problem = |problem: String| StoreError::Config {
        key: "store.ca_file",
        problem,
    };
    let read =
        std::fs::read(path).map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&read)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("{} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(problem(format!(
            "{} holds no certificate (`-----BEGIN CERTIFICATE-----`)",
            path.display()
        )));
    }
    Ok(certs)
}

/// What to add to a connection error that looks like a certificate
/// refused, so the reader knows where a private CA goes.
pub(crate) fn hint(error: &str) -> &'static str {
    if error.contains("certificate") {
        " (a server certificate signed by a private CA needs that CA in store.ca_file)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    /// The key and problem of the config error `url` with `ca_file` gives.
    fn refused(url: &str, ca_file: &Path) -> (&'static str, String) {
        match connector(&mut config(url), Some(ca_file)) {
            Err(StoreError::Config { key, problem }) => (key, problem),
            Err(other) => panic!("not a config error: {other:?}"),
            Ok(_) => panic!("{url} with {} was accepted", ca_file.display()),
        }
    }

    #[test]
    fn only_require_asks_for_tls_and_prefer_means_none() {
        for (url, mode) in [
            ("postgres://u@h/db", SslMode::Disable),
            ("postgres://u@h/db?sslmode=prefer", SslMode::Disable),
            ("postgres://u@h/db?sslmode=disable", SslMode::Disable),
            ("postgres://u@h/db?sslmode=require", SslMode::Require),
        ] {
            let mut c = config(url);
            connector(&mut c, None).unwrap();
            assert_eq!(c.get_ssl_mode(), mode, "{url}");
        }
    }

    #[test]
    fn a_ca_file_without_require_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"").unwrap();
        let (key, problem) = refused("postgres://u@h/db", &ca);
        assert_eq!(key, "store.ca_file");
        assert!(problem.contains("sslmode=require"), "{problem}");
    }

    #[test]
    fn a_ca_file_that_is_missing_empty_or_not_a_certificate_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"nothing here\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_der = dir.path().join("not-der.pem");
        std::fs::write(
            &not_der,
            b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, says) in [
            (dir.path().join("missing.pem"), "cannot read"),
            (empty, "holds no certificate"),
            (broken, "is not PEM"),
            (not_der, "cannot be used"),
        ] {
            let (key, problem) = refused("postgres://u@h/db?sslmode=require", &path);
            assert_eq!(key, "store.ca_file", "{}", path.display());
            assert!(problem.contains(says), "{}: {problem}", path.display());
        }
    }
}
