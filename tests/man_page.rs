//! The man page stays a complete reference: it names every configuration key the daemon
//! accepts. The keys come from the typed config itself, not from a list kept by hand: each
//! section is probed with an unknown key, and the parser's "expected one of ..." answer lists
//! the section's keys, optional ones included.

use dingtalk_streamd::config::Config;
use std::collections::BTreeSet;
use std::path::Path;

const MAN_PAGE: &str = "packaging/dingtalk-streamd.8";
/// A key no section has: its error lists the keys the section does have.
const PROBE: &str = "zz_probe";
/// What makes the top level parse up to the probe.
const REQUIRED: &str = "dingtalk:\n  client_id: dingabc\n  client_secret: s3\n";

/// The keys the parser lists for the section at `path` (`["keepalive"]`,
/// `["callbacks[]"]`, ...), or `None` when that path is not a section (a scalar or a list of
/// scalars).
fn section_keys(path: &[String]) -> Option<Vec<String>> {
    let mut value = format!("{{{PROBE}: 1}}");
    for segment in path.iter().rev() {
        value = match segment.strip_suffix("[]") {
            Some(name) => format!("{{{name}: [{value}]}}"),
            None => format!("{{{segment}: {value}}}"),
        };
    }
    let yaml = if path.is_empty() {
        format!("{REQUIRED}{PROBE}: 1\n")
    } else if path[0].starts_with("dingtalk") {
        format!(
            "dingtalk: {}\n",
            &value[value.find(": ")? + 2..value.len() - 1]
        )
    } else {
        format!("{REQUIRED}{}\n", &value[1..value.len() - 1])
    };
    let err = Config::parse(&yaml, Path::new("probe.yml"))
        .err()?
        .to_string();
    let at = err.find(&format!("unknown field `{PROBE}`"))?;
    let expected = &err[at + err[at..].find("expected")?..];
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every key, as a dotted path with `[]` for list entries (`callbacks[].timeout`).
fn config_keys(path: &mut Vec<String>, out: &mut BTreeSet<String>) {
    let keys = section_keys(path).unwrap_or_else(|| panic!("{path:?}: the probe found no section"));
    for key in keys {
        out.insert(
            path.iter()
                .cloned()
                .chain([key.clone()])
                .collect::<Vec<_>>()
                .join("."),
        );
        for child in [key.clone(), format!("{key}[]")] {
            path.push(child);
            if section_keys(path).is_some() {
                config_keys(path, out);
            }
            path.pop();
        }
    }
}

#[test]
fn the_man_page_names_every_config_key() {
    let mut keys = BTreeSet::new();
    config_keys(&mut Vec::new(), &mut keys);
    // The probe itself works: known keys of every shape were found.
    for known in [
        "dingtalk.client_id",
        "dingtalk.subscriptions",
        "dingtalk.subscriptions[].topic",
        "proxy",
        "keepalive.pong_timeout",
        "groups",
        "callbacks[].timeout",
        "limits.recent_cache_bytes",
        "metrics.listen",
        "compat.client_secret_file",
    ] {
        assert!(keys.contains(known), "{known} not found; found {keys:#?}");
    }
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(MAN_PAGE))
        .expect("read the man page");
    let text = text.replace("\\&", "").replace("\\-", "-");
    let missing: Vec<&String> = keys.iter().filter(|k| !text.contains(k.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{MAN_PAGE} does not mention these config keys (add them to its CONFIGURATION section, \
         with default and bounds): {missing:#?}"
    );
}
