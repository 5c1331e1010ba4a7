//! Sizes and durations as people write them in config files: `"4MiB"`,
//! `"50ms"`, `"30d"`. One parser for the whole project, so every key that
//! takes a size or a duration accepts the same forms.

use std::time::Duration;

use serde::Deserialize;

/// A byte size written as `"4MiB"`, `"512KB"` or a plain integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::str::FromStr for Size {
    type Err = String;

    /// `"4MiB"`, `"512KB"`, `"100"` (the command line's form of a size).
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("invalid size {s:?} (e.g. \"4MiB\"): {e}"))
    }
}

/// A duration written as `"50ms"`, `"30s"`, `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Seconds)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} (e.g. \"50ms\", \"30d\"): {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_in_every_written_form() {
        let size = |v: serde_json::Value| serde_json::from_value::<Size>(v).map(|s| s.0);
        assert_eq!(size(serde_json::json!("4MiB")).unwrap(), 4 << 20);
        assert_eq!(size(serde_json::json!(512)).unwrap(), 512);
        assert!(size(serde_json::json!("lots")).is_err());
        let secs = |v: &str| serde_json::from_value::<Seconds>(serde_json::json!(v)).map(|s| s.0);
        assert_eq!(secs("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(secs("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(secs("soon").is_err());
    }
}
