//! LeanMQ compatibility (being written).
mod support;
