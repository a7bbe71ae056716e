//! Replays every input kept under fuzz/regressions/<target>/ (inputs that once made a fuzz
//! target fail, kept after the fix) through the same harness the fuzz targets run
//! (fuzz/harness.rs), as a plain `cargo test` on stable without instrumentation. It also runs
//! the committed seeds, so a harness that no longer builds or holds is noticed here first.
//! When the fuzzer finds a crash: fix it, then copy the crash file to
//! fuzz/regressions/<target>/ under a name that says what it was.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

/// Runs `check` on every file in fuzz/<kind>/<target>/, in name order; returns how many.
fn replay(kind: &str, target: &str, check: impl Fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut paths: Vec<_> = entries
        .map(|e| e.expect("directory entry").path())
        .collect();
    paths.sort();
    for path in &paths {
        eprintln!("replaying {}", path.display());
        check(&std::fs::read(path).expect("read input"));
    }
    paths.len()
}

fn target(name: &str, check: impl Fn(&[u8]) + Copy) {
    assert!(
        replay("seeds", name, check) > 0,
        "fuzz/seeds/{name} has no seed"
    );
    replay("regressions", name, check);
}

#[test]
fn frame_regressions() {
    target("frame", harness::frame);
}

#[test]
fn consumer_line_regressions() {
    target("consumer_line", harness::consumer_line);
}

#[test]
fn config_regressions() {
    target("config", harness::config);
}

#[test]
fn ticket_regressions() {
    target("ticket", harness::ticket);
}

#[test]
fn control_regressions() {
    target("control", harness::control);
}
