//! The shipped units agree with the daemon's defaults: the watchdog must stay above
//! `limits.commit_stall`, so a stalled disk shows as a stall (STATUS, the log, a proper close)
//! before systemd kills the daemon.

use dingtalk_streamd::config::Config;
use std::path::Path;
use std::time::Duration;

fn watchdog_of(unit: &str) -> Duration {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("WatchdogSec="))
        .unwrap_or_else(|| panic!("{unit} sets no WatchdogSec="));
    humantime::parse_duration(value.trim())
        .unwrap_or_else(|e| panic!("{unit}: WatchdogSec={value}: {e}"))
}

#[test]
fn the_watchdog_outlasts_the_commit_stall() {
    let c = Config::parse(
        "dingtalk:\n  client_id: dingabc\n  client_secret: s3cret\n",
        Path::new("probe.yml"),
    )
    .expect("a minimal config");
    let stall = c.limits.commit_stall.get();
    for unit in ["dingtalk-streamd.service", "dingtalk-streamd@.service"] {
        let watchdog = watchdog_of(unit);
        assert!(
            watchdog > stall,
            "{unit}: WatchdogSec={watchdog:?} must be above limits.commit_stall ({stall:?})"
        );
    }
}
