//! `ConfigError`: every way a config can be wrong, each naming the file and the line/column or
//! key path, so an operator can go straight to the mistake.

use std::path::PathBuf;

/// A config that cannot be used. `main` maps every variant to exit code 78 (EX_CONFIG).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", file.display())]
    Read {
        /// The config path.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is empty or only comments, or `client_id` is empty: the packaged state.
    #[error("{}: not configured: set dingtalk.client_id in {}", file.display(), file.display())]
    NotConfigured {
        /// The config path.
        file: PathBuf,
    },
    /// A YAML syntax error, an unknown key, a wrong type or a bad value.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Parse {
        /// The config path.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but is not acceptable, or a rule across several keys.
    #[error("{}: {key}: {message}", file.display())]
    Invalid {
        /// The config path.
        file: PathBuf,
        /// Dotted key path, e.g. `keepalive.pong_timeout`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

impl ConfigError {
    pub(super) fn from_yaml(file: &std::path::Path, text: &str, e: serde_yaml_ng::Error) -> Self {
        let (line, column) = match e.location() {
            Some(l) => (l.line(), l.column()),
            None => (text.lines().count().max(1), 1),
        };
        // serde_yaml_ng repeats the location in the text; it is printed up front instead. Any
        // other location stays: "while scanning a quoted scalar at line 3 column 18" is where
        // the mistake starts.
        let mut message =
            e.to_string()
                .replacen(&format!(" at line {line} column {column}"), "", 1);
        if message.starts_with("missing field `dingtalk`") {
            return ConfigError::NotConfigured {
                file: file.to_owned(),
            };
        }
        message = name_the_key(message, text, line, column);
        if message.contains("missing field `client_id`") {
            message = format!(
                "{message}: not configured: set dingtalk.client_id in {}",
                file.display()
            );
        }
        ConfigError::Parse {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    }

    pub(crate) fn invalid(file: &std::path::Path, key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// serde_yaml_ng names the section of a bad value (`reconnect: invalid duration ...`) while its
/// location points at the key (`max_delay: soon`). Name the whole key path, as the operator
/// writes it: `reconnect.max_delay: invalid duration ...`.
fn name_the_key(message: String, text: &str, line: usize, column: usize) -> String {
    let Some(src) = text.lines().nth(line.saturating_sub(1)) else {
        return message;
    };
    let rest: String = src.chars().skip(column.saturating_sub(1)).collect();
    let key: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let is_key = !key.is_empty() && rest[key.len()..].trim_start().starts_with(':');
    let Some((path, detail)) = message.split_once(": ") else {
        return message;
    };
    let plain_path = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    if is_key && plain_path && !path.ends_with(&key) && !detail.starts_with("unknown field") {
        format!("{path}.{key}: {detail}")
    } else {
        message
    }
}
