//! kubelet's TLS bootstrap (`bootstrap.LoadClientCert`): when the kubeconfig is missing or its
//! client certificate is no longer valid, a client certificate is requested with the bootstrap
//! credentials, stored in the cert dir, and the kubeconfig written to use it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kube::config::Kubeconfig;

use super::CertificateError;
use super::csr::Template;
use super::request::{RequestName, request_certificate};
use super::store::{self, CLIENT_PREFIX, CertStore};

/// How long the bootstrap request is waited on (kubelet's hour).
pub const BOOTSTRAP_WAIT: Duration = Duration::from_secs(3600);

/// What bootstrap reads and writes.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: PathBuf,
    pub cert_dir: PathBuf,
    pub node_name: String,
    pub wait_timeout: Duration,
}

impl Bootstrap {
    /// Makes sure `kubeconfig` holds a usable client identity, requesting one if needed.
    pub async fn load_client_cert(&self) -> Result<(), CertificateError> {
        if kubeconfig_still_valid(&self.kubeconfig, SystemTime::now())? {
            tracing::info!(kubeconfig = %self.kubeconfig.display(), "the kubeconfig's client certificate is valid; no bootstrap needed");
            return Ok(());
        }
        let bootstrap = Kubeconfig::read_from(&self.bootstrap_kubeconfig).map_err(|source| {
            CertificateError::Kubeconfig {
                path: self.bootstrap_kubeconfig.clone(),
                source,
            }
        })?;
        let cluster = store::current_cluster(&bootstrap, &self.bootstrap_kubeconfig)?;
        let certs = CertStore::new(&self.cert_dir, CLIENT_PREFIX);
        let node_kubeconfig = store::node_kubeconfig(&cluster, &certs.current_path());
        if let Some(pair) = certs.current()?
            && pair.validity.contains(SystemTime::now())
        {
            tracing::info!(pair = %certs.current_path().display(), "using the stored client certificate");
            return store::write_kubeconfig(&self.kubeconfig, &node_kubeconfig);
        }
        tracing::info!(
            bootstrap_kubeconfig = %self.bootstrap_kubeconfig.display(),
            "no valid client certificate: requesting one with the bootstrap credentials"
        );
        let key = certs.load_or_create_pending_key()?;
        let client = crate::apiserver::client_from_kubeconfig(&self.bootstrap_kubeconfig).await?;
        let template = Template::client(&self.node_name);
        let name = RequestName::Fixed(template.digested_name(&key));
        let pem = request_certificate(&client, &template, &key, name, self.wait_timeout)
            .await
            .inspect_err(|e| tracing::error!(error = %e, "TLS bootstrap failed"))?;
        certs.update(&pem, &key.serialize_pem())?;
        certs.remove_pending_key()?;
        store::write_kubeconfig(&self.kubeconfig, &node_kubeconfig)?;
        tracing::info!(
            kubeconfig = %self.kubeconfig.display(),
            pair = %certs.current_path().display(),
            "client certificate bootstrapped"
        );
        Ok(())
    }
}

/// Whether the kubeconfig at `path` can be used as is: it exists, and its client certificate, if
/// it has one, is within its validity at `now` (other credentials count as valid, as kubelet's
/// `isClientConfigStillValid`). An unreadable certificate means bootstrap again.
pub fn kubeconfig_still_valid(path: &Path, now: SystemTime) -> Result<bool, CertificateError> {
    if !path.exists() {
        return Ok(false);
    }
    let kubeconfig = match Kubeconfig::read_from(path) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(kubeconfig = %path.display(), error = %e, "unreadable kubeconfig; bootstrapping");
            return Ok(false);
        }
    };
    let Some(user) = current_user(&kubeconfig) else {
        return Ok(false);
    };
    let pem = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(data), _) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(data.trim()) {
                Ok(pem) => pem,
                Err(_) => return Ok(false),
            }
        }
        (None, Some(file)) => match std::fs::read(file) {
            Ok(pem) => pem,
            Err(e) => {
                tracing::info!(certificate = %file, error = %e, "the kubeconfig's client certificate is unreadable; bootstrapping");
                return Ok(false);
            }
        },
        (None, None) => return Ok(true),
    };
    let what = path.display().to_string();
    match store::parse_certs(&pem, &what) {
        Ok(certs) => store::chain_valid_at(&certs, now, &what),
        Err(_) => Ok(false),
    }
}

fn current_user(kubeconfig: &Kubeconfig) -> Option<&kube::config::AuthInfo> {
    let context_name = kubeconfig.current_context.as_deref()?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)?
        .context
        .as_ref()?;
    let user = context.user.as_deref()?;
    kubeconfig
        .auth_infos
        .iter()
        .find(|a| a.name == user)?
        .auth_info
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::store::tests::issue;

    fn kubeconfig_with(user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n{user}"
        )
    }

    #[test]
    fn a_kubeconfig_is_valid_while_its_client_certificate_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubelet.conf");
        let now = SystemTime::now();
        assert!(!kubeconfig_still_valid(&path, now).expect("missing"));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = issue(
            &key,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        );
        let pair = dir.path().join("pair.pem");
        std::fs::write(&pair, format!("{cert}{}", key.serialize_pem())).expect("pair");
        let file_user = format!(
            "    client-certificate: {0}\n    client-key: {0}\n",
            pair.display()
        );
        std::fs::write(&path, kubeconfig_with(&file_user)).expect("kubeconfig");
        assert!(kubeconfig_still_valid(&path, now).expect("valid"));
        assert!(!kubeconfig_still_valid(&path, now + Duration::from_secs(7200)).expect("expired"));
        std::fs::remove_file(&pair).expect("remove");
        assert!(!kubeconfig_still_valid(&path, now).expect("missing certificate"));
        std::fs::write(&path, kubeconfig_with("    token: abc\n")).expect("kubeconfig");
        assert!(kubeconfig_still_valid(&path, now).expect("token"));
        std::fs::write(&path, "clusters: [").expect("kubeconfig");
        assert!(!kubeconfig_still_valid(&path, now).expect("unreadable"));
    }
}
