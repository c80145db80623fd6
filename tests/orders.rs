//! The orders example end to end (being written).
mod support;
