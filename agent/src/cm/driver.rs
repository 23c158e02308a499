//! The cgroup driver (`cgroupDriver`): how cgroups are named. The agent and the runtime must agree;
//! where the runtime reports its driver (CRI `RuntimeConfig`: containerd 2.x, cri-o) a difference
//! from the configured one is a start-up error, not pods failing one by one.

use std::fmt;

use mk_cri::api;

use super::CgroupError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }

    /// The driver a runtime reports in CRI `RuntimeConfig`, if it reports one.
    pub fn from_runtime_config(response: &api::RuntimeConfigResponse) -> Option<Self> {
        let linux = response.linux.as_ref()?;
        match api::CgroupDriver::try_from(linux.cgroup_driver).ok()? {
            api::CgroupDriver::Systemd => Some(CgroupDriver::Systemd),
            api::CgroupDriver::Cgroupfs => Some(CgroupDriver::Cgroupfs),
        }
    }

    /// The configured driver checked against the runtime's (None: the runtime does not say, as
    /// containerd 1.x and the Docker adapter).
    pub fn reconcile(configured: Self, runtime: Option<Self>) -> Result<Self, CgroupError> {
        match runtime {
            Some(runtime) if runtime != configured => Err(CgroupError::DriverMismatch {
                configured: configured.as_str(),
                runtime: runtime.as_str(),
            }),
            _ => Ok(configured),
        }
    }
}

impl std::str::FromStr for CgroupDriver {
    type Err = CgroupError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "cgroupfs" | "" => Ok(CgroupDriver::Cgroupfs),
            "systemd" => Ok(CgroupDriver::Systemd),
            other => Err(CgroupError::UnknownDriver(other.to_string())),
        }
    }
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(driver: api::CgroupDriver) -> api::RuntimeConfigResponse {
        api::RuntimeConfigResponse {
            linux: Some(api::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }
    }

    #[test]
    fn the_runtime_driver_must_match_the_configured_one() {
        let systemd = CgroupDriver::from_runtime_config(&reported(api::CgroupDriver::Systemd));
        assert_eq!(systemd, Some(CgroupDriver::Systemd));
        let err = CgroupDriver::reconcile(CgroupDriver::Cgroupfs, systemd).expect_err("mismatch");
        assert_eq!(
            err.to_string(),
            "cgroupDriver is \"cgroupfs\" but the container runtime uses \"systemd\": set \
             cgroupDriver: systemd in the agent's configuration (or change the runtime's)"
        );
        assert_eq!(
            CgroupDriver::reconcile(CgroupDriver::Systemd, systemd).ok(),
            Some(CgroupDriver::Systemd)
        );
        assert_eq!(
            CgroupDriver::reconcile(CgroupDriver::Systemd, None).ok(),
            Some(CgroupDriver::Systemd)
        );
        let empty = api::RuntimeConfigResponse { linux: None };
        assert_eq!(CgroupDriver::from_runtime_config(&empty), None);
    }

    #[test]
    fn parses_the_configured_names() {
        assert_eq!(
            "systemd".parse::<CgroupDriver>().ok(),
            Some(CgroupDriver::Systemd)
        );
        assert_eq!(
            "cgroupfs".parse::<CgroupDriver>().ok(),
            Some(CgroupDriver::Cgroupfs)
        );
        assert!("cgroupfs2".parse::<CgroupDriver>().is_err());
    }
}
