//! Identifiers shaped like DingTalk's: messageIds, tickets/UUIDs, msgIds, session tokens.
//!
//! Random but realistic, so a client that logs or parses them sees what production sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngExt;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A messageId shaped like DingTalk's: `<hex IPv4>_<hex>_<hex ms>_<hex counter>`.
pub fn new_message_id() -> String {
    let mut rng = rand::rng();
    let ip: u32 = rng.random_range(0x0a00_0000..0xdfff_ffff);
    let worker: u32 = rng.random_range(0x100..0xfff);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 0x23b_f2a0;
    format!("{ip:08x}_{worker:x}_{:x}_{n:x}", now_ms())
}

/// A random version-1-looking UUID, like DingTalk's tickets (`98d1ea6f-c580-11ee-...`).
pub fn new_uuid() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-11ee-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[16..20],
        &h[20..32]
    )
}

/// `n` random lowercase hex digits.
pub fn random_hex(n: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(HEX[rng.random_range(0..16)]))
        .collect()
}

pub(crate) fn random_b64(n: usize) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(B64[rng.random_range(0..64)]))
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
