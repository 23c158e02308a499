//! mini-kubelet agent library.
