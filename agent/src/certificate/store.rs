//! The cert dir as kubelet lays it out: each issued pair in `<prefix>-<YYYY-MM-DD-HH-MM-SS>.pem`
//! (certificate then key, mode 0600), `<prefix>-current.pem` a symlink to the newest (replaced
//! atomically), the key of a pending bootstrap request in `<prefix>.key.tmp`; and the kubeconfig
//! written after bootstrap, naming the bootstrap cluster and the current pair.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use rcgen::KeyPair;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::CertificateError;

/// The client certificate's file prefix.
pub const CLIENT_PREFIX: &str = "kubelet-client";
/// The serving certificate's file prefix.
pub const SERVER_PREFIX: &str = "kubelet-server";

/// When a certificate may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    pub fn contains(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Pair {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf certificate's validity.
    pub validity: Validity,
}

impl Pair {
    /// Parses PEM holding certificates and one private key, in any order.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, CertificateError> {
        let certs = parse_certs(pem, what)?;
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| CertificateError::pem(what, e))?;
        let validity = leaf_validity(&certs, what)?;
        Ok(Self {
            certs,
            key,
            validity,
        })
    }

    /// The pair in rustls' form, checked to belong together.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertificateError> {
        let provider = rustls::crypto::ring::default_provider();
        Ok(Arc::new(CertifiedKey::from_der(
            self.certs.clone(),
            self.key.clone_key(),
            &provider,
        )?))
    }
}

/// Every certificate in `pem` (at least one).
pub fn parse_certs(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::pem(what, e))?;
    if certs.is_empty() {
        return Err(CertificateError::pem(what, "no certificate"));
    }
    Ok(certs)
}

fn validity_of(cert: &CertificateDer<'_>, what: &str) -> Result<Validity, CertificateError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertificateError::pem(what, e))?;
    let at = |seconds: i64| {
        let offset = Duration::from_secs(seconds.unsigned_abs());
        if seconds >= 0 {
            SystemTime::UNIX_EPOCH + offset
        } else {
            SystemTime::UNIX_EPOCH - offset
        }
    };
    Ok(Validity {
        not_before: at(parsed.validity().not_before.timestamp()),
        not_after: at(parsed.validity().not_after.timestamp()),
    })
}

fn leaf_validity(certs: &[CertificateDer<'_>], what: &str) -> Result<Validity, CertificateError> {
    let leaf = certs
        .first()
        .ok_or_else(|| CertificateError::pem(what, "no certificate"))?;
    validity_of(leaf, what)
}

/// Whether every certificate of the chain is valid at `now` (kubelet's check of an existing
/// kubeconfig's client certificate).
pub fn chain_valid_at(
    certs: &[CertificateDer<'_>],
    now: SystemTime,
    what: &str,
) -> Result<bool, CertificateError> {
    for cert in certs {
        if !validity_of(cert, what)?.contains(now) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `contents` to `path` with mode 0600, through a temporary file renamed into place.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), CertificateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(CertificateError::io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(CertificateError::io(path))
}

/// The pairs of one kind of certificate in the cert dir.
#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
    prefix: &'static str,
}

impl CertStore {
    pub fn new(dir: impl Into<PathBuf>, prefix: &'static str) -> Self {
        Self {
            dir: dir.into(),
            prefix,
        }
    }

    /// `<dir>/<prefix>-current.pem`.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}-current.pem", self.prefix))
    }

    /// `<dir>/<prefix>.key.tmp`: the key of a request not yet issued.
    pub fn pending_key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key.tmp", self.prefix))
    }

    /// The current pair, if there is one.
    pub fn current(&self) -> Result<Option<Pair>, CertificateError> {
        let path = self.current_path();
        match std::fs::read(&path) {
            Ok(pem) => Pair::from_pem(&pem, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CertificateError::Io { path, source }),
        }
    }

    /// Stores an issued certificate with its key and makes it the current pair.
    pub fn update(&self, cert_pem: &[u8], key_pem: &str) -> Result<Pair, CertificateError> {
        let stamp = jiff::Zoned::now().strftime("%Y-%m-%d-%H-%M-%S").to_string();
        self.update_at(cert_pem, key_pem, &stamp)
    }

    fn update_at(
        &self,
        cert_pem: &[u8],
        key_pem: &str,
        stamp: &str,
    ) -> Result<Pair, CertificateError> {
        let mut contents = cert_pem.to_vec();
        if !contents.ends_with(b"\n") {
            contents.push(b'\n');
        }
        contents.extend_from_slice(key_pem.as_bytes());
        let file_name = format!("{}-{stamp}.pem", self.prefix);
        let pair = Pair::from_pem(&contents, &file_name)?;
        pair.certified_key()?;
        let path = self.dir.join(&file_name);
        write_private(&path, &contents)?;
        let current = self.current_path();
        let link = self.dir.join(format!(".{}-current.pem.tmp", self.prefix));
        let swap = || -> std::io::Result<()> {
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            std::os::unix::fs::symlink(&file_name, &link)?;
            std::fs::rename(&link, &current)
        };
        swap().map_err(CertificateError::io(&current))?;
        Ok(pair)
    }

    /// The key kept for a pending request: the one from before a restart, or a new one.
    pub fn load_or_create_pending_key(&self) -> Result<KeyPair, CertificateError> {
        let path = self.pending_key_path();
        match std::fs::read_to_string(&path) {
            Ok(pem) => match KeyPair::from_pem(&pem) {
                Ok(key) => return Ok(key),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable pending key; making a new one");
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CertificateError::Io { path, source }),
        }
        let key = super::csr::generate_key()?;
        write_private(&path, key.serialize_pem().as_bytes())?;
        Ok(key)
    }

    /// Forgets the pending key once its certificate is stored.
    pub fn remove_pending_key(&self) -> Result<(), CertificateError> {
        let path = self.pending_key_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CertificateError::Io { path, source }),
        }
    }
}

