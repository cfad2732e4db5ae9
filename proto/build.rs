//! Compiles every .proto under `proto/` with protox (pure Rust, so no `protoc` is needed) and
//! hands the descriptor set to tonic-prost-build. The same set is embedded for gRPC reflection.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_path = out.join("tessera_descriptor.bin");
    std::fs::write(&fds_path, prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .skip_protoc_run()
        // Ordered maps encode deterministically: the catalog hashes requests for idempotency.
        .btree_map(".ai.floedb.metacat")
        .file_descriptor_set_path(&fds_path)
        .compile_protos(&files, &[root])?;
    Ok(())
}
