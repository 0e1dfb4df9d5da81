//! `cellctl`'s refusals: bad input answers with a clear message and exit status 2, and
//! writes nothing it should not.

use std::process::{Command, Output};

fn cellctl(dir: &std::path::Path, args: &[&str], secret: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cellctl"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("REDCELL_AUTH_SECRET");
    if let Some(s) = secret {
        cmd.env("REDCELL_AUTH_SECRET", s);
    }
    cmd.output().expect("run cellctl")
}

fn refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}

const SECRET: &str = "cli-test-secret-0123456789";

#[test]
fn token_checks_the_subject_and_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        &cellctl(dir.path(), &["token", "bad uid!"], Some(SECRET)),
        "neither a uid",
    );
    refused(&cellctl(dir.path(), &["token", "u1"], None), "no secret");
    refused(
        &cellctl(dir.path(), &["token", "u1"], Some("short")),
        "at least 16 characters",
    );
    refused(
        &cellctl(dir.path(), &["token", "u1", "--ttl-s", "0"], Some(SECRET)),
        "--ttl-s",
    );
    let ok = cellctl(
        dir.path(),
        &["token", "svc:ops", "--scope", "admin"],
        Some(SECRET),
    );
    assert!(ok.status.success());
    let token = String::from_utf8(ok.stdout).unwrap();
    let principal = topology::auth::Verifier::new(SECRET.as_bytes())
        .verify(token.trim())
        .expect("a token the deployment accepts");
    assert!(principal.is_admin());
}

#[test]
fn commands_on_a_dir_without_a_deployment_say_so() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["reconcile"],
        &["switch", "c2c_send", "off"],
    ] {
        refused(&cellctl(dir.path(), args, Some(SECRET)), "deployment.json");
    }
    refused(
        &cellctl(dir.path(), &["down"], Some(SECRET)),
        "no `cellctl up` runs",
    );
}

#[test]
fn up_refuses_impossible_plans_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = cellctl(
        dir.path(),
        &["up", "--cells", "1", "--regions", "2", "--base-port", "0"],
        Some(SECRET),
    );
    refused(&out, "--cells must be between");
    assert!(!dir.path().join("cellctl.json").exists());
    assert!(!dir.path().join("meta").exists(), "nothing started");
}

#[test]
fn up_keeps_the_plan_of_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cellctl.json"),
        r#"{"router_listen":"127.0.0.1:7000","meta":[],"cells":[
            {"id":"c1","region":"east","listen":"127.0.0.1:7101","backup":null}]}"#,
    )
    .unwrap();
    refused(
        &cellctl(dir.path(), &["up", "--cells", "4"], Some(SECRET)),
        "cannot change",
    );
    refused(
        &cellctl(
            dir.path(),
            &["up", "--postgres", "postgres://127.0.0.1:1/x"],
            Some(SECRET),
        ),
        "--postgres",
    );
}
