//! The Node object, its status and its Lease (in progress).
