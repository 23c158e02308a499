//! The RPCs of the CRI v1 RuntimeService and ImageService, as recorded in the call log.

use std::fmt;
use std::str::FromStr;

macro_rules! ops {
    ($($variant:ident),* $(,)?) => {
        /// One CRI v1 RPC, named like its gRPC method (`RunPodSandbox`, `PullImage`, ...).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Op {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant,
            )*
        }

        impl Op {
            /// Every RPC of both services.
            pub const ALL: &'static [Op] = &[$(Op::$variant),*];

            /// The gRPC method name, e.g. `"RunPodSandbox"`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Op::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

ops!(
    Version,
    RunPodSandbox,
    StopPodSandbox,
    RemovePodSandbox,
    PodSandboxStatus,
    ListPodSandbox,
    CreateContainer,
    StartContainer,
    StopContainer,
    RemoveContainer,
    ListContainers,
    ContainerStatus,
    UpdateContainerResources,
    ReopenContainerLog,
    ExecSync,
    Exec,
    Attach,
    PortForward,
    ContainerStats,
    ListContainerStats,
    PodSandboxStats,
    ListPodSandboxStats,
    UpdateRuntimeConfig,
    Status,
    CheckpointContainer,
    GetContainerEvents,
    ListMetricDescriptors,
    ListPodSandboxMetrics,
    RuntimeConfig,
    ListImages,
    ImageStatus,
    PullImage,
    RemoveImage,
    ImageFsInfo,
);

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given to [`Op::from_str`] matches no RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CRI operation {0:?}")]
pub struct UnknownOp(pub String);

impl FromStr for Op {
    type Err = UnknownOp;

    /// Accepts the gRPC method name (`RunPodSandbox`) as well as snake-case spellings, including
    /// kubelet's metric labels (`run_podsandbox`, `podsandbox_status`, `image_fs_info`, and
    /// `update_container` for UpdateContainerResources): case and underscores are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted: String = s
            .chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if wanted == "updatecontainer" {
            return Ok(Op::UpdateContainerResources);
        }
        Op::ALL
            .iter()
            .copied()
            .find(|op| op.as_str().eq_ignore_ascii_case(&wanted))
            .ok_or_else(|| UnknownOp(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_and_metric_names() {
        assert_eq!("RunPodSandbox".parse(), Ok(Op::RunPodSandbox));
        assert_eq!("run_podsandbox".parse(), Ok(Op::RunPodSandbox));
        assert_eq!("podsandbox_status".parse(), Ok(Op::PodSandboxStatus));
        assert_eq!("image_fs_info".parse(), Ok(Op::ImageFsInfo));
        assert_eq!("exec_sync".parse(), Ok(Op::ExecSync));
        assert_eq!("update_container".parse(), Ok(Op::UpdateContainerResources));
        assert!("run_pod".parse::<Op>().is_err());
        assert_eq!(Op::PullImage.to_string(), "PullImage");
    }
}
