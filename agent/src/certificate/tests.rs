//! The request flows against kube-standin, the test playing the approver (and signer) with a CA
//! made by rcgen: bootstrap, rotation of the client certificate the API client presents (seen by a
//! TLS front in front of the stand-in), and the serving certificate with `serverTLSBootstrap`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_standin::{Standin, StandinHandle, StandinOptions};
use rcgen::{CertificateParams, CertificateSigningRequestParams, Issuer, KeyPair};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_util::sync::CancellationToken;

use super::csr::{CLIENT_SIGNER, SERVING_SIGNER};
use super::store::{CLIENT_PREFIX, CertStore, SERVER_PREFIX};
use super::*;

/// The cluster CA.
struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        let cert = params.self_signed(&key).expect("ca");
        Self {
            issuer: Issuer::new(params, key),
            ca: cert.der().clone(),
            ca_pem: cert.pem(),
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        Arc::new(roots)
    }

    /// Signs a PEM certificate request, valid from a second ago for `lifetime`.
    fn sign(&self, request_pem: &str, lifetime: Duration) -> String {
        let mut request = CertificateSigningRequestParams::from_pem(request_pem).expect("csr");
        let now = SystemTime::now();
        request.params.not_before = (now - Duration::from_secs(1)).into();
        request.params.not_after = (now + lifetime).into();
        request.signed_by(&self.issuer).expect("sign").pem()
    }

    /// A serving certificate for 127.0.0.1.
    fn server_pair(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("cert");
        let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        (vec![cert.der().clone()], key)
    }
}

/// TLS in front of the stand-in, recording the client certificate of every connection.
struct Front {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Option<CertificateDer<'static>>>>>,
}

impl Front {
    async fn start(pki: &Pki, backend: SocketAddr, cancel: CancellationToken) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(pki.roots(), provider.clone())
            .allow_unauthenticated()
            .build()
            .expect("verifier");
        let (certs, key) = pki.server_pair();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    () = cancel.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let acceptor = acceptor.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let presented = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| c.clone().into_owned());
                    record
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(presented);
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                    }
                });
            }
        });
        Self { addr, seen }
    }

    fn presented(&self) -> Vec<Option<CertificateDer<'static>>> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Approves and signs every pending request whose signer is in `signers`.
