//! What the agent last applied to each container's cpu and memory — at its creation, then by each
//! in-place resize — for runtimes whose ContainerStatus does not report a container's resources.
//! Kept in memory, by container ID: after an agent restart only the runtime's own report is known.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::kuberuntime::observe::ObservedPod;
use crate::kuberuntime::resources::ContainerResources;

/// Shared by every pod worker. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AppliedResources {
    by_id: Arc<Mutex<HashMap<String, ContainerResources>>>,
}

impl AppliedResources {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, ContainerResources>) -> T) -> T {
        f(&mut self.by_id.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records what a CreateContainer or UpdateContainerResources call applied to container `id`.
    pub fn record(&self, id: &str, resources: ContainerResources) {
        self.with(|m| m.insert(id.to_string(), resources));
    }

    /// Forgets a removed container.
    pub fn forget(&self, id: &str) {
        self.with(|m| m.remove(id));
    }

    /// Gives the containers the runtime reports no resources of what the agent applied to them.
    pub fn fill(&self, observed: &mut ObservedPod) {
        self.with(|m| {
            for c in observed
                .containers
                .iter_mut()
                .filter(|c| c.resources.is_none())
            {
                c.resources = m.get(&c.id).copied();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kuberuntime::observe::ObservedContainer;

    fn resources(shares: i64) -> ContainerResources {
        ContainerResources {
            cpu_shares: shares,
            ..Default::default()
        }
    }

    #[test]
    fn the_runtimes_report_wins_and_the_record_fills_the_gaps() {
        let applied = AppliedResources::default();
        applied.record("a", resources(100));
        applied.record("b", resources(200));
        applied.record("a", resources(300));
        let mut observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![
                ObservedContainer {
                    id: "a".into(),
                    ..Default::default()
                },
                ObservedContainer {
                    id: "b".into(),
                    resources: Some(resources(50)),
                    ..Default::default()
                },
                ObservedContainer {
                    id: "c".into(),
                    ..Default::default()
                },
            ],
        };
        applied.fill(&mut observed);
        let got: Vec<Option<i64>> = observed
            .containers
            .iter()
            .map(|c| c.resources.map(|r| r.cpu_shares))
            .collect();
        assert_eq!(got, vec![Some(300), Some(50), None]);
        applied.forget("a");
        let mut again = ObservedPod {
            sandboxes: vec![],
            containers: vec![ObservedContainer {
                id: "a".into(),
                ..Default::default()
            }],
        };
        applied.fill(&mut again);
        assert_eq!(again.containers[0].resources, None);
    }
}
