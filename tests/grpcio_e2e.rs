//! Python clients against a real tesserad: a grpcio client built from the contract protos
//! (status API) and the public `statehouse` SDK, unchanged. Needs python3 with venv and pip;
//! installs the pinned packages from PyPI into the target dir on first run.

#[path = "common/mod.rs"]
mod common;

#[test]
fn grpcio_client_checks_every_status_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(dir.path(), &[]);
    let status = d.run_python("test_status_grpcio");
    assert!(status.success(), "the grpcio status client test failed: {status}");
}

#[test]
fn statehouse_python_sdk_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(dir.path(), &[]);
    let status = d.run_python("test_statehouse_sdk");
    assert!(status.success(), "the statehouse SDK test failed: {status}");
}