/// The cluster of a kubeconfig's current context.
pub fn current_cluster(kubeconfig: &Kubeconfig, path: &Path) -> Result<Cluster, CertificateError> {
    let missing = |reason: String| CertificateError::KubeconfigContent {
        path: path.to_owned(),
        reason,
    };
    let context_name = kubeconfig
        .current_context
        .as_deref()
        .ok_or_else(|| missing("no current-context".into()))?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| missing(format!("no context {context_name:?}")))?;
    kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| missing(format!("no cluster {:?}", context.cluster)))
}

/// The kubeconfig kubelet writes after bootstrap: the bootstrap kubeconfig's cluster (server and
/// CA), and the current pair as client certificate and key.
pub fn node_kubeconfig(bootstrap_cluster: &Cluster, pair_path: &Path) -> Kubeconfig {
    let pair = pair_path.display().to_string();
    Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: "default-cluster".into(),
            cluster: Some(Cluster {
                server: bootstrap_cluster.server.clone(),
                insecure_skip_tls_verify: bootstrap_cluster.insecure_skip_tls_verify,
                certificate_authority: bootstrap_cluster.certificate_authority.clone(),
                certificate_authority_data: bootstrap_cluster.certificate_authority_data.clone(),
                tls_server_name: bootstrap_cluster.tls_server_name.clone(),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(pair.clone()),
                client_key: Some(pair),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(Context {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                namespace: Some("default".into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("default-context".into()),
        ..Kubeconfig::default()
    }
}

/// Writes a kubeconfig as YAML (mode 0600).
pub fn write_kubeconfig(path: &Path, kubeconfig: &Kubeconfig) -> Result<(), CertificateError> {
    let yaml =
        serde_saphyr::to_string(kubeconfig).map_err(|e| CertificateError::KubeconfigContent {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    write_private(path, yaml.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A certificate for `key` signed by a fresh CA, valid from `not_before` to `not_after`.
    pub(crate) fn issue(key: &KeyPair, not_before: SystemTime, not_after: SystemTime) -> String {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.signed_by(key, &issuer).expect("cert").pem()
    }

    #[test]
    fn updates_write_a_private_pair_and_swap_the_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CertStore::new(dir.path().join("pki"), CLIENT_PREFIX);
        assert!(store.current().expect("empty store").is_none());
        let now = SystemTime::now();
        let key = KeyPair::generate().expect("key");
        let cert = issue(&key, now, now + Duration::from_secs(3600));
        let first = store
            .update_at(cert.as_bytes(), &key.serialize_pem(), "2026-01-02-03-04-05")
            .expect("update");
        assert_eq!(
            first
                .validity
                .not_after
                .duration_since(first.validity.not_before)
                .expect("order")
                .as_secs(),
            3600
        );
        let file = dir
            .path()
            .join("pki/kubelet-client-2026-01-02-03-04-05.pem");
        let mode = std::fs::metadata(&file).expect("pair").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_link(store.current_path()).expect("symlink"),
            PathBuf::from("kubelet-client-2026-01-02-03-04-05.pem")
        );
        let key2 = KeyPair::generate().expect("key");
        let cert2 = issue(&key2, now, now + Duration::from_secs(7200));
        store
            .update_at(
                cert2.as_bytes(),
                &key2.serialize_pem(),
                "2026-01-02-03-04-06",
            )
            .expect("second update");
        assert_eq!(
            std::fs::read_link(store.current_path()).expect("symlink"),
            PathBuf::from("kubelet-client-2026-01-02-03-04-06.pem")
        );
        assert!(file.exists(), "older pairs stay");
        let current = store.current().expect("read").expect("current");
        assert_eq!(
            current.certs,
            parse_certs(cert2.as_bytes(), "cert2").expect("certs")
        );
        current
            .certified_key()
            .expect("key and certificate belong together");
        // A certificate for another key is refused and the current pair stays.
        let err = store.update_at(
            cert.as_bytes(),
            &key2.serialize_pem(),
            "2026-01-02-03-04-07",
        );
        assert!(err.is_err());
        assert_eq!(
            std::fs::read_link(store.current_path()).expect("symlink"),
            PathBuf::from("kubelet-client-2026-01-02-03-04-06.pem")
        );
    }

    #[test]
    fn pending_keys_survive_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CertStore::new(dir.path(), CLIENT_PREFIX);
        let key = store.load_or_create_pending_key().expect("new key");
        let path = dir.path().join("kubelet-client.key.tmp");
        assert_eq!(
            std::fs::metadata(&path).expect("key").permissions().mode() & 0o777,
            0o600
        );
        let again = store.load_or_create_pending_key().expect("kept key");
        assert_eq!(again.public_key_raw(), key.public_key_raw());
        store.remove_pending_key().expect("remove");
        assert!(!path.exists());
        let fresh = store.load_or_create_pending_key().expect("another key");
        assert_ne!(fresh.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn validity_and_chain_checks() {
        let now = SystemTime::now();
        let key = KeyPair::generate().expect("key");
        let expired = issue(
            &key,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        );
        let certs = parse_certs(expired.as_bytes(), "expired").expect("certs");
        assert!(!chain_valid_at(&certs, now, "expired").expect("parse"));
        assert!(chain_valid_at(&certs, now - Duration::from_secs(5000), "expired").expect("parse"));
        let future = issue(
            &key,
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
        );
        let certs = parse_certs(future.as_bytes(), "future").expect("certs");
        assert!(!chain_valid_at(&certs, now, "future").expect("parse"));
        assert!(matches!(
            parse_certs(b"not pem", "junk"),
            Err(CertificateError::Pem { .. })
        ));
    }

    #[test]
    fn the_node_kubeconfig_names_the_bootstrap_cluster_and_the_current_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bootstrap = dir.path().join("bootstrap-kubeconfig");
        std::fs::write(
            &bootstrap,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.1.2.3:6443\n    certificate-authority: ca.crt\ncontexts:\n- name: b\n  context:\n    cluster: c\n    user: boot\ncurrent-context: b\nusers:\n- name: boot\n  user:\n    token: abcdef.0123456789abcdef\n",
        )
        .expect("write");
        let parsed = Kubeconfig::read_from(&bootstrap).expect("bootstrap");
        let cluster = current_cluster(&parsed, &bootstrap).expect("cluster");
        let pair = dir.path().join("pki/kubelet-client-current.pem");
        let out = dir.path().join("kubelet.conf");
        write_kubeconfig(&out, &node_kubeconfig(&cluster, &pair)).expect("write");
        assert_eq!(
            std::fs::metadata(&out).expect("file").permissions().mode() & 0o777,
            0o600
        );
        let written = Kubeconfig::read_from(&out).expect("readable kubeconfig");
        let cluster = current_cluster(&written, &out).expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://10.1.2.3:6443"));
        assert_eq!(
            cluster.certificate_authority,
            Some(dir.path().join("ca.crt").display().to_string()),
            "the CA path is absolute"
        );
        let user = written.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(user.client_certificate, Some(pair.display().to_string()));
        assert_eq!(user.client_key, Some(pair.display().to_string()));
        assert!(user.token.is_none(), "the bootstrap token is not copied");
        assert_eq!(written.current_context.as_deref(), Some("default-context"));
    }
}
