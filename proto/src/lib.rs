//! Generated protobuf and gRPC code for every API tesserad speaks.
//!
//! The module tree mirrors the protobuf packages, because prost refers to types in other
//! packages by relative paths (`super::super::...`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

macro_rules! package {
    ($file:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $file, ".rs"));
    };
}

/// The encoded `FileDescriptorSet` of every file, for gRPC reflection and the contract test.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tessera_descriptor.bin"));

pub mod kms {
    pub mod v1 {
        package!("kms.v1");
    }
}

pub mod metastore_status {
    pub mod v1 {
        package!("metastore_status.v1");
    }
}

/// PairDB's coordinator API (the protobuf package is literally named `proto`).
pub mod proto {
    package!("proto");
}

pub mod statehouse {
    pub mod v1 {
        package!("statehouse.v1");
    }
}

pub mod ai {
    pub mod pipestream {
        pub mod repository {
            pub mod filesystem {
                pub mod upload {
                    package!("ai.pipestream.repository.filesystem.upload");
                }
            }
        }
    }
    pub mod floedb {
        pub mod metacat {
            pub mod common {
                package!("ai.floedb.metacat.common");
            }
            pub mod catalog {
                package!("ai.floedb.metacat.catalog");
            }
            pub mod types {
                package!("ai.floedb.metacat.types");
            }
            pub mod tenant {
                package!("ai.floedb.metacat.tenant");
            }
            pub mod storage {
                package!("ai.floedb.metacat.storage");
            }
            pub mod statistics {
                package!("ai.floedb.metacat.statistics");
            }
            pub mod planning {
                package!("ai.floedb.metacat.planning");
            }
            pub mod connector {
                package!("ai.floedb.metacat.connector");
            }
        }
    }
}

pub mod tessera {
    pub mod kv {
        pub mod v1 {
            package!("tessera.kv.v1");
        }
    }
    pub mod peer {
        pub mod v1 {
            package!("tessera.peer.v1");
        }
    }
    pub mod repository {
        pub mod v1 {
            package!("tessera.repository.v1");
        }
    }
    pub mod status {
        pub mod v1 {
            package!("tessera.status.v1");
        }
    }
}