fn spawn_approver(
    admin: kube::Client,
    pki: Arc<Pki>,
    signers: Arc<Mutex<Vec<&'static str>>>,
    lifetime: Duration,
    cancel: CancellationToken,
) {
    let api: Api<CertificateSigningRequest> = Api::all(admin);
    tokio::spawn(async move {
        while !cancel.is_cancelled() {
            let listed = api.list(&ListParams::default()).await;
            for csr in listed.map(|l| l.items).unwrap_or_default() {
                let allowed = signers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&csr.spec.signer_name.as_str());
                if !allowed || csr.status.as_ref().is_some_and(|s| s.certificate.is_some()) {
                    continue;
                }
                let name = csr.metadata.name.clone().unwrap_or_default();
                let request = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
                let mut approved = csr.clone();
                approved.status = Some(CertificateSigningRequestStatus {
                    conditions: Some(vec![CertificateSigningRequestCondition {
                        type_: "Approved".into(),
                        status: "True".into(),
                        reason: Some("TestApprover".into()),
                        ..Default::default()
                    }]),
                    certificate: None,
                });
                let pp = PostParams::default();
                let Ok(mut approved) = api
                    .replace_subresource("approval", &name, &pp, &approved)
                    .await
                else {
                    continue;
                };
                if let Some(status) = approved.status.as_mut() {
                    status.certificate =
                        Some(ByteString(pki.sign(&request, lifetime).into_bytes()));
                }
                let _ = api.replace_status(&name, &pp, &approved).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

async fn admin_client(standin: &StandinHandle) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(&standin.kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

async fn csrs(admin: &kube::Client) -> Vec<CertificateSigningRequest> {
    Api::<CertificateSigningRequest>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("list csrs")
        .items
}

fn leaf(store: &CertStore) -> CertificateDer<'static> {
    store
        .current()
        .expect("read store")
        .expect("a current pair")
        .certs
        .remove(0)
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_then_rotation_swaps_the_certificate_the_client_presents() {
    let cancel = CancellationToken::new();
    let standin = Standin::start("127.0.0.1:0", StandinOptions::default())
        .await
        .expect("standin");
    let pki = Arc::new(Pki::new());
    let front = Front::start(&pki, standin.addr(), cancel.clone()).await;
    let admin = admin_client(&standin).await;
    spawn_approver(
        admin.clone(),
        pki.clone(),
        Arc::new(Mutex::new(vec![CLIENT_SIGNER])),
        Duration::from_secs(12),
        cancel.clone(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = dir.path().join("bootstrap-kubeconfig");
    let server = format!("https://{}", front.addr);
    std::fs::write(
        &bootstrap,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: b\n  context:\n    cluster: c\n    user: boot\ncurrent-context: b\nusers:\n- name: boot\n  user:\n    token: abcdef.0123456789abcdef\n",
            base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem)
        ),
    )
    .expect("bootstrap kubeconfig");
    let options = IdentityOptions {
        kubeconfig: dir.path().join("kubelet.conf"),
        bootstrap_kubeconfig: Some(bootstrap),
        cert_dir: dir.path().join("pki"),
        node_name: "node-a".into(),
        rotate: true,
    };
    let client = api_client(&options, &cancel).await.expect("bootstrap");

    // The pair, its symlink and the kubeconfig, as kubelet leaves them.
    let store = CertStore::new(&options.cert_dir, CLIENT_PREFIX);
    let target = std::fs::read_link(store.current_path()).expect("symlink");
    let target_name = target.display().to_string();
    assert!(
        target_name.starts_with("kubelet-client-2") && target_name.ends_with(".pem"),
        "{target_name}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(options.cert_dir.join(&target))
        .expect("pair")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !store.pending_key_path().exists(),
        "the pending key is gone"
    );
    let written = Kubeconfig::read_from(&options.kubeconfig).expect("kubeconfig");
    let cluster = store::current_cluster(&written, &options.kubeconfig).expect("cluster");
    assert_eq!(cluster.server.as_deref(), Some(server.as_str()));
    assert!(cluster.certificate_authority_data.is_some());
    let user = written.auth_infos[0].auth_info.as_ref().expect("user");
    let current = store.current_path().display().to_string();
    assert_eq!(user.client_certificate.as_deref(), Some(current.as_str()));
    assert_eq!(user.client_key.as_deref(), Some(current.as_str()));
    let requests = csrs(&admin).await;
    assert_eq!(requests.len(), 1);
    let bootstrap_csr = &requests[0];
    assert!(
        bootstrap_csr
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("node-csr-")),
        "{:?}",
        bootstrap_csr.metadata.name
    );
    assert_eq!(bootstrap_csr.spec.signer_name, CLIENT_SIGNER);
    assert_eq!(
        bootstrap_csr.spec.usages.as_deref(),
        Some(&["digital signature".to_owned(), "client auth".to_owned()][..])
    );
    let first = leaf(&store);
    assert_eq!(
        crate::server::tls::certificate_user(&first),
        Some((
            "system:node:node-a".to_owned(),
            vec!["system:nodes".to_owned()]
        ))
    );

    // The node's client presents the bootstrapped certificate.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        front.presented().last().cloned().flatten(),
        Some(first.clone())
    );

    // A second start finds the kubeconfig valid: no new request.
    Bootstrap {
        kubeconfig: options.kubeconfig.clone(),
        bootstrap_kubeconfig: dir.path().join("bootstrap-kubeconfig"),
        cert_dir: options.cert_dir.clone(),
        node_name: "node-a".into(),
        wait_timeout: Duration::from_secs(5),
    }
    .load_client_cert()
    .await
    .expect("valid kubeconfig");
    assert_eq!(csrs(&admin).await.len(), 1);

    // Rotation (at 70-90 % of 12 s): a csr-* request sent with the first certificate, the new
    // pair stored, and the same client presenting it on a new connection.
    let second = eventually("a rotated certificate", || {
        let current = leaf(&store);
        (current != first).then_some(current)
    })
    .await;
    let rotation_csr = csrs(&admin)
        .await
        .into_iter()
        .find(|c| c.metadata.name != bootstrap_csr.metadata.name)
        .expect("the rotation request");
    assert!(
        rotation_csr
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("csr-"))
    );
    assert_eq!(rotation_csr.spec.signer_name, CLIENT_SIGNER);
    let connections_before = front.presented().len();
    namespaces
        .list(&ListParams::default())
        .await
        .expect("list after rotation");
    let presented = front.presented();
    assert!(
        presented.len() > connections_before,
        "the connection made with the old certificate was closed; a new one was made"
    );
    let latest = presented
        .last()
        .cloned()
        .flatten()
        .expect("a client certificate");
    assert_ne!(latest, first, "the old certificate is no longer presented");
    assert!(latest == second || latest == leaf(&store));
    cancel.cancel();
}

async fn handshake(addr: SocketAddr, pki: &Pki) -> Result<CertificateDer<'static>, std::io::Error> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(pki.roots())
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let tls = connector.connect(name, tcp).await?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| std::io::Error::other("no server certificate"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_waits_for_approval_and_handshakes_wait_with_it() {
    let cancel = CancellationToken::new();
    let standin = Standin::start("127.0.0.1:0", StandinOptions::default())
        .await
        .expect("standin");
    let pki = Arc::new(Pki::new());
    let admin = admin_client(&standin).await;
    let signers = Arc::new(Mutex::new(Vec::new()));
    spawn_approver(
        admin.clone(),
        pki.clone(),
        signers.clone(),
        Duration::from_secs(3600),
        cancel.clone(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let options = IdentityOptions {
        kubeconfig: dir.path().join("kubelet.conf"),
        bootstrap_kubeconfig: None,
        cert_dir: dir.path().join("pki"),
        node_name: "node-a".into(),
        rotate: false,
    };
    let names = ["node-a", "localhost", "127.0.0.1"].map(String::from);
    let identity =
        serving_identity(&options, admin.clone(), &names, &cancel).expect("serving identity");
    let tls = crate::server::tls::server_config(&crate::server::tls::TlsSettings {
        cert_file: None,
        key_file: None,
        cert_dir: options.cert_dir.clone(),
        hostnames: names.to_vec(),
        client_ca_file: None,
        issued: Some(Arc::new(identity.clone())),
    })
    .expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });

    // Pending: a kubelet-serving request exists, and handshakes fail (no self-signed fallback).
    let serving = loop {
        let found = csrs(&admin)
            .await
            .into_iter()
            .find(|c| c.spec.signer_name == SERVING_SIGNER);
        if let Some(found) = found {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        serving.spec.usages.as_deref(),
        Some(&["digital signature".to_owned(), "server auth".to_owned()][..])
    );
    assert!(identity.current().is_none());
    assert!(
        handshake(addr, &pki).await.is_err(),
        "no certificate is served before approval"
    );
    assert!(
        !options.cert_dir.join("kubelet.crt").exists(),
        "no self-signed certificate"
    );

    // Approved and issued: the pair is stored and served.
    signers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(SERVING_SIGNER);
    eventually("the issued serving certificate", || identity.current()).await;
    let served = handshake(addr, &pki)
        .await
        .expect("handshake after approval");
    let store = CertStore::new(&options.cert_dir, SERVER_PREFIX);
    assert_eq!(served, leaf(&store));
    let link = std::fs::read_link(store.current_path()).expect("symlink");
    assert!(link.display().to_string().starts_with("kubelet-server-2"));
    let (_, parsed) = x509_parser::parse_x509_certificate(served.as_ref()).expect("x509");
    let san = parsed
        .subject_alternative_name()
        .expect("extension")
        .expect("alt names");
    use x509_parser::extensions::GeneralName;
    let names = &san.value.general_names;
    assert!(names.contains(&GeneralName::DNSName("node-a")), "{names:?}");
    assert!(
        names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])),
        "{names:?}"
    );
    cancel.cancel();
}
