//! One `certificates.k8s.io/v1` CertificateSigningRequest: created, then watched until it is
//! approved and its certificate issued, denied, failed, or the deadline passes (client-go's
//! `RequestCertificate` and `WaitForCertificate`).

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec, CertificateSigningRequestStatus,
};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rcgen::{KeyPair, PublicKeyData};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use super::CertificateError;
use super::csr::Template;

/// How a request is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestName {
    /// `metadata.generateName` (rotation's `csr-`).
    Generate(String),
    /// A fixed name; an existing request of that name for the same key and signer is reused
    /// (bootstrap's digested name, after a restart).
    Fixed(String),
}

/// Where waiting stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided, or approved but not issued yet.
    Pending,
    /// The issued certificate (PEM).
    Issued(Vec<u8>),
    Denied {
        reason: String,
        message: String,
    },
    Failed {
        reason: String,
        message: String,
    },
}

/// What a request's status says (pure).
pub fn outcome(status: Option<&CertificateSigningRequestStatus>) -> Outcome {
    let Some(status) = status else {
        return Outcome::Pending;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let is_true = |c: &&k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition| {
        c.status.is_empty() || c.status == "True"
    };
    for condition in conditions.iter().filter(is_true) {
        let reason = condition.reason.clone().unwrap_or_default();
        let message = condition.message.clone().unwrap_or_default();
        match condition.type_.as_str() {
            "Denied" => return Outcome::Denied { reason, message },
            "Failed" => return Outcome::Failed { reason, message },
            _ => {}
        }
    }
    let approved = conditions
        .iter()
        .filter(is_true)
        .any(|c| c.type_ == "Approved");
    match &status.certificate {
        Some(ByteString(pem)) if approved && !pem.is_empty() => Outcome::Issued(pem.clone()),
        _ => Outcome::Pending,
    }
}

/// Creates the request for `key` and waits up to `timeout` for its certificate (PEM).
pub async fn request_certificate(
    client: &kube::Client,
    template: &Template,
    key: &KeyPair,
    name: RequestName,
    timeout: Duration,
) -> Result<Vec<u8>, CertificateError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let request_pem = template.request_pem(key)?;
    let (metadata, fixed) = match name {
        RequestName::Generate(prefix) => (
            ObjectMeta {
                generate_name: Some(prefix),
                ..ObjectMeta::default()
            },
            None,
        ),
        RequestName::Fixed(name) => (
            ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            Some(name),
        ),
    };
    let csr = CertificateSigningRequest {
        metadata,
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.into_bytes()),
            signer_name: template.signer.to_owned(),
            usages: Some(template.usages.iter().map(|u| (*u).to_owned()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let created = match (api.create(&PostParams::default(), &csr).await, fixed) {
        (Ok(created), _) => created,
        (Err(e), Some(name)) if crate::apiserver::api_code(&e) == Some(409) => {
            let existing = api.get(&name).await?;
            ensure_compatible(&existing, template, key)?;
            tracing::info!(csr = %name, "reusing the certificate signing request made before a restart");
            existing
        }
        (Err(e), _) => return Err(e.into()),
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    if template.signer == super::csr::SERVING_SIGNER {
        tracing::warn!(
            csr = %name,
            signer = template.signer,
            "the kubelet serving certificate signing request awaits approval by an operator \
             (kubectl certificate approve {name}); the kubelet port refuses TLS until it is issued"
        );
    } else {
        tracing::info!(csr = %name, signer = template.signer, "waiting for the certificate signing request to be approved and issued");
    }
    match tokio::time::timeout(timeout, wait(&api, &name, outcome(created.status.as_ref()))).await {
        Ok(result) => result,
        Err(_) => Err(CertificateError::Timeout {
            name,
            after: timeout,
        }),
    }
}

/// Watches `name` until it is decided (watch errors are retried; the caller bounds the time).
async fn wait(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    initial: Outcome,
) -> Result<Vec<u8>, CertificateError> {
    let mut current = initial;
    loop {
        match current {
            Outcome::Issued(pem) => {
                tracing::info!(csr = %name, "certificate issued");
                return Ok(pem);
            }
            Outcome::Denied { reason, message } => {
                return Err(CertificateError::Denied {
                    name: name.to_owned(),
                    reason,
                    message,
                });
            }
            Outcome::Failed { reason, message } => {
                return Err(CertificateError::Failed {
                    name: name.to_owned(),
                    reason,
                    message,
                });
            }
            Outcome::Pending => {}
        }
        let decided = |csr: Option<&CertificateSigningRequest>| match csr {
            Some(csr) => outcome(csr.status.as_ref()) != Outcome::Pending,
            None => true,
        };
        current = match kube::runtime::wait::await_condition(api.clone(), name, decided).await {
            Ok(Some(csr)) => outcome(csr.status.as_ref()),
            Ok(None) => {
                return Err(CertificateError::Deleted {
                    name: name.to_owned(),
                });
            }
            Err(e) => {
                tracing::warn!(csr = %name, error = %e, "watching the certificate signing request failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                Outcome::Pending
            }
        };
    }
}

/// An existing request may be waited on only if it is for the same key and signer.
fn ensure_compatible(
    existing: &CertificateSigningRequest,
    template: &Template,
    key: &KeyPair,
) -> Result<(), CertificateError> {
    let name = existing.metadata.name.clone().unwrap_or_default();
    let incompatible = |reason: &str| CertificateError::Incompatible {
        name: name.clone(),
        reason: reason.to_owned(),
    };
    if existing.spec.signer_name != template.signer {
        return Err(incompatible("another signer"));
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(&existing.spec.request.0)
        .map_err(|_| incompatible("unreadable request"))?;
    let (_, request) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|_| incompatible("unreadable request"))?;
    if request.certification_request_info.subject_pki.raw != key.subject_public_key_info() {
        return Err(incompatible("another key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition;

    fn condition(type_: &str, status: &str) -> CertificateSigningRequestCondition {
        CertificateSigningRequestCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(format!("{type_}Reason")),
            message: Some("because".into()),
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_follow_conditions_and_certificate() {
        assert_eq!(outcome(None), Outcome::Pending);
        let approved_only = CertificateSigningRequestStatus {
            conditions: Some(vec![condition("Approved", "True")]),
            certificate: None,
        };
        assert_eq!(outcome(Some(&approved_only)), Outcome::Pending);
        let issued = CertificateSigningRequestStatus {
            certificate: Some(ByteString(b"PEM".to_vec())),
            ..approved_only.clone()
        };
        assert_eq!(outcome(Some(&issued)), Outcome::Issued(b"PEM".to_vec()));
        let not_approved = CertificateSigningRequestStatus {
            conditions: Some(vec![condition("Approved", "False")]),
            certificate: Some(ByteString(b"PEM".to_vec())),
        };
        assert_eq!(outcome(Some(&not_approved)), Outcome::Pending);
        let denied = CertificateSigningRequestStatus {
            conditions: Some(vec![condition("Denied", "True")]),
            certificate: None,
        };
        assert_eq!(
            outcome(Some(&denied)),
            Outcome::Denied {
                reason: "DeniedReason".into(),
                message: "because".into()
            }
        );
        let failed = CertificateSigningRequestStatus {
            conditions: Some(vec![
                condition("Approved", "True"),
                condition("Failed", "True"),
            ]),
            certificate: None,
        };
        assert!(matches!(outcome(Some(&failed)), Outcome::Failed { .. }));
    }
}
