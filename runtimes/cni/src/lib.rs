//! A small CNI runtime library: what libcni does for kubelet, containerd and cri-dockerd.
//!
//! * **Config** ([`load_default_network`]): the default network of a config directory is the
//!   first file by name among `*.conflist`, `*.conf` and `*.json` that is a valid network
//!   config; a single-plugin `.conf` / `.json` is wrapped into a list of one. Invalid files are
//!   skipped; when none is valid, [`ConfigError::NoConfig`] names each file and why.
//!   `cniVersion` 0.3.0 to 1.1.0 are supported.
//! * **ADD / DEL / CHECK** of a whole plugin chain ([`Cni::add`], [`Cni::del`], [`Cni::check`]),
//!   per the CNI spec: each plugin binary, found in the bin dirs, runs with `CNI_COMMAND`,
//!   `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` (see [`kubernetes_args`]) and
//!   `CNI_PATH`, reading its config on stdin with the network's `name` and `cniVersion`, the
//!   previous plugin's result as `prevResult`, and a `runtimeConfig` holding the capabilities it
//!   declares (`portMappings`, `bandwidth`). DEL runs in reverse order and plugins tolerate state
//!   that is already gone (an empty netns is allowed). Each execution has a deadline
//!   ([`DEFAULT_PLUGIN_TIMEOUT`]). A plugin's CNI error JSON becomes [`PluginError`].
//! * **Result cache** under `<cache dir>/results/<network>-<container>-<ifname>` in libcni's
//!   format: DEL gets the ADD result as `prevResult`, and a restarted runtime reads the pod IPs
//!   back ([`Cni::cached`], [`CniResult::pod_ips`]) or deletes with the config of the ADD
//!   ([`Cni::del_cached`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), mk_cni::CniError> {
//! use mk_cni::{Cni, RuntimeConf, kubernetes_args, load_default_network};
//!
//! let network = load_default_network("/etc/cni/net.d".as_ref())?;
//! let cni = Cni::new(vec!["/opt/cni/bin".into()], "/var/lib/cni/cache".into());
//! let rt = RuntimeConf {
//!     container_id: "0123abcd".into(),
//!     netns: "/proc/4242/ns/net".into(),
//!     if_name: "eth0".into(),
//!     args: kubernetes_args("default", "web", "0123abcd", "uid-1"),
//!     ..Default::default()
//! };
//! let result = cni.add(&network, &rt).await?;
//! println!("pod IPs: {:?}", result.pod_ips());
//! cni.del(&network, &rt).await?;
//! # Ok(()) }
//! ```

mod cache;
mod config;
mod error;
mod exec;
mod result;
mod runtime;

pub use cache::{CachedAttachment, cache_path};
pub use config::{
    CONFIG_EXTENSIONS, NetworkConfigList, PluginConfig, SUPPORTED_VERSIONS, conf_files,
    load_default_network, parse_version, version_at_least,
};
pub use error::{CniError, ConfigError, PluginError};
pub use result::{CniResult, Interface, IpConfig};
pub use runtime::{
    Bandwidth, CapabilityArgs, Cni, DEFAULT_PLUGIN_TIMEOUT, PortMapping, RuntimeConf,
    kubernetes_args,
};
