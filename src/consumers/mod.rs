//! Local consumers on the consumer socket: newline-delimited JSON both ways. A peer that sends
//! a hello within 200 ms is a member of a consumer group (durable, at-least-once, acks); one
//! that sends nothing is a tap (a live view). docs/consumer-docs/protocol.md describes the protocol.
//!
//! Layout: [`line`] builds the consumer line (the one place it is built), [`protocol`] parses
//! what consumers send, [`hub`] fans committed messages out, [`peer`] classifies a new
//! connection, [`tap`] and [`member`] serve the two kinds, [`groups`] holds the groups, and
//! [`io`] reads and writes the sockets.

pub mod groups;
pub mod hub;
pub mod io;
pub mod line;
pub mod member;
pub mod peer;
pub mod protocol;
mod tap;
