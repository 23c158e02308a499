//! Stand-in API server.
