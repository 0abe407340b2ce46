//! `authgate hash-password` with the password piped on stdin: the real binary, one case per way
//! people (and scripts) feed it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `authgate hash-password` with `input` on stdin.
fn hash_password(input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The binary stops reading past its input bound, so a long input may find the pipe closed.
    if let Err(e) = stdin.write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// The hash printed by a successful run, checked to verify `password` and nothing else.
fn assert_hashes(input: &[u8], password: &str) {
    let out = hash_password(input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "input {input:?}: {:?}, stderr: {stderr}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no newline: {stdout:?}"));
    assert!(line.starts_with("$argon2id$"), "{stdout:?}");
    let hash = authgate::auth::password::check_hash(line).expect("printed hash is not accepted");
    assert!(
        authgate::auth::password::verify(&hash, password.as_bytes()),
        "input {input:?}: the hash does not verify {password:?}"
    );
    if input != password.as_bytes() {
        assert!(
            !authgate::auth::password::verify(&hash, input),
            "input {input:?}: the hash verifies the whole input"
        );
    }
}

/// A refused input: exit status 1, nothing on stdout, `reason` on stderr.
fn assert_refused(input: &[u8], reason: &str) {
    let out = hash_password(input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "input {input:?}: stderr: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "input {input:?}: printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(reason),
        "input {input:?}: stderr does not say {reason:?}: {stderr}"
    );
}

#[test]
fn hash_password_one_line_hashes_that_line() {
    assert_hashes(b"s3cret pw\n", "s3cret pw");
}

#[test]
fn hash_password_one_line_without_newline_hashes_it() {
    assert_hashes(b"s3cret pw", "s3cret pw");
}

#[test]
fn hash_password_two_equal_lines_hash_the_first() {
    assert_hashes(b"s3cret pw\ns3cret pw\n", "s3cret pw");
}

#[test]
fn hash_password_crlf_lines_hash_without_the_cr() {
    assert_hashes(b"s3cret pw\r\ns3cret pw\r\n", "s3cret pw");
}

#[test]
fn hash_password_two_different_lines_are_refused() {
    assert_refused(b"s3cret pw\ns3cret pq\n", "the two lines differ");
}

#[test]
fn hash_password_three_lines_are_refused() {
    assert_refused(b"pw\npw\npw\n", "3 lines of input");
}

#[test]
fn hash_password_empty_input_or_line_is_refused() {
    assert_refused(b"", "empty password");
    assert_refused(b"\n", "empty password");
}

#[test]
fn hash_password_control_characters_are_refused() {
    assert_refused(b"s3cret\tpw\n", "control character (a tab)");
    assert_refused(b"s3cret\rpw\n", "control character (a carriage return)");
    assert_refused(b"s3cret\x1bpw\n", "control character (U+001B)");
}

#[test]
fn hash_password_invalid_utf8_is_refused() {
    assert_refused(b"s3cret\xffpw\n", "not valid UTF-8");
}

#[test]
fn hash_password_oversized_input_is_refused() {
    assert_refused(&[b'a'; 256 * 1024], "longer than 4096 bytes");
}
