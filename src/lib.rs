//! dingtalk-streamd: one DingTalk Stream Mode connection per host, handed to local programs.
pub mod config;
pub mod secret;
