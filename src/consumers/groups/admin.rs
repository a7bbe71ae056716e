//! The registry's side of `group rm` and `group replay`: find the group's task and ask it (it
//! owns the group's book, so it performs both between two of its own steps), and the errors
//! the control socket reports.

use super::{GroupHandle, GroupMsg, GroupRegistry};
use crate::spool::{Released, Replay, SpoolError};
use tokio::sync::oneshot;

/// Why a group command was refused or failed; the message names the group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No such group runs (nor is known to the spool: every known group runs).
    #[error("no consumer group named {0:?}")]
    Unknown(String),
    /// `group rm` of a group listed in `groups:`.
    #[error(
        "group {0:?} is configured: remove it from groups: in the config and reload the daemon first"
    )]
    Configured(String),
    /// `group rm` of a sink's group while the sink is configured.
    #[error(
        "group {0:?} is a sink's: remove the sink from sinks: in the config and restart the daemon first"
    )]
    Sink(String),
    /// `group rm` of a group with connected members.
    #[error(
        "group {group:?} has {members} connected member(s): stop them first (group rm does not disconnect members, and a member that reconnects would create the group again)"
    )]
    HasMembers {
        /// The group.
        group: String,
        /// Its members now.
        members: usize,
    },
    /// The spool could not do it (nothing changed).
    #[error("group {group:?}: the spool failed: {source}")]
    Spool {
        /// The group.
        group: String,
        /// Why.
        #[source]
        source: SpoolError,
    },
}

impl GroupError {
    /// The control socket's error code.
    pub fn code(&self) -> &'static str {
        match self {
            GroupError::Unknown(_) => "unknown_group",
            GroupError::Configured(_) | GroupError::Sink(_) => "configured_group",
            GroupError::HasMembers { .. } => "has_members",
            GroupError::Spool { .. } => "spool_error",
        }
    }
}

impl GroupRegistry {
    fn running(&self, group: &str) -> Option<GroupHandle> {
        self.env.groups().get(group).filter(|h| h.live()).cloned()
    }

    /// Asks `group`'s task for something and waits for the answer.
    async fn ask<R>(
        &self,
        group: &str,
        msg: impl FnOnce(oneshot::Sender<Result<R, GroupError>>) -> GroupMsg,
    ) -> Result<R, GroupError> {
        let unknown = || GroupError::Unknown(group.to_owned());
        let h = self.running(group).ok_or_else(unknown)?;
        let (reply, rx) = oneshot::channel();
        h.tx.send(msg(reply)).map_err(|_| unknown())?;
        // Dropped unanswered: the task went away meanwhile (expired, or stopping).
        rx.await.map_err(|_| unknown())?
    }

    /// `group rm`: removes an ad-hoc group without members and releases its backlog. Once
    /// this returns the group is gone from the spool and from status. Refused for configured
    /// groups and groups with connected members.
    pub async fn remove(&self, group: &str) -> Result<Released, GroupError> {
        if self.env.sink_window(group).is_some() {
            return Err(GroupError::Sink(group.to_owned()));
        }
        if self.env.is_configured(group) {
            return Err(GroupError::Configured(group.to_owned()));
        }
        self.ask(group, |reply| GroupMsg::Remove { reply }).await
    }

    /// `group replay`: gives `group` its parked messages, or every message from a seq on still
    /// in the spool, again; connected members get them. Returns how many are owed again.
    pub async fn replay(&self, group: &str, what: Replay) -> Result<u64, GroupError> {
        self.ask(group, |reply| GroupMsg::Replay { what, reply })
            .await
    }
}
