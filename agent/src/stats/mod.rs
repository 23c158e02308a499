//! kubelet's stats/v1alpha1 `Summary` (`/stats/summary`): node, pod and container CPU, memory,
//! network and filesystem figures, from CRI stats where the runtime gives them and from cgroups and
//! filesystems otherwise ([`StatsProvider`]).
//!
//! * [`cgroup`]: a cgroup's memory (cAdvisor's working set) and CPU time, v1 and v2.
//! * [`types`]: the Summary types with kubelet's JSON names.
//! * [`provider`]: the scrape.

pub mod cgroup;
pub mod fs;
pub mod identities;
pub mod node;
pub mod provider;
pub mod types;

#[cfg(test)]
pub(crate) mod tests;

pub use provider::{StatsConfig, StatsError, StatsProvider};
pub use types::Summary;
