//! What the container runtime tells the Ready condition, tracked as kubelet's `runtimeState` does:
//! a CRI `Status` call every few seconds; the runtime counts as down once no call has found it ready
//! for 30 s; RuntimeReady / NetworkReady false are reported with the runtime's reason and message.

use std::time::{Duration, Instant};

use mk_cri::{CriError, api};

/// kubelet's `maxWaitForContainerRuntime`.
pub const RUNTIME_SYNC_THRESHOLD: Duration = Duration::from_secs(30);
/// How often kubelet's `updateRuntimeUp` asks the runtime.
pub const RUNTIME_CHECK_PERIOD: Duration = Duration::from_secs(5);

const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";

/// The runtime's health as last observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeState {
    /// When the runtime last answered with RuntimeReady=true.
    last_sync: Option<Instant>,
    runtime_error: Option<String>,
    network_error: Option<String>,
}

/// Go's `%v` of a `*RuntimeCondition`: `NetworkReady=false reason:X message:Y`, or `<nil>`.
fn describe(condition: Option<&api::RuntimeCondition>) -> String {
    match condition {
        Some(c) => format!(
            "{}={} reason:{} message:{}",
            c.r#type, c.status, c.reason, c.message
        ),
        None => "<nil>".into(),
    }
}

impl RuntimeState {
    /// Records the outcome of one CRI `Status` call (`updateRuntimeUp`). A failed call changes
    /// nothing: the runtime goes "down" once the last good answer is older than the threshold.
    pub fn record(&mut self, result: &Result<api::StatusResponse, CriError>, now: Instant) {
        let status = match result {
            Ok(response) => response.status.clone().unwrap_or_default(),
            Err(e) => {
                tracing::debug!(error = %e, "container runtime status check failed");
                return;
            }
        };
        let find = |kind: &str| status.conditions.iter().find(|c| c.r#type == kind);
        let network = find(NETWORK_READY);
        self.network_error = match network {
            Some(c) if c.status => None,
            other => Some(format!(
                "container runtime network not ready: {}",
                describe(other)
            )),
        };
        match find(RUNTIME_READY) {
            Some(c) if c.status => {
                self.runtime_error = None;
                self.last_sync = Some(now);
            }
            other => {
                self.runtime_error =
                    Some(format!("container runtime not ready: {}", describe(other)));
            }
        }
    }

    /// The reasons the node is not ready, in kubelet's order: runtime sync, PLEG, runtime
    /// condition, network condition.
    pub fn ready_errors(&self, now: Instant, pleg: Result<(), String>) -> Vec<String> {
        let mut errors = Vec::new();
        match self.last_sync {
            None => errors.push("container runtime status check may not have completed yet".into()),
            Some(at) if now.saturating_duration_since(at) >= RUNTIME_SYNC_THRESHOLD => {
                errors.push("container runtime is down".into());
            }
            Some(_) => {}
        }
        if let Err(message) = pleg {
            errors.push(format!("PLEG is not healthy: {message}"));
        }
        errors.extend(self.runtime_error.clone());
        errors.extend(self.network_error.clone());
        errors
    }
}

/// `utilversion.ParseSemantic`, falling back to `ParseGeneric`, then printed: how kubelet spells
/// the runtime version (`v1.7.24` → `1.7.24`, `1.6.20~ds1` → `1.6.20`).
pub fn normalize_version(raw: &str) -> Option<String> {
    let text = raw.trim_start();
    let text = text.strip_prefix('v').unwrap_or(text);
    let numbers_end = text
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(text.len(), |(i, _)| i);
    let (numbers, extra) = text.split_at(numbers_end);
    // `[0-9]+(\.[0-9]+)*`: a trailing dot belongs to the extra part.
    let (numbers, extra) = match numbers.strip_suffix('.') {
        Some(n) => (n, &text[n.len()..]),
        None => (numbers, extra),
    };
    if numbers.is_empty() || numbers.split('.').any(str::is_empty) {
        return None;
    }
    let components: Vec<&str> = numbers.split('.').collect();
    let parse = |semver: bool| -> Option<Vec<u64>> {
        components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if (i == 0 || semver) && c.starts_with('0') && *c != "0" {
                    return None;
                }
                c.parse::<u64>().ok()
            })
            .collect()
    };
    let joined = |nums: Vec<u64>| {
        nums.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    };
    if components.len() == 3
        && let Some(nums) = parse(true)
        && let Some((pre, build)) = semver_extra(extra)
    {
        let mut out = joined(nums);
        if !pre.is_empty() {
            out.push('-');
            out.push_str(pre);
        }
        if !build.is_empty() {
            out.push('+');
            out.push_str(build);
        }
        return Some(out);
    }
    if components.len() >= 2 {
        return parse(false).map(joined);
    }
    None
}

