//! Everything before the WebSocket: the TLS trust store, the proxy decision, and the ticket
//! request to `connections/open`.

pub mod http;
pub mod proxy;
pub mod ticket;
pub mod tls;
