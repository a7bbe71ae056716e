//! The DingTalk Stream wire format, both directions and both sides: [`frame`] is what a client
//! reads (downstream frames) and writes (ACKs); [`gateway`] is what a gateway writes (frames)
//! and reads (ACKs, parsed as tolerantly as the real gateway accepts them). The daemon's
//! connection uses the client side; the simulator and the local SDK endpoint use the gateway
//! side. docs/protocol.md describes the format.

pub mod frame;
pub mod gateway;

pub use frame::{Ack, DataInfo, Frame, FrameError, FrameKind};

/// Topic of bot messages (`CALLBACK`).
pub const TOPIC_BOT_MESSAGE: &str = "/v1.0/im/bot/messages/get";
/// Topic of interactive-card callbacks (`CALLBACK`).
pub const TOPIC_CARD_CALLBACK: &str = "/v1.0/card/instances/callback";
/// The only EVENT topic DingTalk allows.
pub const TOPIC_EVENT_ALL: &str = "*";
/// Reason DingTalk gave in a real `disconnect` frame.
pub const DISCONNECT_REASON: &str = "persistent connection is timeout";
