//! Value types of the config file: durations (`500ms`, `10s`, `5m`), sizes (`64KiB`, `1GiB`)
//! and octal file modes (`"0660"`). Each parses from the YAML string and prints back the same
//! way, so `check-config` shows what the operator would write.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::fmt;
use std::time::Duration;

/// A duration written the humantime way (`500ms`, `10s`, `5m`, `7d`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Builds a constant default.
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
    /// Builds a constant default.
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
    /// The plain `std` duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// No duration in the config may exceed this, whatever its key (per-key bounds are tighter,
/// see `validate.rs`): far beyond any sane setting, far below what `Instant` arithmetic can
/// hold, so no value that parses can make a later addition overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_DURATION_DAYS * 86400);
/// [`MAX_DURATION`] in days, as error messages write it.
const MAX_DURATION_DAYS: u64 = 3650;

/// Parses a duration the way the config file writes it, bounded by [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); write e.g. \"500ms\", \"10s\", \"5m\"")
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s:?} is too long (at most {MAX_DURATION_DAYS}d)"
        ));
    }
    Ok(d)
}

/// The errors are raised inside the deserializer's own `deserialize_str` call (a visitor, not
/// a `String` checked afterwards), so the YAML parser attaches the value's line and key path,
/// not those of the section around it.
impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"10s\" or \"5m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                parse_duration(s).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A byte size (`64KiB`, `1MiB`, `1GiB`, or a plain number of bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024 * 1024)
    }
    /// The number of bytes.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("B", 1),
        ];
        for (name, factor) in UNITS {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{name}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// No size in the config may exceed this, whatever its key (per-key bounds are tighter, see
/// `validate.rs`).
pub const MAX_SIZE: u64 = 1 << 50;

/// Parses a size the way the config file writes it (`64KiB`, `1GiB`, or bytes), bounded by
/// [`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<u64, String> {
    let n = s
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            format!("invalid size {s:?} ({e}); write e.g. \"64KiB\", \"1MiB\", \"1GiB\"")
        })?;
    check_size(n).map_err(|e| format!("size {s:?} {e}"))
}

fn check_size(n: u64) -> Result<u64, String> {
    if n > MAX_SIZE {
        return Err(format!("is too large (at most {})", ByteSize(MAX_SIZE)));
    }
    Ok(n)
}

/// A string with a unit or a plain integer; as with durations, every error is raised inside
/// the deserializer's call, so it carries the value's own line.
impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64KiB\", \"1MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                check_size(n)
                    .map(ByteSize)
                    .map_err(|e| E::custom(format_args!("size {n} {e}")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format_args!("size {n} is negative"))),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_size(s).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A Unix permission mode written in octal, as a string (`"0660"`), so YAML does not read it
/// as a decimal number.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Debug for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal permission string such as \"0660\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<FileMode, E> {
                match u32::from_str_radix(s.trim(), 8) {
                    Ok(m) if m <= 0o777 => Ok(FileMode(m)),
                    _ => Err(E::custom(format_args!(
                        "invalid mode {s:?}; write an octal permission string such as \"0660\""
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(s: &str) -> Result<HumanDuration, serde_json::Error> {
        serde_json::from_str(&format!("{s:?}"))
    }

    #[test]
    fn durations() {
        assert_eq!(dur("500ms").unwrap().get(), Duration::from_millis(500));
        assert_eq!(dur("5m").unwrap().get(), Duration::from_secs(300));
        assert_eq!(dur("7d").unwrap().get(), Duration::from_secs(7 * 86400));
        assert!(
            dur("ten seconds")
                .unwrap_err()
                .to_string()
                .contains("invalid duration")
        );
        assert_eq!(HumanDuration::from_secs(90).to_string(), "1m 30s");
    }

    #[test]
    fn sizes() {
        let p = |s: &str| serde_json::from_str::<ByteSize>(s);
        assert_eq!(p("\"64KiB\"").unwrap(), ByteSize::kib(64));
        assert_eq!(p("\"1GiB\"").unwrap(), ByteSize::gib(1));
        assert_eq!(p("4096").unwrap(), ByteSize(4096));
        assert!(p("\"lots\"").is_err());
        assert_eq!(ByteSize::mib(1).to_string(), "1MiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
    }

    #[test]
    fn modes() {
        let p = |s: &str| serde_json::from_str::<FileMode>(s);
        assert_eq!(p("\"0660\"").unwrap(), FileMode(0o660));
        assert!(p("\"0999\"").is_err());
        assert!(p("\"01777\"").is_err());
        assert_eq!(FileMode(0o600).to_string(), "0600");
    }
}
