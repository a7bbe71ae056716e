//! dingtalk-streamd: one DingTalk Stream Mode connection per host, handed to local programs.
pub mod config;
pub mod gateway;
pub mod secret;
pub mod stream;
pub mod notify;
pub mod supervisor;
