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
    /// The config file itself is unsafe to use (anyone may change it).
    #[error("{message}")]
    Unsafe {
        /// The config path.
        file: PathBuf,
        /// What is wrong and the command that fixes it (names the file).
        message: String,
    },
    /// A value that parses but is not acceptable, or a rule across several keys.
    #[error("{}{}: {key}: {message}", file.display(), at.map_or(String::new(), |(l, c)| format!(":{l}:{c}")))]
    Invalid {
        /// The config path.
        file: PathBuf,
        /// The value's 1-based line and column, when the key is written in the file (a
        /// default that breaks a rule has no line).
        at: Option<(usize, usize)>,
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
        // Values read from a visitor (durations, sizes, modes, URLs) carry their key path
        // already: `keepalive.tcp_user_timeout: invalid duration ...`.
        if message.starts_with("missing field `dingtalk`") {
            return ConfigError::NotConfigured {
                file: file.to_owned(),
            };
        }
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
            at: None,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// Adds the line and column of the key an [`Invalid`](ConfigError::Invalid) error names,
    /// found in the config `text`.
    pub(super) fn located(self, text: &str) -> Self {
        match self {
            ConfigError::Invalid {
                file,
                at: None,
                key,
                message,
            } => ConfigError::Invalid {
                at: super::locate::locate(text, &key),
                file,
                key,
                message,
            },
            other => other,
        }
    }
}
