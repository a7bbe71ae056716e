//! The control socket's requests (one JSON request line, one JSON response line:
//! `{"cmd":"status"}` answers with the [`Report`](crate::status::Report)), the `/metrics` text,
//! and the client side of the CLI (`status`, `tail`). The accept loops are in
//! [`crate::listeners`].

pub mod client;
pub mod metrics;

use crate::status::Sources;
use serde_json::json;

/// A request line longer than this is refused.
pub const MAX_REQUEST: usize = 4096;

/// The response line (no newline) to one control request line.
pub fn answer(request: &str, sources: &Sources) -> String {
    match serde_json::from_str::<serde_json::Value>(request.trim()) {
        Ok(v) if v["cmd"] == "status" => {
            serde_json::to_string(&sources.report()).unwrap_or_default()
        }
        Ok(_) => {
            json!({"error":{"code":"bad_request","message":"supported: {\"cmd\":\"status\"}"}})
                .to_string()
        }
        Err(e) => json!({"error":{"code":"bad_json","message":e.to_string()}}).to_string(),
    }
}
