//! Image garbage collection, as kubelet's `imageGCManager` (`pkg/kubelet/images`):
//! `imageGCHighThresholdPercent`, `imageGCLowThresholdPercent`, `imageMinimumGCAge`,
//! `imageMaximumGCAge`.
//!
//! * [`policy`]: the pure decision (images × image filesystem usage × times × policy → the
//!   images to remove, in order, and the bytes to free);
//! * [`manager`]: the loop through CRI (ListImages, ListContainers, Status, ImageFsInfo,
//!   RemoveImage) and statvfs of the image filesystem's mount point.

pub mod manager;
pub mod policy;

#[cfg(test)]
mod tests;

pub use manager::{GcError, IMAGE_GC_PERIOD, ImageGcManager, Round, spawn};
pub use policy::{FsUsage, ImageGcPolicy, Reason, Removal, SpacePlan};
