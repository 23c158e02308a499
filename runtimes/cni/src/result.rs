//! The result of ADD (spec 0.3.0 and later: `interfaces`, `ips`, `routes`, `dns`), and the pod
//! IPs in it.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

/// An ADD result as a plugin printed it: the typed fields a runtime reads, and the whole JSON,
/// which goes on to the next plugin as `prevResult` and into the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    raw: Value,
}

/// One interface the plugins created or configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The netns path for an interface inside the container; empty for host-side interfaces
    /// (a bridge, a veth's host end).
    #[serde(default)]
    pub sandbox: String,
}

/// One address assignment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// CIDR notation: `10.22.0.5/24`.
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into the result's `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without its prefix length; None when it is not an IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        let addr = self
            .address
            .split_once('/')
            .map_or(self.address.as_str(), |(a, _)| a);
        addr.parse().ok()
    }
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
}

impl CniResult {
    /// Reads a result from the JSON a plugin printed (or a cache holds).
    pub fn from_value(raw: Value) -> Result<Self, String> {
        if !raw.is_object() {
            return Err(format!("not a JSON object: {raw}"));
        }
        let wire = Wire::deserialize(&raw).map_err(|e| e.to_string())?;
        if let Some(bad) = wire.ips.iter().find(|ip| ip.ip().is_none()) {
            return Err(format!("{:?} is not an IP address", bad.address));
        }
        Ok(Self {
            cni_version: wire.cni_version,
            interfaces: wire.interfaces,
            ips: wire.ips,
            raw,
        })
    }

    /// Reads a result from a plugin's stdout.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, String> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_value(raw)
    }

    /// The result as JSON.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The pod's IPs: the addresses of the interfaces inside the container (all addresses when
    /// the result does not say which interface they are on), IPv4 first, without duplicates.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let in_sandbox = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|iface| !iface.sandbox.is_empty())
        };
        let mut chosen: Vec<&IpConfig> = self.ips.iter().filter(in_sandbox).collect();
        if chosen.is_empty() {
            chosen = self.ips.iter().collect();
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in chosen.into_iter().filter_map(IpConfig::ip) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        ips.sort_by_key(IpAddr::is_ipv6); // stable: keeps the plugins' order within a family
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_are_the_sandbox_interfaces_v4_first() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"{"cniVersion":"1.0.0",
                    "interfaces":[{"name":"cni0","mac":"aa"},{"name":"veth1"},{"name":"eth0","sandbox":"/proc/1/ns/net"}],
                    "ips":[{"address":"fd00::5/64","interface":2},{"address":"10.22.0.5/24","gateway":"10.22.0.1","interface":2},
                           {"address":"10.22.0.1/24","interface":0}]}"#,
                &["10.22.0.5", "fd00::5"],
            ),
            // No interface indexes: every address counts.
            (
                r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.0.9/16"},{"version":"4","address":"10.1.0.9/16"}]}"#,
                &["10.1.0.9"],
            ),
            (r#"{"cniVersion":"1.0.0"}"#, &[]),
        ];
        for (json, want) in cases {
            let result = CniResult::from_slice(json.as_bytes()).expect(json);
            let got: Vec<String> = result.pod_ips().iter().map(ToString::to_string).collect();
            assert_eq!(got, *want, "{json}");
        }
    }

    #[test]
    fn invalid_results_say_why() {
        for (json, want) in [
            ("nope", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"ips":[{"address":"banana/24"}]}"#, "not an IP address"),
            (r#"{"ips":[{"gateway":"1.2.3.4"}]}"#, "address"),
            (r#"{"interfaces":[{"mac":"x"}]}"#, "name"),
        ] {
            let err = CniResult::from_slice(json.as_bytes()).expect_err(json);
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
