//! mini-kubelet: a Kubernetes node agent speaking CRI to containerd, cri-o or the built-in Docker adapter.

pub mod admission;
pub mod agent;
pub mod allocation;
pub mod apiserver;
pub mod backoff;
pub mod certificate;
pub mod cli;
pub mod cm;
pub mod config;
pub mod container_gc;
pub mod envvars;
pub mod events;
pub mod eviction;
pub mod image_gc;
pub mod images;
pub mod kuberuntime;
pub mod logging;
pub mod logs;
pub mod metrics;
#[cfg(test)]
mod metrics_doc_tests;
pub mod node;
pub mod nodeshutdown;
pub mod pleg;
pub mod pod_cache;
pub mod pod_workers;
pub mod prober;
pub mod qos;
pub mod quantity;
pub mod server;
pub mod sources;
pub mod stats;
pub mod status;
pub mod sync;
#[cfg(test)]
mod test_cri;
pub mod unsupported;
pub mod version;
pub mod volumes;
