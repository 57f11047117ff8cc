//! The `tern` binary starts and answers `--version`. Having an integration test here also makes
//! `cargo test --workspace` build `target/<profile>/tern`, which the end-to-end tests in the
//! `tests` crate drive.

#[test]
fn version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("tern {}", env!("CARGO_PKG_VERSION")));
}
