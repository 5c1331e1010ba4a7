//! Keeping secrets out of what the runtime reports (SPEC §4: URL userinfo,
//! passwords and tokens are never echoed in status, events, logs or
//! errors). Sinks redact at the source, where they build an error; the
//! runtime runs every sink error through [`Secrets::redact`] again before it
//! reaches `last_error`, an `exporter.failed` event, a log line or a
//! dead-letter entry, so a sink that forgot is still covered.

pub use ferry_core::redact::{REDACTED, redact_userinfo};

/// Values shorter than this are not searched for: they would match inside
/// ordinary words and numbers and garble every message, and are too short
/// to be a secret worth the name.
pub const SECRET_LEN_MIN: usize = 4;

/// The configured values a sink's messages must never show (passwords,
/// tokens, header values, secret query values).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Longest first, so a value that contains another is removed whole.
    values: Vec<String>,
}

impl Secrets {
    /// Adds `value` (ignored when shorter than [`SECRET_LEN_MIN`]).
    pub fn add(&mut self, value: &str) {
        if value.len() >= SECRET_LEN_MIN && !self.values.iter().any(|v| v == value) {
            self.values.push(value.to_owned());
            self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    /// `text` with every URL's userinfo and every known secret value
    /// replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = redact_userinfo(text);
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_removed_from_every_url_in_a_message() {
        let cases = [
            ("POST http://u:p@h:1/x?q=1 failed", "POST http://***@h:1/x?q=1 failed"),
            ("a https://user@host b ftp://x:y@z", "a https://***@host b ftp://***@z"),
            ("\"http://a:b@c\" and http://d/e@f", "\"http://***@c\" and http://d/e@f"),
            ("http://a:p@ss@host/", "http://***@host/"),
            ("no url here, just a@b and ://", "no url here, just a@b and ://"),
            ("http://host:80/path", "http://host:80/path"),
            ("tail http://a:b@", "tail http://***@"),
        ];
        for (text, want) in cases {
            assert_eq!(redact_userinfo(text), want, "{text:?}");
        }
    }

    #[test]
    fn known_values_are_removed_longest_first_and_short_ones_are_kept() {
        let mut secrets = Secrets::default();
        for v in ["token", "token-long", "abc", ""] {
            secrets.add(v);
        }
        assert_eq!(secrets.redact("token-long and token, abc"), "*** and ***, abc");
        assert_eq!(secrets.redact("http://x:token@h/"), "http://***@h/");
    }
}
