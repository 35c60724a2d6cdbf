//! Every exit code README "Exit codes" documents, through the real binary: one failure of
//! each kind per command that can meet it (codes 0, 1 and 130 of whole runs are proven in
//! `cli`, `faults_process` and `hostile`). Each failure stops before any prompt is posted.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use plasma_batch::exit_codes;

use crate::support::{repo, small_manifest};

fn bin() -> Command {
    let mut cmd = Command::cargo_bin("plasma-batch").expect("the binary is built");
    cmd.env_remove("PLASMA_COMFY_URL")
        .env_remove("PLASMA_COMFY_TOKEN")
        .env_remove("PLASMA_TOKEN")
        // A safeguard only: each of these fails at once, and one that started serving
        // instead would otherwise wait for a signal forever.
        .timeout(Duration::from_secs(60));
    cmd
}

/// Runs `args`, asserts the exit code and that stderr says each of `says` (miette may wrap
/// lines, so whitespace and its `│` gutter are ignored); stderr.
fn fails(args: &[&str], code: i32, says: &[&str]) -> String {
    let output = bin().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{args:?}:\n{stderr}");
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '│')
            .collect()
    };
    for text in says {
        assert!(
            squash(&stderr).contains(&squash(text)),
            "{args:?}: stderr does not say {text:?}:\n{stderr}"
        );
    }
    stderr
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// A loopback port that is taken while the listener lives.
fn taken_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    (listener, port)
}

#[test]
fn the_readme_table_lists_exactly_the_named_exit_codes() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let table: BTreeSet<i32> = readme
        .lines()
        .skip_while(|l| l.trim() != "## Exit codes")
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.trim_matches('|').split('|').next()?.trim().parse().ok())
        .collect();
    let named = BTreeSet::from([
        exit_codes::OK,
        exit_codes::JOBS_FAILED,
        exit_codes::USAGE,
        exit_codes::INVALID_INPUT,
        exit_codes::PREFLIGHT_FAILED,
        exit_codes::IO_ERROR,
        exit_codes::INTERRUPTED,
    ]);
    assert_eq!(
        table, named,
        "README \"Exit codes\" and src/exit_codes.rs differ"
    );
}

#[test]
fn usage_errors_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    let m = path(&manifest);
    // clap's own.
    fails(&["run", m, "--bogus"], exit_codes::USAGE, &["--bogus"]);
    for timeout in [
        "--timeout=0",
        "--timeout=-1",
        "--timeout=86401",
        "--timeout=NaN",
    ] {
        fails(
            &["run", m, "--sim", timeout],
            exit_codes::USAGE,
            &["--timeout must be a positive number of seconds up to 86400"],
        );
    }
    fails(
        &["run", m, "--sim", "--in-flight", "65"],
        exit_codes::USAGE,
        &["--in-flight must be 1 to 64"],
    );
    let out = dir.path().join("serve");
    for timeout in ["0", "86401"] {
        fails(
            &[
                "serve",
                "--sim",
                "--listen",
                "127.0.0.1:0",
                "--timeout",
                timeout,
                "--out",
                path(&out),
            ],
            exit_codes::USAGE,
            &["--timeout must be a positive number of seconds up to 86400"],
        );
    }
    fails(
        &["sim", "--port", "0", "--fault", "no-such-fault"],
        exit_codes::USAGE,
        &["no-such-fault", "--fault"],
    );
    assert!(
        !out.join("serve").exists(),
        "a refused serve wrote its journal"
    );
}

#[test]
fn missing_or_unreadable_inputs_exit_3_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    for command in ["validate", "plan", "run"] {
        fails(
            &[command, path(&missing)],
            exit_codes::INVALID_INPUT,
            &["failed to read manifest", path(&missing)],
        );
    }
    fails(
        &["validate", path(dir.path())],
        exit_codes::INVALID_INPUT,
        &["failed to read manifest", "not a regular file"],
    );
    let report = dir.path().join("ch-07/reports/missing.json");
    fails(
        &["rerun", path(&report), "--sim"],
        exit_codes::INVALID_INPUT,
        &["failed to read run report", path(&report)],
    );
    fails(
        &[
            "rerun",
            path(dir.path()),
            "--sim",
            "--out",
            path(dir.path()),
        ],
        exit_codes::INVALID_INPUT,
        &["failed to read run report", "not a regular file"],
    );
    let workflow = dir.path().join("missing.json");
    fails(
        &[
            "serve",
            "--sim",
            "--listen",
            "127.0.0.1:0",
            "--workflow",
            path(&workflow),
            "--out",
            path(&dir.path().join("out")),
        ],
        exit_codes::INVALID_INPUT,
        &["missing.json"],
    );
    assert!(!dir.path().join("out").exists() && !dir.path().join("ch-07").exists());
}

#[test]
fn a_server_url_that_is_no_url_exits_4_before_any_job() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    let out = dir.path().join("out");
    for command in [
        &["run", path(&manifest), "--out", path(&out)][..],
        &["validate", path(&manifest)],
    ] {
        let args: Vec<&str> = command
            .iter()
            .copied()
            .chain(["--server", "ftp://127.0.0.1:8188"])
            .collect();
        fails(
            &args,
            exit_codes::PREFLIGHT_FAILED,
            &["ftp://127.0.0.1:8188", "the scheme must be http or https"],
        );
    }
    assert!(
        crate::support::files_under(&out)
            .iter()
            .all(|f| !crate::support::has_extension(f, "png"))
    );
}

#[test]
fn an_address_in_use_exits_5_naming_it() {
    let (_held, port) = taken_port();
    let dir = tempfile::tempdir().unwrap();
    fails(
        &["sim", "--port", &port],
        exit_codes::IO_ERROR,
        &[&format!("failed to listen on 127.0.0.1:{port}"), "--port"],
    );
    fails(
        &[
            "serve",
            "--sim",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--out",
            path(dir.path()),
        ],
        exit_codes::IO_ERROR,
        &[&format!("127.0.0.1:{port}"), "--listen"],
    );
}
