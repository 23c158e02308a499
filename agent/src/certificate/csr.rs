//! What the kubelet asks for: an ECDSA P-256 key and a PKCS#10 request naming the node
//! (`CN=system:node:<name>`, `O=system:nodes`), with the signer and usages of the
//! CertificateSigningRequest that carries it.

use base64::Engine;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};

use super::CertificateError;

/// The signer of kubelet client certificates (auto-approved by the controller-manager).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet serving certificates (approved by an operator).
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The group every node certificate names.
pub const NODES_GROUP: &str = "system:nodes";

/// The subject, names, signer and usages of one kind of node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub common_name: String,
    pub organization: String,
    /// DNS names and IP addresses (as text) for the subject alternative names.
    pub alt_names: Vec<String>,
    pub signer: &'static str,
    pub usages: &'static [&'static str],
}

impl Template {
    /// The client certificate of node `node_name`.
    pub fn client(node_name: &str) -> Self {
        Self {
            common_name: format!("system:node:{node_name}"),
            organization: NODES_GROUP.to_owned(),
            alt_names: Vec::new(),
            signer: CLIENT_SIGNER,
            usages: &["digital signature", "client auth"],
        }
    }

    /// The serving certificate of node `node_name` for these host names and addresses.
    pub fn serving(node_name: &str, alt_names: &[String]) -> Self {
        let mut names: Vec<String> = Vec::new();
        for name in alt_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        Self {
            common_name: format!("system:node:{node_name}"),
            organization: NODES_GROUP.to_owned(),
            alt_names: names,
            signer: SERVING_SIGNER,
            usages: &["digital signature", "server auth"],
        }
    }

    /// A PEM certificate request for `key` (names that parse as IP addresses become IP SANs).
    pub fn request_pem(&self, key: &KeyPair) -> Result<String, CertificateError> {
        let mut params = CertificateParams::new(self.alt_names.clone())?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, self.common_name.as_str());
        subject.push(DnType::OrganizationName, self.organization.as_str());
        params.distinguished_name = subject;
        Ok(params.serialize_request(key)?.pem()?)
    }

    /// A request name that depends only on the key, subject and usages, as kubelet's bootstrap
    /// names its request (`node-csr-<digest>`): after a restart with the same pending key the
    /// same request is found again instead of a second one made.
    pub fn digested_name(&self, key: &KeyPair) -> String {
        let encode = |data: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
        let mut input = Vec::new();
        let parts = [key.subject_public_key_info()]
            .into_iter()
            .chain([self.common_name.as_bytes().to_vec()])
            .chain([self.organization.as_bytes().to_vec()])
            .chain(self.usages.iter().map(|u| u.as_bytes().to_vec()));
        for part in parts {
            input.extend_from_slice(encode(&part).as_bytes());
            input.push(b'|');
        }
        let digest = ring::digest::digest(&ring::digest::SHA512_256, &input);
        format!("node-csr-{}", encode(digest.as_ref()))
    }
}

/// A new ECDSA P-256 key, as kubelet makes for its certificates.
pub fn generate_key() -> Result<KeyPair, CertificateError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;

    fn parse_request(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        assert_eq!(parsed.label, "CERTIFICATE REQUEST");
        parsed.contents
    }

    #[test]
    fn client_request_names_the_node_without_alt_names() {
        let key = generate_key().expect("key");
        let template = Template::client("node-a");
        let der = parse_request(&template.request_pem(&key).expect("request"));
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("csr");
        let info = &csr.certification_request_info;
        let cn: Vec<_> = info
            .subject
            .iter_common_name()
            .filter_map(|c| c.as_str().ok())
            .collect();
        let o: Vec<_> = info
            .subject
            .iter_organization()
            .filter_map(|c| c.as_str().ok())
            .collect();
        assert_eq!(cn, ["system:node:node-a"]);
        assert_eq!(o, ["system:nodes"]);
        assert_eq!(info.subject_pki.raw, key.subject_public_key_info());
        assert_eq!(template.signer, CLIENT_SIGNER);
        assert_eq!(template.usages, ["digital signature", "client auth"]);
    }

    #[test]
    fn serving_request_has_dns_and_ip_alt_names() {
        let key = generate_key().expect("key");
        let names = ["node-a", "localhost", "10.0.0.7", "127.0.0.1", "localhost"].map(String::from);
        let template = Template::serving("node-a", &names);
        assert_eq!(template.alt_names.len(), 4, "duplicates dropped");
        let der = parse_request(&template.request_pem(&key).expect("request"));
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("csr");
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                        GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(dns, ["node-a", "localhost"]);
        assert_eq!(ips, [vec![10, 0, 0, 7], vec![127, 0, 0, 1]]);
        assert_eq!(template.signer, SERVING_SIGNER);
        assert_eq!(template.usages, ["digital signature", "server auth"]);
    }

    #[test]
    fn digested_names_follow_the_key_and_subject() {
        let key = generate_key().expect("key");
        let other = generate_key().expect("key");
        let a = Template::client("node-a");
        let name = a.digested_name(&key);
        assert!(name.starts_with("node-csr-"), "{name}");
        assert!(name.len() <= 253, "a valid object name");
        assert_eq!(a.digested_name(&key), name, "stable for the same key");
        assert_ne!(a.digested_name(&other), name);
        assert_ne!(Template::client("node-b").digested_name(&key), name);
    }
}
