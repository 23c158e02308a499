//! In-memory CRI runtime (work in progress).
