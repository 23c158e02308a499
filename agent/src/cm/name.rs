//! Cgroup names as kubelet's `CgroupName`: a list of components (`["kubepods", "burstable",
//! "pod<uid>"]`) written out by the driver — as a path for `cgroupfs`
//! (`/kubepods/burstable/pod<uid>`), as a slice for `systemd` (`kubepods-burstable-pod<uid>.slice`,
//! whose directory is `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`).

use super::driver::CgroupDriver;

/// A cgroup, by its components below the root of the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupName(Vec<String>);

impl CgroupName {
    /// The root of the hierarchy.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// `cgroupRoot` as configured: a path for `cgroupfs` (`/`, `/custom/root`), a slice name for
    /// `systemd` (`/`, `custom.slice` or `/custom.slice/custom-root.slice`).
    pub fn parse(text: &str, driver: CgroupDriver) -> Self {
        let text = text.trim();
        match driver {
            CgroupDriver::Cgroupfs => Self(
                text.split('/')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            CgroupDriver::Systemd => {
                // The last slice names every ancestor: `a-b.slice` is `a`, `b`.
                let leaf = text.rsplit('/').find(|c| !c.is_empty()).unwrap_or_default();
                let Some(stem) = leaf.strip_suffix(".slice") else {
                    return Self::root();
                };
                if stem == "-" || stem.is_empty() {
                    return Self::root();
                }
                Self(stem.split('-').map(unescape_systemd).collect())
            }
        }
    }

    /// This name with one more component.
    pub fn child(&self, component: impl Into<String>) -> Self {
        let mut components = self.0.clone();
        components.push(component.into());
        Self(components)
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The name the runtime gets as a cgroup parent (kubelet's `ToCgroupfs` / `ToSystemd`).
    pub fn to_driver_name(&self, driver: CgroupDriver) -> String {
        match driver {
            CgroupDriver::Cgroupfs => self.to_cgroupfs(),
            CgroupDriver::Systemd => self.to_systemd(),
        }
    }

    /// The directory below a hierarchy's mount point (`/kubepods/burstable/pod<uid>`, or the
    /// expanded slices for `systemd`).
    pub fn to_dir(&self, driver: CgroupDriver) -> String {
        match driver {
            CgroupDriver::Cgroupfs => self.to_cgroupfs(),
            CgroupDriver::Systemd => {
                if self.is_root() {
                    return "/".into();
                }
                let mut path = String::new();
                for depth in 1..=self.0.len() {
                    path.push('/');
                    path.push_str(&Self(self.0[..depth].to_vec()).to_systemd());
                }
                path
            }
        }
    }

    fn to_cgroupfs(&self) -> String {
        format!("/{}", self.0.join("/"))
    }

    fn to_systemd(&self) -> String {
        if self.is_root() {
            return "/".into();
        }
        let escaped: Vec<String> = self.0.iter().map(|c| escape_systemd(c)).collect();
        format!("{}.slice", escaped.join("-"))
    }
}

/// systemd reads `-` in a slice name as a level: kubelet writes a component's dashes as `_`.
fn escape_systemd(component: &str) -> String {
    component.replace('-', "_")
}

fn unescape_systemd(component: &str) -> String {
    component.replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_name() -> CgroupName {
        CgroupName::root()
            .child("kubepods")
            .child("burstable")
            .child("pod6f1c-22")
    }

    #[test]
    fn cgroupfs_names_are_paths() {
        let name = pod_name();
        assert_eq!(
            name.to_driver_name(CgroupDriver::Cgroupfs),
            "/kubepods/burstable/pod6f1c-22"
        );
        assert_eq!(
            name.to_dir(CgroupDriver::Cgroupfs),
            "/kubepods/burstable/pod6f1c-22"
        );
        assert_eq!(CgroupName::root().to_dir(CgroupDriver::Cgroupfs), "/");
    }

    #[test]
    fn systemd_names_are_slices_with_escaped_dashes() {
        let name = pod_name();
        assert_eq!(
            name.to_driver_name(CgroupDriver::Systemd),
            "kubepods-burstable-pod6f1c_22.slice"
        );
        assert_eq!(
            name.to_dir(CgroupDriver::Systemd),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c_22.slice"
        );
        assert_eq!(
            CgroupName::root().to_driver_name(CgroupDriver::Systemd),
            "/"
        );
    }

    #[test]
    fn cgroup_root_parses_per_driver() {
        let fs = CgroupName::parse("/custom/root/", CgroupDriver::Cgroupfs);
        assert_eq!(fs.components(), ["custom", "root"]);
        assert!(CgroupName::parse("/", CgroupDriver::Cgroupfs).is_root());
        let sd = CgroupName::parse("/custom.slice/custom-my_root.slice", CgroupDriver::Systemd);
        assert_eq!(sd.components(), ["custom", "my-root"]);
        assert_eq!(
            sd.child("kubepods").to_dir(CgroupDriver::Systemd),
            "/custom.slice/custom-my_root.slice/custom-my_root-kubepods.slice"
        );
        assert!(CgroupName::parse("/", CgroupDriver::Systemd).is_root());
        assert!(CgroupName::parse("-.slice", CgroupDriver::Systemd).is_root());
    }
}
