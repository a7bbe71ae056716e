//! The control socket's requests (one JSON request line, one JSON response line:
//! `{"cmd":"status"}` answers with the [`Report`](crate::status::Report); the group commands
//! are in [`groups`], `inspect` in [`inspect`]), the `/metrics` text, and the client side of
//! the CLI (`status`, `tail`, `group ...`, `inspect`). The accept loops are in
//! [`crate::listeners`].

pub mod client;
pub mod group_client;
pub mod groups;
pub mod inspect;
pub mod metrics;

use crate::status::Sources;
use serde::Deserialize;
use serde_json::json;

/// A request line longer than this is refused.
pub const MAX_REQUEST: usize = 4096;

/// One control request, by its `cmd`.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `{"cmd":"status"}`
    Status,
    /// `{"cmd":"group_list"}`
    GroupList,
    /// `{"cmd":"group_rm","group":"G"}`
    GroupRm { group: String },
    /// `{"cmd":"group_replay","group":"G","parked":true}` or `..."from":SEQ}`
    GroupReplay {
        group: String,
        #[serde(default)]
        parked: bool,
        #[serde(default)]
        from: Option<u64>,
    },
    /// `{"cmd":"group_peek","group":"G","limit":N}`
    GroupPeek {
        group: String,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// `{"cmd":"inspect","seq":N}` or `{"cmd":"inspect","id":"..."}`
    Inspect {
        #[serde(default)]
        seq: Option<u64>,
        #[serde(default)]
        id: Option<String>,
    },
}

/// The commands, for error messages.
const SUPPORTED: &str = "supported: {\"cmd\":\"status\"}, {\"cmd\":\"group_list\"}, {\"cmd\":\"group_rm\",\"group\":G}, {\"cmd\":\"group_replay\",\"group\":G,\"parked\":true|\"from\":SEQ}, {\"cmd\":\"group_peek\",\"group\":G,\"limit\":N}, {\"cmd\":\"inspect\",\"seq\":N|\"id\":ID}";

/// An error response line.
pub(crate) fn error_line(code: &str, message: impl std::fmt::Display) -> String {
    json!({"error":{"code":code,"message":message.to_string()}}).to_string()
}

/// Parses one control request line; the error is the response line to send back.
pub fn parse(request: &str) -> Result<Request, String> {
    let value = serde_json::from_str::<serde_json::Value>(request.trim())
        .map_err(|e| error_line("bad_json", e))?;
    Request::deserialize(&value).map_err(|e| error_line("bad_request", format!("{e}; {SUPPORTED}")))
}

/// The response line (no newline) to one control request line.
pub async fn answer(request: &str, sources: &Sources) -> String {
    let request = match parse(request) {
        Ok(r) => r,
        Err(line) => return line,
    };
    match request {
        Request::Status => serde_json::to_string(&sources.report()).unwrap_or_default(),
        Request::GroupList => groups::list(sources),
        Request::GroupRm { group } => groups::rm(sources, &group).await,
        Request::GroupReplay {
            group,
            parked,
            from,
        } => groups::replay(sources, &group, parked, from).await,
        Request::GroupPeek { group, limit } => groups::peek(sources, &group, limit).await,
        Request::Inspect { seq, id } => inspect::answer(sources, seq, id).await,
    }
}
