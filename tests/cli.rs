//! Bad input to the command line gets a clear error and changes nothing.

use std::process::Command;

mod common;
use common::BIN;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mount_on_missing_mountpoint_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mnt = d.path().join("nope");
    let (ok, err) = run(&[
        "mount",
        mnt.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!data.exists(), "nothing created");
}

#[test]
fn mount_on_a_file_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let data = d.path().join("data");
    let (ok, err) = run(&[
        "mount",
        f.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("not a directory"), "{err}");
    assert!(!data.exists());
}

#[test]
fn unwritable_data_dir_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (ok, err) = run(&[
        "mount",
        mnt.to_str().unwrap(),
        "--data-dir",
        "/proc/locker-data",
    ]);
    assert!(!ok);
    assert!(
        err.contains("/proc/locker-data") && err.contains("not writable"),
        "{err}"
    );
    assert!(!common::is_mounted(&mnt));
}

#[test]
fn malformed_config_names_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cfg = d.path().join("bad.toml");
    std::fs::write(&cfg, "[mount]\nthreads = 2\n[namespaces.corp\n").unwrap();
    let data = d.path().join("data");
    let (ok, err) = run(&[
        "mount",
        mnt.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");
    assert!(!data.exists());
}

#[test]
fn unknown_config_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, "[mount]\nthreds = 2\n").unwrap();
    let (ok, err) = run(&[
        "mount",
        mnt.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("c.toml") && err.contains("line 2") && err.contains("threds"),
        "{err}"
    );
}

#[test]
fn init_writes_the_default_config_and_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("etc/locker.toml");
    let (ok, err) = run(&["init", "--output", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("[namespaces.corp]") && text.contains("# "));
    let (ok, err) = run(&["init", "--output", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("already exists"), "{err}");
    // The written file mounts.
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = d.path().join("data");
    let mut child = Command::new(BIN)
        .args([
            "mount",
            mnt.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ])
        .args(["--data-dir", data.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !common::is_mounted(&mnt) && t0.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let names: Vec<String> = std::fs::read_dir(&mnt)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    let _ = Command::new("fusermount3").arg("-uz").arg(&mnt).status();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["corp", "deck", "emails", "factory", "hst"]);
    assert!(st.success());
}

#[test]
fn fsck_checks_a_stopped_store_and_refuses_a_running_one() {
    let (ok, err) = run(&["fsck", "--data-dir", "/nonexistent/locker-data"]);
    assert!(!ok && err.contains("holds no LOCKER store"), "{err}");
    let mut m = common::Mount::new();
    std::fs::write(m.corp().join("f.bin"), common::pattern(3 << 20, 9)).unwrap();
    let data = m.data.to_str().unwrap().to_string();
    let (ok, err) = run(&["fsck", "--data-dir", &data]);
    assert!(!ok, "fsck ran beside the daemon");
    assert!(
        err.contains("in use") || err.contains("lock") || err.contains("running"),
        "{err}"
    );
    m.stop();
    let out = Command::new(BIN)
        .args(["fsck", "--data-dir", &data])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 blocks checked, 0 damaged"), "{text}");
    // In a pipe (a log), no progress line.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("checked 3/3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // On a terminal, a progress line: blocks, bytes, rate.
    let text = on_a_terminal(&format!("{BIN} fsck --data-dir {data}"));
    assert!(
        text.contains("checked 3/3 blocks, 3.0 MiB of 3.0 MiB") && text.contains("/s"),
        "{text}"
    );
    assert!(text.contains("3 blocks checked, 0 damaged"), "{text}");
}

/// What `cmd` writes when its output is a terminal (util-linux's script
/// gives it a pseudo-terminal).
fn on_a_terminal(cmd: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_watch_redraws_on_a_terminal_and_appends_in_a_pipe() {
    let m = common::Mount::new();
    let data = m.data.to_str().unwrap().to_string();
    let text = on_a_terminal(&format!(
        "timeout 2.5 {BIN} status --watch 1 --data-dir {data}"
    ));
    assert!(text.matches("daemon pid").count() >= 2, "{text}");
    assert!(text.contains("\x1b[H"), "redrawn in place: {text:?}");

    let mut child = Command::new(BIN)
        .args(["status", "--watch", "1", "--json", "--data-dir", &data])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert!(lines.len() >= 2, "{lines:?}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["pid"].as_u64().is_some(), "{l}");
        assert!(!l.contains("\x1b"), "{l:?}");
    }
}

/// A command whose reader goes away (`locker status | head -1`) ends
/// quietly, as other Unix tools do: no panic, no error message.
#[test]
fn commands_end_quietly_when_their_output_is_closed() {
    use std::os::unix::process::ExitStatusExt;
    let m = common::Mount::new();
    let data = m.data.to_str().unwrap().to_string();
    for args in [
        vec!["status", "--data-dir", data.as_str()],
        vec!["status", "--json", "--data-dir", data.as_str()],
        vec!["init", "--output", "-"],
    ] {
        // The reading end is closed before the command writes.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
}
