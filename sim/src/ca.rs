//! A throwaway certificate authority for the simulator's TLS.
//!
//! Generated fresh at every start: a CA, and a server certificate for `127.0.0.1` and
//! `localhost` signed by it. Clients trust the CA PEM (the daemon via `tls.ca_file`), so TLS
//! is verified end to end just as against DingTalk, with nothing to install system-wide.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::SimError;

/// The generated CA and the server TLS configuration built on it.
pub(crate) struct TestCa {
    /// The CA certificate, PEM, for clients to trust.
    pub(crate) ca_pem: String,
    /// rustls server config presenting the leaf certificate.
    pub(crate) server_config: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// Generates the CA and a leaf for `hosts` (IP literals become IP SANs).
    pub(crate) fn generate(hosts: &[String]) -> Result<TestCa, SimError> {
        let tls = |e: rcgen::Error| SimError::Tls(e.to_string());

        let mut ca_params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "dingtalk-streamd-sim throwaway CA");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(tls)?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls)?;

        let mut leaf_params = CertificateParams::new(hosts.to_vec()).map_err(tls)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "dingtalk-streamd-sim");
        leaf_params.distinguished_name = dn;
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().map_err(tls)?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(tls)?;

        let chain = vec![leaf.der().clone(), CertificateDer::from(ca.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SimError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| SimError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TestCa {
            ca_pem: ca.pem(),
            server_config: Arc::new(config),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_pem() {
        let ca = TestCa::generate(&["127.0.0.1".into(), "localhost".into()]).expect("ca");
        assert!(ca.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
