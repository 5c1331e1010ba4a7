//! Keeping the source URL's password out of everything a source reports
//! (status, events, logs): database drivers may echo the URL they were
//! given, so every message goes through [`redact_userinfo`] first.

/// What stands in for removed userinfo.
pub const REDACTED: &str = "***";

/// `text` with the userinfo of every `scheme://user:password@host` in it
/// replaced by [`REDACTED`] (`scheme://***@host`), whether or not the URL
/// parses.
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
        for (text, want) in [
            ("connect postgres://app:s3cret@db:5432/app failed", "connect postgres://***@db:5432/app failed"),
            ("mysql://root@h/x and mysql://u:p@h2", "mysql://***@h/x and mysql://***@h2"),
            ("no url here", "no url here"),
        ] {
            assert_eq!(redact_userinfo(text), want);
        }
    }
}
