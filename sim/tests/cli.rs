//! The simulator's command line speaks for the simulator: `--help` and `--version` name
//! `dingtalk-streamd-sim` and describe a simulator, not the daemon it is built beside.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dingtalk-streamd-sim"))
        .args(args)
        .output()
        .expect("run dingtalk-streamd-sim");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn help_names_the_simulator() {
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0), "{help}");
    let first = help.lines().next().unwrap_or_default();
    assert!(
        first.contains("simulator") && !first.starts_with("DingTalk Stream Mode bridge"),
        "the first line describes the simulator: {first:?}"
    );
    assert!(
        help.contains("Usage: dingtalk-streamd-sim "),
        "usage names the simulator:\n{help}"
    );
    let (code, version) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(version.starts_with("dingtalk-streamd-sim "), "{version:?}");
}
