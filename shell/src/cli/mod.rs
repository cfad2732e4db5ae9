//! Pieces of the `tessera` CLI that are worth testing on their own.

pub mod catalog;
pub mod json;
pub mod kv;
pub mod transfer;
