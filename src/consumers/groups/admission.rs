//! Whether a hello may join a group, decided by a pure function of what the registry knows
//! (`consumers.adhoc_groups`, `limits.max_groups`), so each rule is unit-tested.

use super::book::GroupSettings;
use crate::consumers::protocol::LineError;

/// Why a hello is refused; the member gets it as an error line and is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `consumers.adhoc_groups` is false and the group is not listed in `groups:`.
    UnknownGroup,
    /// The group would be one more than `limits.max_groups`.
    TooManyGroups {
        /// The limit in force.
        limit: usize,
    },
}

impl Refusal {
    /// The error line for a hello naming `group`.
    pub fn to_line_error(&self, group: &str) -> LineError {
        match self {
            Refusal::UnknownGroup => LineError::new(
                "unknown_group",
                format!(
                    "group {group:?} is not listed in groups: and consumers.adhoc_groups is false"
                ),
            ),
            Refusal::TooManyGroups { limit } => LineError::new(
                "too_many_groups",
                format!(
                    "group {group:?} would be one more than limits.max_groups ({limit}); remove an unused group (dingtalk-streamd group rm) or raise the limit"
                ),
            ),
        }
    }
}

/// May a hello join `group`? `configured`: listed in `groups:`; `exists`: the group runs now;
/// `groups`: how many run now. A configured group is always admitted (the config asks for
/// it); joining a group that exists never adds one.
pub fn admit(
    configured: bool,
    exists: bool,
    groups: usize,
    s: &GroupSettings,
) -> Result<(), Refusal> {
    if configured {
        return Ok(());
    }
    if !s.adhoc_groups {
        return Err(Refusal::UnknownGroup);
    }
    if !exists && groups >= s.max_groups {
        return Err(Refusal::TooManyGroups {
            limit: s.max_groups,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(adhoc_groups: bool, max_groups: usize) -> GroupSettings {
        GroupSettings {
            in_flight: 10,
            ack_wait: Duration::from_secs(60),
            max_deliveries: 10,
            adhoc_ttl: Duration::from_secs(3600),
            adhoc_groups,
            max_groups,
        }
    }

    #[test]
    fn a_new_group_beyond_max_groups_is_refused_an_existing_one_is_not() {
        let s = settings(true, 2);
        assert_eq!(admit(false, false, 1, &s), Ok(()));
        assert_eq!(
            admit(false, false, 2, &s),
            Err(Refusal::TooManyGroups { limit: 2 })
        );
        assert_eq!(admit(false, true, 2, &s), Ok(()), "joining adds no group");
        assert_eq!(
            admit(false, true, 5, &s),
            Ok(()),
            "even above a lowered limit"
        );
        assert_eq!(
            admit(true, false, 9, &s),
            Ok(()),
            "configured groups always"
        );
    }

    #[test]
    fn without_adhoc_groups_only_configured_groups_are_admitted() {
        let s = settings(false, 64);
        assert_eq!(admit(false, false, 0, &s), Err(Refusal::UnknownGroup));
        assert_eq!(
            admit(false, true, 0, &s),
            Err(Refusal::UnknownGroup),
            "an ad-hoc group from before takes no new members"
        );
        assert_eq!(admit(true, true, 0, &s), Ok(()));
        let e = Refusal::UnknownGroup.to_line_error("x");
        assert_eq!(e.code, "unknown_group");
        assert!(e.message.contains("\"x\""), "{}", e.message);
        let e = Refusal::TooManyGroups { limit: 3 }.to_line_error("y");
        assert_eq!(e.code, "too_many_groups");
        assert!(e.message.contains("(3)"), "{}", e.message);
    }
}
