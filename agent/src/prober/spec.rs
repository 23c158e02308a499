//! The pure parts of a probe's definition: kubelet's defaults, the handler, port-by-name
//! resolution, `$(VAR)` expansion of exec commands and the User-Agent.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, HTTPGetAction, Pod, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ProbeError;

/// kubelet's (API defaulting's) probe defaults.
pub const DEFAULT_PERIOD_SECONDS: i32 = 10;
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
pub const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
pub const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

/// The three kinds of container probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeType {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeType {
    pub const ALL: [ProbeType; 3] = [
        ProbeType::Liveness,
        ProbeType::Readiness,
        ProbeType::Startup,
    ];

    /// kubelet's spelling, used in event messages and the `probe_type` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeType::Liveness => "Liveness",
            ProbeType::Readiness => "Readiness",
            ProbeType::Startup => "Startup",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ProbeType::Liveness => 0,
            ProbeType::Readiness => 1,
            ProbeType::Startup => 2,
        }
    }

    /// The container's probe of this type, if it has one.
    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeType::Liveness => container.liveness_probe.as_ref(),
            ProbeType::Readiness => container.readiness_probe.as_ref(),
            ProbeType::Startup => container.startup_probe.as_ref(),
        }
    }
}

impl std::fmt::Display for ProbeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a probe checks the container.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    Exec {
        command: Vec<String>,
    },
    HttpGet(HTTPGetAction),
    TcpSocket(TCPSocketAction),
    Grpc {
        port: i32,
        service: String,
    },
    /// No handler set (the API server rejects such pods; a static pod may still have one).
    Missing,
}

/// A probe with kubelet's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub initial_delay_seconds: i64,
    /// The probe-level `terminationGracePeriodSeconds` (liveness and startup kills).
    pub termination_grace_period_seconds: Option<i64>,
    pub handler: Handler,
}

/// A positive count: unset or zero takes the default (as API defaulting does), negative is 1.
fn positive(value: Option<i32>, default: i32) -> u32 {
    match value {
        None | Some(0) => u32::try_from(default).unwrap_or(1),
        Some(v) => u32::try_from(v).unwrap_or(0).max(1),
    }
}

impl ProbeSpec {
    pub fn from_probe(probe: &Probe) -> Self {
        // kubelet checks the handlers in this order; validation allows only one.
        let handler = if let Some(exec) = &probe.exec {
            Handler::Exec {
                command: exec.command.clone().unwrap_or_default(),
            }
        } else if let Some(http) = &probe.http_get {
            Handler::HttpGet(http.clone())
        } else if let Some(tcp) = &probe.tcp_socket {
            Handler::TcpSocket(tcp.clone())
        } else if let Some(grpc) = &probe.grpc {
            Handler::Grpc {
                port: grpc.port,
                service: grpc.service.clone().unwrap_or_default(),
            }
        } else {
            Handler::Missing
        };
        Self {
            period: Duration::from_secs(u64::from(positive(
                probe.period_seconds,
                DEFAULT_PERIOD_SECONDS,
            ))),
            timeout: Duration::from_secs(u64::from(positive(
                probe.timeout_seconds,
                DEFAULT_TIMEOUT_SECONDS,
            ))),
            success_threshold: positive(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            failure_threshold: positive(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
            initial_delay_seconds: i64::from(probe.initial_delay_seconds.unwrap_or(0).max(0)),
            termination_grace_period_seconds: probe.termination_grace_period_seconds,
            handler,
        }
    }
}

/// The containers whose probes kubelet runs: the app containers and the restartable init
/// containers (sidecars).
pub fn probed_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    let app = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    app.iter().chain(
        init.iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always")),
    )
}

/// kubelet's `ResolveContainerPort`: a number, or a name looked up in the container's ports
/// (falling back to a number spelt as a string); it must be in 1..=65535.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, ProbeError> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => {
            let named = container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| i64::from(p.container_port));
            match named {
                Some(n) => n,
                None => name
                    .parse::<i64>()
                    .map_err(|_| ProbeError::PortNotFound(name.clone()))?,
            }
        }
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(ProbeError::InvalidPort(number))
}

/// A probe port given as a plain number (gRPC): 1..=65535.
pub fn number_port(port: i32) -> Result<u16, ProbeError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(ProbeError::InvalidPort(i64::from(port)))
}

/// kubelet's `ExpandContainerCommandOnlyStatic`: `$(NAME)` in each word is replaced by the
/// container's env var `NAME` (its literal value; empty for `valueFrom`), unknown references are
/// kept as they are, and `$$` is an escaped `$`.
pub fn expand_command(command: &[String], env: &[EnvVar]) -> Vec<String> {
    let vars: HashMap<&str, &str> = env
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
        .collect();
    command.iter().map(|word| expand(word, &vars)).collect()
}

fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if after.is_empty() {
            // A trailing `$` stays.
            out.push('$');
            rest = after;
            break;
        }
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    // Incomplete reference: kept, and scanning goes on after `$(`.
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// kubelet's User-Agent for probes: `kube-probe/<major>.<minor>` of the kubelet version
/// (`v1.34.0+mini.0.1.0` gives `kube-probe/1.34`).
pub fn user_agent(kubelet_version: &str) -> String {
    let mut parts = kubelet_version
        .trim_start_matches('v')
        .split(['.', '+', '-']);
    let major = parts.next().unwrap_or_default();
    let minor = parts.next().unwrap_or_default();
    format!("kube-probe/{major}.{minor}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, GRPCAction};

    fn container_with_ports(ports: &[(&str, i32)]) -> Container {
        Container {
            name: "app".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| ContainerPort {
                        name: Some((*name).into()),
                        container_port: *port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_kubelet() {
        let spec = ProbeSpec::from_probe(&Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                host: None,
            }),
            ..Default::default()
        });
        assert_eq!(spec.period, Duration::from_secs(10));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert_eq!(spec.success_threshold, 1);
        assert_eq!(spec.failure_threshold, 3);
        assert_eq!(spec.initial_delay_seconds, 0);
        assert_eq!(spec.termination_grace_period_seconds, None);
        assert!(matches!(spec.handler, Handler::TcpSocket(_)));
    }

    #[test]
    fn explicit_values_and_zeroes() {
        let table = [
            // (period, timeout, success, failure, delay) -> (period, timeout, success, failure, delay)
            (
                (Some(5), Some(3), Some(2), Some(7), Some(4)),
                (5, 3, 2, 7, 4),
            ),
            (
                (Some(0), Some(0), Some(0), Some(0), Some(0)),
                (10, 1, 1, 3, 0),
            ),
            (
                (Some(-1), Some(-5), Some(-2), Some(-3), Some(-9)),
                (1, 1, 1, 1, 0),
            ),
        ];
        for ((period, timeout, success, failure, delay), want) in table {
            let spec = ProbeSpec::from_probe(&Probe {
                period_seconds: period,
                timeout_seconds: timeout,
                success_threshold: success,
                failure_threshold: failure,
                initial_delay_seconds: delay,
                termination_grace_period_seconds: Some(5),
                exec: Some(ExecAction {
                    command: Some(vec!["true".into()]),
                }),
                ..Default::default()
            });
            let got = (
                spec.period.as_secs(),
                spec.timeout.as_secs(),
                spec.success_threshold,
                spec.failure_threshold,
                spec.initial_delay_seconds,
            );
            assert_eq!(
                got,
                (want.0, want.1, want.2, want.3, want.4),
                "{period:?} {timeout:?}"
            );
            assert_eq!(spec.termination_grace_period_seconds, Some(5));
        }
    }

    #[test]
    fn handlers() {
        let grpc = ProbeSpec::from_probe(&Probe {
            grpc: Some(GRPCAction {
                port: 9090,
                service: Some("svc".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            grpc.handler,
            Handler::Grpc {
                port: 9090,
                service: "svc".into()
            }
        );
        let exec = ProbeSpec::from_probe(&Probe {
            exec: Some(ExecAction { command: None }),
            ..Default::default()
        });
        assert_eq!(exec.handler, Handler::Exec { command: vec![] });
        assert_eq!(
            ProbeSpec::from_probe(&Probe::default()).handler,
            Handler::Missing
        );
    }

    #[test]
    fn ports_by_number_and_name() {
        let c = container_with_ports(&[("http", 8080), ("metrics", 9100), ("bad", 70000)]);
        let table: [(IntOrString, Result<u16, String>); 9] = [
            (IntOrString::Int(80), Ok(80)),
            (IntOrString::Int(65535), Ok(65535)),
            (IntOrString::String("http".into()), Ok(8080)),
            (IntOrString::String("metrics".into()), Ok(9100)),
            (IntOrString::String("8443".into()), Ok(8443)),
            (IntOrString::Int(0), Err("invalid port number: 0".into())),
            (
                IntOrString::Int(65536),
                Err("invalid port number: 65536".into()),
            ),
            (
                IntOrString::String("grpc".into()),
                Err("port \"grpc\" not found in the container's ports".into()),
            ),
            (
                IntOrString::String("bad".into()),
                Err("invalid port number: 70000".into()),
            ),
        ];
        for (port, want) in table {
            let got = resolve_port(&port, &c).map_err(|e| e.to_string());
            assert_eq!(got, want, "{port:?}");
        }
        assert_eq!(number_port(50051).ok(), Some(50051));
        assert!(number_port(-1).is_err());
    }

    #[test]
    fn command_expansion_is_kubelets() {
        let env = vec![
            EnvVar {
                name: "FILE".into(),
                value: Some("/tmp/healthy".into()),
                value_from: None,
            },
            EnvVar {
                name: "FROM_SECRET".into(),
                value: None,
                value_from: Some(Default::default()),
            },
        ];
        let table = [
            ("cat $(FILE)", "cat /tmp/healthy"),
            ("$(FILE)$(FILE)", "/tmp/healthy/tmp/healthy"),
            ("x$(MISSING)y", "x$(MISSING)y"),
            ("[$(FROM_SECRET)]", "[]"),
            ("$$(FILE)", "$(FILE)"),
            ("a$$b", "a$b"),
            ("cost $5", "cost $5"),
            ("open $(FILE", "open $(FILE"),
            ("end$", "end$"),
            ("no vars", "no vars"),
            ("", ""),
        ];
        for (input, want) in table {
            assert_eq!(
                expand_command(&[input.to_string()], &env),
                vec![want.to_string()],
                "{input:?}"
            );
        }
    }

    #[test]
    fn user_agent_uses_major_and_minor() {
        assert_eq!(user_agent("v1.34.0+mini.0.1.0"), "kube-probe/1.34");
        assert_eq!(user_agent("v1.30.2"), "kube-probe/1.30");
        assert!(user_agent(crate::version::KUBELET_VERSION).starts_with("kube-probe/1."));
    }

    #[test]
    fn restartable_init_containers_are_probed() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "initContainers": [
                    {"name": "setup"},
                    {"name": "sidecar", "restartPolicy": "Always"}
                ],
                "containers": [{"name": "app"}]
            }
        }))
        .expect("pod");
        let names: Vec<&str> = probed_containers(&pod).map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "sidecar"]);
    }
}
