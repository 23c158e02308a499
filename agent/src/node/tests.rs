//! Integration tests (see below).
