//! Step two of the pipeline: command-line flags (kubelet's names) applied onto the loaded
//! configuration. A flag set wins over the file; nothing is checked here (step three checks
//! the outcome, naming the field the flag sets).

use std::path::PathBuf;

use super::KubeletConfiguration;

/// The flags that set KubeletConfiguration fields; unset ones leave the file's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct FlagOverrides {
    /// Folder of static pod manifests (staticPodPath).
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// CRI endpoint, e.g. unix:///run/containerd/containerd.sock (containerRuntimeEndpoint).
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// Read-only HTTP port (0 = off) (readOnlyPort).
    #[arg(long)]
    pub read_only_port: Option<u16>,
    /// healthz port (0 = off) (healthzPort).
    #[arg(long)]
    pub healthz_port: Option<u16>,
    /// healthz bind address (healthzBindAddress).
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// Address the kubelet and read-only ports bind (address).
    #[arg(long)]
    pub address: Option<String>,
    /// The kubelet port: TLS, for logs, exec, attach, port-forward (0 = off) (port).
    #[arg(long)]
    pub port: Option<u16>,
    /// The kubelet port's serving certificate (tlsCertFile); without it a self-signed one is made
    /// in --cert-dir.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file (tlsPrivateKeyFile).
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Renew the client certificate before it expires (rotateCertificates).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub rotate_certificates: Option<bool>,
    /// Client certificates signed by this CA authenticate (authentication.x509.clientCAFile).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Requests without credentials are system:anonymous (authentication.anonymous.enabled).
    #[arg(long)]
    pub anonymous_auth: Option<bool>,
    /// Bearer tokens are checked with TokenReviews (authentication.webhook.enabled).
    #[arg(long)]
    pub authentication_token_webhook: Option<bool>,
    /// Webhook (SubjectAccessReviews) or AlwaysAllow (authorization.mode).
    #[arg(long)]
    pub authorization_mode: Option<String>,
    /// Maximum number of pods (maxPods).
    #[arg(long)]
    pub max_pods: Option<u32>,
    /// Cgroup root for pods (cgroupRoot).
    #[arg(long)]
    pub cgroup_root: Option<String>,
    /// cgroupfs or systemd (cgroupDriver).
    #[arg(long)]
    pub cgroup_driver: Option<String>,
    /// Make the QoS and pod cgroups (cgroupsPerQOS).
    #[arg(long = "cgroups-per-qos")]
    pub cgroups_per_qos: Option<bool>,
    /// What node allocatable is enforced on: pods or none (enforceNodeAllocatable).
    #[arg(long, value_delimiter = ',')]
    pub enforce_node_allocatable: Option<Vec<String>>,
}

