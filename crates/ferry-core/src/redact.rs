//! URL userinfo out of messages (SPEC §4: URL userinfo, passwords and
//! tokens are never echoed in status, events, logs or errors). Drivers and
//! clients may echo the URL they were given, so every message that may
//! hold one goes through [`redact_userinfo`]: the exporters' sinks
//! (`ferry_export::redact`, which adds configured secret values) and the
//! outbox sources alike.

/// What stands in for a removed secret.
pub const REDACTED: &str = "***";

/// `text` with the userinfo of every `scheme://user:password@host` in it
/// replaced by [`REDACTED`] (`scheme://***@host`), whether or not the URL
/// parses: it works on any message, a sink's or a library's.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        // The authority ends where the path, query or fragment starts, or
        // where the URL itself ends inside a message.
        let end =
            after.find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`') || c.is_whitespace());
        let authority = &after[..end.unwrap_or(after.len())];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                out.push_str(REDACTED);
                rest = &after[userinfo_end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
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
            ("connect postgres://app:s3cret@db:5432/app failed", "connect postgres://***@db:5432/app failed"),
            ("mysql://root@h/x and mysql://u:p@h2", "mysql://***@h/x and mysql://***@h2"),
            ("no url here", "no url here"),
        ];
        for (text, want) in cases {
            assert_eq!(redact_userinfo(text), want, "{text:?}");
        }
    }
}
