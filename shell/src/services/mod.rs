//! tonic services. Each only translates protobuf to the core's domain types and back; every
//! decision is the core's.

pub mod errors;
pub mod kv;
pub mod metacat;
pub mod peer;
pub mod statehouse;
pub mod status;
pub mod upload;