impl FlagOverrides {
    /// Sets every field whose flag is given.
    pub fn apply(&self, config: &mut KubeletConfiguration) {
        fn set<T: Clone>(flag: &Option<T>, field: &mut T) {
            if let Some(v) = flag {
                *field = v.clone();
            }
        }
        if let Some(p) = &self.pod_manifest_path {
            config.static_pod_path = Some(p.clone());
        }
        set(
            &self.container_runtime_endpoint,
            &mut config.container_runtime_endpoint,
        );
        set(&self.read_only_port, &mut config.read_only_port);
        set(&self.healthz_port, &mut config.healthz_port);
        set(&self.healthz_bind_address, &mut config.healthz_bind_address);
        set(&self.address, &mut config.address);
        set(&self.port, &mut config.port);
        if let Some(f) = &self.tls_cert_file {
            config.tls_cert_file = Some(f.clone());
        }
        if let Some(f) = &self.tls_private_key_file {
            config.tls_private_key_file = Some(f.clone());
        }
        set(&self.rotate_certificates, &mut config.rotate_certificates);
        if let Some(ca) = &self.client_ca_file {
            config.authentication.x509.client_ca_file = Some(ca.clone());
        }
        set(
            &self.anonymous_auth,
            &mut config.authentication.anonymous.enabled,
        );
        set(
            &self.authentication_token_webhook,
            &mut config.authentication.webhook.enabled,
        );
        set(&self.authorization_mode, &mut config.authorization.mode);
        set(&self.max_pods, &mut config.max_pods);
        set(&self.cgroup_root, &mut config.cgroup_root);
        set(&self.cgroup_driver, &mut config.cgroup_driver);
        set(&self.cgroups_per_qos, &mut config.cgroups_per_qos);
        if let Some(options) = &self.enforce_node_allocatable {
            // `--enforce-node-allocatable=""` is kubelet's way to say none.
            config.enforce_node_allocatable =
                options.iter().filter(|o| !o.is_empty()).cloned().collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load;

    const FILE: &str = "staticPodPath: /file/manifests\nmaxPods: 10\nport: 10250\n\
                        authorization: {mode: AlwaysAllow}\nauthentication: {anonymous: {enabled: true}}\n\
                        cgroupDriver: systemd\nreadOnlyPort: 10255\n";

    fn resolved(flags: FlagOverrides) -> KubeletConfiguration {
        load::parse(FILE, Path::new("kubelet.yaml"))
            .expect("parses")
            .finish(&flags)
            .expect("valid")
            .config
    }

    #[test]
    fn a_flag_wins_over_the_file_and_an_absent_one_keeps_it() {
        let file = resolved(FlagOverrides::default());
        assert_eq!(file.max_pods, 10);
        assert_eq!(file.cgroup_driver, "systemd");
        type Check = fn(&KubeletConfiguration) -> bool;
        let cases: Vec<(FlagOverrides, Check)> = vec![
            (
                FlagOverrides {
                    pod_manifest_path: Some("/flag".into()),
                    ..Default::default()
                },
                |c| c.static_pod_path.as_deref() == Some(Path::new("/flag")),
            ),
            (
                FlagOverrides {
                    max_pods: Some(3),
                    ..Default::default()
                },
                |c| c.max_pods == 3,
            ),
            (
                FlagOverrides {
                    port: Some(0),
                    ..Default::default()
                },
                |c| c.port == 0 && c.read_only_port == 10255,
            ),
            (
                FlagOverrides {
                    read_only_port: Some(0),
                    ..Default::default()
                },
                |c| c.read_only_port == 0,
            ),
            (
                FlagOverrides {
                    authorization_mode: Some("Webhook".into()),
                    ..Default::default()
                },
                |c| c.authorization.mode == "Webhook",
            ),
            (
                FlagOverrides {
                    anonymous_auth: Some(false),
                    ..Default::default()
                },
                |c| !c.authentication.anonymous.enabled,
            ),
            (
                FlagOverrides {
                    client_ca_file: Some("/ca.crt".into()),
                    ..Default::default()
                },
                |c| c.authentication.x509.client_ca_file.as_deref() == Some(Path::new("/ca.crt")),
            ),
            (
                FlagOverrides {
                    cgroup_driver: Some("cgroupfs".into()),
                    ..Default::default()
                },
                |c| c.cgroup_driver == "cgroupfs",
            ),
            (
                FlagOverrides {
                    enforce_node_allocatable: Some(vec![String::new()]),
                    ..Default::default()
                },
                |c| c.enforce_node_allocatable.is_empty(),
            ),
            (
                FlagOverrides {
                    container_runtime_endpoint: Some("unix:///run/crio/crio.sock".into()),
                    ..Default::default()
                },
                |c| c.container_runtime_endpoint == "unix:///run/crio/crio.sock",
            ),
        ];
        for (flags, check) in cases {
            let c = resolved(flags.clone());
            assert!(check(&c), "{flags:?} -> {c:?}");
            // Everything the flag does not name is the file's.
            assert_eq!(
                c.cgroup_driver == "systemd",
                flags.cgroup_driver.is_none(),
                "{flags:?}"
            );
        }
    }

    #[test]
    fn flag_values_are_validated_with_the_file_and_name_the_field() {
        let flags = FlagOverrides {
            max_pods: Some(0),
            authorization_mode: Some("RBAC".into()),
            container_runtime_endpoint: Some("tcp://x:1".into()),
            tls_cert_file: Some("/x.crt".into()),
            ..Default::default()
        };
        let err = load::parse(FILE, Path::new("kubelet.yaml"))
            .expect("parses")
            .finish(&flags)
            .expect_err("invalid flags");
        let mut fields: Vec<String> = err.field_errors().into_iter().map(|e| e.field).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "authorization.mode",
                "containerRuntimeEndpoint",
                "maxPods",
                "tlsPrivateKeyFile"
            ]
        );
    }

    #[test]
    fn clap_reads_kubelets_flag_names() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flags: FlagOverrides,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "mini-kubelet",
            "--max-pods=5",
            "--cgroups-per-qos=false",
            "--enforce-node-allocatable=pods,none",
            "--rotate-certificates",
        ])
        .expect("flags");
        assert_eq!(cli.flags.max_pods, Some(5));
        assert_eq!(cli.flags.cgroups_per_qos, Some(false));
        assert_eq!(
            cli.flags.enforce_node_allocatable,
            Some(vec!["pods".to_string(), "none".to_string()])
        );
        assert_eq!(cli.flags.rotate_certificates, Some(true));
    }
}