/// `^(?:-(ids))?(?:\+(ids))?\s*$` with ids = `[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*`.
fn semver_extra(extra: &str) -> Option<(&str, &str)> {
    let extra = extra.trim_end();
    let valid = |ids: &str| {
        ids.split('.')
            .all(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    let (pre, build) = match extra.split_once('+') {
        Some((pre, build)) => (pre, Some(build)),
        None => (extra, None),
    };
    let pre = if pre.is_empty() {
        ""
    } else {
        let p = pre.strip_prefix('-')?;
        if !valid(p) {
            return None;
        }
        p
    };
    let build = match build {
        Some(b) if valid(b) => b,
        Some(_) => return None,
        None => "",
    };
    Some((pre, build))
}

/// `nodeInfo.containerRuntimeVersion`: `<runtime name>://<version>`.
pub fn container_runtime_version(v: &api::VersionResponse) -> String {
    let version =
        normalize_version(&v.runtime_version).unwrap_or_else(|| v.runtime_version.clone());
    format!("{}://{}", v.runtime_name, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &str, status: bool, reason: &str, message: &str) -> api::RuntimeCondition {
        api::RuntimeCondition {
            r#type: kind.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn response(conditions: Vec<api::RuntimeCondition>) -> Result<api::StatusResponse, CriError> {
        Ok(api::StatusResponse {
            status: Some(api::RuntimeStatus { conditions }),
            ..Default::default()
        })
    }

    fn down() -> Result<api::StatusResponse, CriError> {
        Err(CriError::Unavailable {
            op: "status",
            message: "connection refused".into(),
        })
    }

    #[test]
    fn ready_when_runtime_and_network_are_ready() {
        let now = Instant::now();
        let mut state = RuntimeState::default();
        assert_eq!(
            state.ready_errors(now, Ok(())),
            vec!["container runtime status check may not have completed yet"]
        );
        state.record(
            &response(vec![
                condition("RuntimeReady", true, "", ""),
                condition("NetworkReady", true, "", ""),
            ]),
            now,
        );
        assert!(state.ready_errors(now, Ok(())).is_empty());
    }

    #[test]
    fn network_not_ready_names_reason_and_message() {
        let now = Instant::now();
        let mut state = RuntimeState::default();
        state.record(
            &response(vec![
                condition("RuntimeReady", true, "", ""),
                condition(
                    "NetworkReady",
                    false,
                    "NetworkPluginNotReady",
                    "Network plugin returns error: cni plugin not initialized",
                ),
            ]),
            now,
        );
        assert_eq!(
            state.ready_errors(now, Ok(())),
            vec![
                "container runtime network not ready: NetworkReady=false \
                 reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"
            ]
        );
    }

    #[test]
    fn runtime_is_down_after_the_threshold() {
        let start = Instant::now();
        let mut state = RuntimeState::default();
        state.record(
            &response(vec![
                condition("RuntimeReady", true, "", ""),
                condition("NetworkReady", true, "", ""),
            ]),
            start,
        );
        state.record(&down(), start + Duration::from_secs(5));
        assert!(
            state
                .ready_errors(start + Duration::from_secs(29), Ok(()))
                .is_empty()
        );
        assert_eq!(
            state.ready_errors(start + Duration::from_secs(30), Ok(())),
            vec!["container runtime is down"]
        );
        // A runtime that answers but is not ready is down too, with its condition.
        state.record(&response(vec![]), start + Duration::from_secs(31));
        assert_eq!(
            state.ready_errors(start + Duration::from_secs(31), Ok(())),
            vec![
                "container runtime is down",
                "container runtime not ready: <nil>",
                "container runtime network not ready: <nil>"
            ]
        );
    }

    #[test]
    fn pleg_unhealthy_is_reported() {
        let now = Instant::now();
        let mut state = RuntimeState::default();
        state.record(
            &response(vec![
                condition("RuntimeReady", true, "", ""),
                condition("NetworkReady", true, "", ""),
            ]),
            now,
        );
        assert_eq!(
            state.ready_errors(
                now,
                Err("pleg was last seen active 200s ago; threshold is 180s".into())
            ),
            vec!["PLEG is not healthy: pleg was last seen active 200s ago; threshold is 180s"]
        );
    }

    #[test]
    fn runtime_versions_are_spelled_like_kubelet() {
        for (raw, expected) in [
            ("v1.7.24", Some("1.7.24")),
            ("1.6.20~ds1", Some("1.6.20")),
            ("1.7.0-rc.1", Some("1.7.0-rc.1")),
            ("1.28.1+build.5", Some("1.28.1+build.5")),
            ("0.1.0", Some("0.1.0")),
            ("1.2", Some("1.2")),
            ("1.2.3.4", Some("1.2.3.4")),
            ("1.02.3", Some("1.2.3")),
            ("1", None),
            ("abc", None),
            ("", None),
        ] {
            assert_eq!(normalize_version(raw).as_deref(), expected, "{raw:?}");
        }
        let v = api::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20~ds1".into(),
            runtime_api_version: "v1".into(),
        };
        assert_eq!(container_runtime_version(&v), "containerd://1.6.20");
        let odd = api::VersionResponse {
            runtime_name: "fake".into(),
            runtime_version: "dev".into(),
            ..v
        };
        assert_eq!(container_runtime_version(&odd), "fake://dev");
    }
}
