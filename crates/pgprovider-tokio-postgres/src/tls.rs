//! TLS through rustls, for every libpq `sslmode`.
//!
//! tokio-postgres itself knows only disable, prefer and require; the certificate checks of
//! verify-ca and verify-full are ours, as rustls certificate verifiers:
//!
//! | sslmode | encrypted | chain checked | host name checked |
//! | --- | --- | --- | --- |
//! | disable | never | - | - |
//! | allow | only if the server insists | no | no |
//! | prefer | if the server offers it | no | no |
//! | require | always | only if `sslrootcert` is set (libpq's rule) | no |
//! | verify-ca | always | yes | no |
//! | verify-full | always | yes | yes |
//!
//! No mode falls back to plaintext unless it allows it: require and the verify modes fail
//! when the server does not offer TLS. `sslrootcert=system` trusts the system's roots.
//! The glue between rustls and tokio-postgres (including SCRAM channel binding) is the
//! `tokio-postgres-rustls` crate.

use pgprovider_core::{Error, ErrorKind, Result, SslMode, TlsParams};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::Path;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The `sslrootcert` value that means "the system's trusted roots".
pub const SYSTEM_ROOTS: &str = "system";

/// The rustls connector for `tls`, or `None` for `sslmode=disable`.
pub(crate) fn connector(tls: &TlsParams, node: &str) -> Result<Option<MakeRustlsConnect>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let lenient = |chain| {
        Arc::new(Lenient {
            chain,
            provider: provider.clone(),
        })
    };
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        SslMode::Disable => return Ok(None),
        SslMode::VerifyFull => webpki(tls, node, &provider)?,
        SslMode::VerifyCa => lenient(Some(webpki(tls, node, &provider)?)),
        SslMode::Require if tls.root_cert.is_some() => lenient(Some(webpki(tls, node, &provider)?)),
        _ => lenient(None),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(node, format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "sslcert", node)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_error(node, format!("cannot read sslkey {}: {e}", key.display()))
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                tls_error(
                    node,
                    format!("the client certificate does not match its key: {e}"),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn webpki(
    tls: &TlsParams,
    node: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    match tls.root_cert.as_deref() {
        Some(p) if p == Path::new(SYSTEM_ROOTS) => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
        Some(p) => {
            for cert in read_certs(p, "sslrootcert", node)? {
                roots.add(cert).map_err(|e| {
                    tls_error(
                        node,
                        format!(
                            "sslrootcert {} holds an unusable certificate: {e}",
                            p.display()
                        ),
                    )
                })?;
            }
        }
        None => {
            return Err(tls_error(
                node,
                format!("sslmode={} needs sslrootcert", tls.mode.as_str()),
            )
            .with_hint("set sslrootcert to a PEM file of trusted roots, or sslrootcert=system"));
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_error(node, format!("cannot use the trusted roots: {e}")))
}

fn read_certs(path: &Path, field: &str, node: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(node, format!("cannot read {field} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(
            node,
            format!("{field} {} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn tls_error(node: &str, msg: String) -> Error {
    Error::new(ErrorKind::Tls, msg).with_node(node)
}

/// The server-certificate check of every mode but verify-full (which uses webpki as is):
/// with `chain`, the chain must lead to a trusted root but the name is not checked
/// (verify-ca, and require with sslrootcert); without it, any certificate is accepted
/// (prefer, require, allow: encryption without authentication, as libpq does). Handshake
/// signatures are always checked.
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
