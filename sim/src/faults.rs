//! Injected failures of the HTTP side: the ticket endpoint and the WebSocket handshake, and
//! the ways a connection can misbehave once open ([`Misbehaviour`]).
//!
//! A fault applies to the next `times` requests (or until replaced or cleared), so a test can
//! script "two 503s, then success" and watch the client's backoff recover from it.

use std::time::Duration;

/// What the ticket endpoint does instead of its normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketFaultKind {
    /// Answer this status with DingTalk's error body shape (400 `systemError`, 401
    /// `authFailed`, 429/503 throttling) and an optional `Retry-After` (whole seconds).
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` header value.
        retry_after: Option<Duration>,
    },
    /// Never answer (until the gateway shuts down): tests the client's request timeout.
    Hang,
    /// Answer `status` with exactly this body, e.g. 200 with a captive portal's HTML.
    Body {
        /// HTTP status.
        status: u16,
        /// The body, sent as it is.
        body: String,
    },
    /// Answer 200 with the start of a JSON body, then never finish it (until the gateway
    /// shuts down): the client's timeout must cover reading the body too.
    Unfinished,
}

/// A ticket-endpoint fault and how many requests it affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketFault {
    /// The behaviour.
    pub kind: TicketFaultKind,
    /// Requests left to affect; `None` = until changed.
    pub times: Option<u32>,
}

impl TicketFault {
    /// Answer `status` (with DingTalk's error body for it) until changed.
    pub fn status(status: u16) -> TicketFault {
        TicketFault {
            kind: TicketFaultKind::Status {
                status,
                retry_after: None,
            },
            times: None,
        }
    }

    /// Never answer, until changed.
    pub fn hang() -> TicketFault {
        TicketFault {
            kind: TicketFaultKind::Hang,
            times: None,
        }
    }

    /// Answer `status` with `body` as it is, until changed.
    pub fn body(status: u16, body: &str) -> TicketFault {
        TicketFault {
            kind: TicketFaultKind::Body {
                status,
                body: body.to_owned(),
            },
            times: None,
        }
    }

    /// Answer 200 and a body that never ends, until changed.
    pub fn unfinished() -> TicketFault {
        TicketFault {
            kind: TicketFaultKind::Unfinished,
            times: None,
        }
    }

    /// Adds a `Retry-After` header (only meaningful for a status fault).
    pub fn retry_after(mut self, after: Duration) -> TicketFault {
        if let TicketFaultKind::Status { retry_after, .. } = &mut self.kind {
            *retry_after = Some(after);
        }
        self
    }

    /// Limits the fault to the next `n` requests.
    pub fn times(mut self, n: u32) -> TicketFault {
        self.times = Some(n);
        self
    }
}

/// What the WebSocket handshake does instead of upgrading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFaultKind {
    /// Refuse the upgrade with this HTTP status.
    Status(u16),
    /// Read the upgrade request and never answer it (until the gateway shuts down).
    Hang,
}

/// A WebSocket-handshake fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFault {
    /// What happens instead of the upgrade.
    pub kind: HandshakeFaultKind,
    /// Handshakes left to affect; `None` = until changed.
    pub times: Option<u32>,
}

impl HandshakeFault {
    /// Refuse every handshake with `status` until changed.
    pub fn status(status: u16) -> HandshakeFault {
        HandshakeFault {
            kind: HandshakeFaultKind::Status(status),
            times: None,
        }
    }

    /// Never answer an upgrade request, until changed.
    pub fn hang() -> HandshakeFault {
        HandshakeFault {
            kind: HandshakeFaultKind::Hang,
            times: None,
        }
    }

    /// Limits the fault to the next `n` handshakes.
    pub fn times(mut self, n: u32) -> HandshakeFault {
        self.times = Some(n);
        self
    }
}

/// What an open connection can be made to do wrong (see [`FakeGateway::misbehave`]).
///
/// [`FakeGateway::misbehave`]: crate::FakeGateway::misbehave
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A binary frame with these bytes (DingTalk sends text only).
    Binary(Vec<u8>),
    /// A text frame whose payload is not UTF-8 (a protocol violation).
    InvalidUtf8,
    /// The first fragment of a text message that is never finished; the connection then sends
    /// nothing else (no pushes, no SYSTEM pings) while it keeps reading and answering the
    /// client's WebSocket pings, so it looks alive.
    UnfinishedFragment,
    /// This many WebSocket ping frames at once.
    WsPings(usize),
}

/// A fault with a remaining-uses counter.
pub(crate) trait Countdown: Clone {
    fn times_mut(&mut self) -> &mut Option<u32>;
}

impl Countdown for TicketFault {
    fn times_mut(&mut self) -> &mut Option<u32> {
        &mut self.times
    }
}

impl Countdown for HandshakeFault {
    fn times_mut(&mut self) -> &mut Option<u32> {
        &mut self.times
    }
}

/// Takes one use of a fault slot: returns the fault to apply now and clears an exhausted one.
pub(crate) fn take_one<T: Countdown>(slot: &mut Option<T>) -> Option<T> {
    let fault = slot.as_mut()?;
    let applied = fault.clone();
    match fault.times_mut() {
        Some(0) => {
            *slot = None;
            return None;
        }
        Some(n) => {
            *n -= 1;
            if *n == 0 {
                *slot = None;
            }
        }
        None => {}
    }
    Some(applied)
}

/// DingTalk's error body (`requestid`, `code`, `message`) for a status.
pub(crate) fn error_body(status: u16) -> serde_json::Value {
    let (code, message) = match status {
        400 => ("systemError", "系统错误"),
        401 => ("authFailed", "鉴权失败"),
        403 => ("Forbidden.AccessDenied", "没有调用该接口的权限"),
        429 => ("Throttling", "请求频率超过限制"),
        503 => ("ServiceUnavailable", "服务不可用"),
        _ => ("systemError", "系统错误"),
    };
    serde_json::json!({
        "requestid": super::frames::new_uuid().to_uppercase(),
        "code": code,
        "message": message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_counts_down_and_clears() {
        let mut slot = Some(TicketFault::status(503).times(2));
        assert!(take_one(&mut slot).is_some());
        assert!(take_one(&mut slot).is_some());
        assert!(slot.is_none());
        assert!(take_one(&mut slot).is_none());
        let mut forever = Some(HandshakeFault::status(403));
        for _ in 0..3 {
            assert!(take_one(&mut forever).is_some());
        }
    }
}
