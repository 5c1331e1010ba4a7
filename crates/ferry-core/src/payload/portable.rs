//! The rule for JSON that ferry takes in (issue #13 item 10): a value is
//! accepted only when strict parsers read it back as it was sent. Valid
//! JSON (RFC 8259) still allows three things that Python's `json`,
//! PostgreSQL `jsonb`, ClickHouse or JavaScript refuse or silently change,
//! and that I-JSON (RFC 7493) therefore rules out:
//! - a `\uXXXX` escape of a UTF-16 surrogate that is not half of a
//!   high-low pair (`"\ud800"`): it names no Unicode character;
//! - a number beyond the range of a 64-bit float (`1e999`): read as
//!   infinity, or refused;
//! - a key twice in one object: one of the values is dropped, or the
//!   document refused.
//!
//! Everything else is kept byte for byte (escapes, number spellings, key
//! order), so what a client sent is what every reader gets. The check runs
//! in the pass that compacts the text anyway, over text whose syntax
//! serde_json has already checked.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::{self, Write as _};

/// Objects with more keys than this find duplicates in a hash set; smaller
/// ones compare with each earlier key, which allocates nothing.
const KEYS_LINEAR_MAX: usize = 16;
/// Keys and numbers quoted in messages are cut to this many bytes.
const QUOTE_BYTES_MAX: usize = 64;
/// A number with at most this many digits before its point, counting its
/// exponent, is below 1e308 (so below `f64::MAX`) without being parsed.
const DECIMAL_DIGITS_SAFE: i64 = 308;

/// A JSON value that strict parsers cannot read back as sent, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unportable {
    /// Where in the value: empty for the value itself, else a path such as
    /// `.a[2]["b c"]`.
    pub path: String,
    pub problem: Problem,
}

impl Unportable {
    /// The message, the path put under `root` (the field the value came
    /// in): `payload.a.b: duplicate object key "b"; …`.
    pub fn at(&self, root: &str) -> String {
        format!("{root}{}: {}", self.path, self.problem)
    }
}

/// What strict parsers cannot read back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A surrogate escape not paired high-then-low (`escape` as sent, e.g.
    /// `\ud800`); `in_key` when it is in an object key.
    LoneSurrogate { escape: String, in_key: bool },
    /// A number whose magnitude exceeds `f64::MAX` (as sent, maybe cut).
    NumberOutOfRange { number: String },
    /// A key that appears twice in one object (as a JSON string).
    DuplicateKey { key: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::LoneSurrogate { escape, in_key } => write!(
                f,
                "{} holds the lone surrogate {escape}, which is no Unicode character; strict JSON parsers refuse it",
                if *in_key { "an object key" } else { "the string" }
            ),
            Problem::NumberOutOfRange { number } => write!(
                f,
                "the number {number} is out of the range of a 64-bit float (±1.7976931348623157e308); \
                 strict JSON parsers refuse it or read it as infinity"
            ),
            Problem::DuplicateKey { key } => write!(
                f,
                "duplicate object key {key}; strict JSON parsers refuse the object or keep only one of its values"
            ),
        }
    }
}

/// Compacts `text` (drops whitespace outside strings) and checks the rule,
/// in one pass. `text` must be one valid JSON value (checked by serde_json
/// before); on anything else the result is unspecified, but never a panic.
pub(crate) fn compact_portable(text: &str) -> Result<String, Unportable> {
    Scanner { text, out: String::with_capacity(text.len()), frames: Vec::new(), keys: Vec::new() }.run()
}

/// Checks the rule for one valid JSON value (such as an entry's `key`, a
/// JSON string) without keeping a copy of it.
pub fn check_portable(text: &str) -> Result<(), Unportable> {
    compact_portable(text).map(drop)
}

/// One open array or object.
enum Frame<'a> {
    Array {
        /// Of the element being read.
        index: usize,
    },
    Object {
        /// Where this object's keys start in `Scanner::keys`.
        keys_from: usize,
        /// All its keys, once it has more than `KEYS_LINEAR_MAX`.
        many: Option<HashSet<Cow<'a, str>>>,
        /// The current member's key, as sent with its quotes (for paths).
        key: &'a str,
        /// True between `{` or `,` and the next key.
        want_key: bool,
    },
}

struct Scanner<'a> {
    text: &'a str,
    out: String,
    frames: Vec<Frame<'a>>,
    /// The decoded keys of the open objects with few keys, innermost last.
    keys: Vec<Cow<'a, str>>,
}

impl<'a> Scanner<'a> {
    fn run(mut self) -> Result<String, Unportable> {
        let bytes = self.text.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            i = match b {
                b' ' | b'\t' | b'\n' | b'\r' => i + 1,
                b'"' => self.string(i)?,
                b'-' | b'0'..=b'9' => self.number(i)?,
                b'{' | b'[' | b'}' | b']' | b',' | b':' => {
                    self.structural(b);
                    self.out.push(char::from(b));
                    i + 1
                }
                // `true`, `false`, `null`.
                _ => {
                    let end = run_end(bytes, i, |b| b.is_ascii_alphabetic());
                    self.out.push_str(&self.text[i..end]);
                    end
                }
            };
        }
        Ok(self.out)
    }

    fn structural(&mut self, b: u8) {
        match b {
            b'{' => self.frames.push(Frame::Object { keys_from: self.keys.len(), many: None, key: "", want_key: true }),
            b'[' => self.frames.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                if let Some(Frame::Object { keys_from, .. }) = self.frames.pop() {
                    self.keys.truncate(keys_from);
                }
            }
            b',' => match self.frames.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { want_key, .. }) => *want_key = true,
                None => {}
            },
            _ => {}
        }
    }

    /// The string starting at `start` (its opening quote); returns the
    /// index after its closing quote.
    fn string(&mut self, start: usize) -> Result<usize, Unportable> {
        let bytes = self.text.as_bytes();
        let is_key = matches!(self.frames.last(), Some(Frame::Object { want_key: true, .. }));
        let (mut i, mut escaped) = (start + 1, false);
        let end = loop {
            let Some(at) = memchr::memchr2(b'"', b'\\', &bytes[i..]).map(|n| i + n) else { break bytes.len() };
            if bytes[at] == b'"' {
                break at + 1;
            }
            escaped = true;
            i = self.escape(at, is_key)?.min(bytes.len());
        };
        let literal = &self.text[start..end];
        if is_key {
            self.key(literal, escaped)?;
        }
        self.out.push_str(literal);
        Ok(end)
    }

    /// The escape at `at` (its backslash); returns the index after it, or
    /// after the pair it starts.
    fn escape(&self, at: usize, in_key: bool) -> Result<usize, Unportable> {
        let bytes = self.text.as_bytes();
        if bytes.get(at + 1) != Some(&b'u') {
            return Ok(at + 2);
        }
        let unit = |from: usize| bytes.get(from..from + 4).map(hex4);
        match unit(at + 2) {
            Some(0xD800..=0xDBFF)
                if bytes.get(at + 6..at + 8) == Some(b"\\u") && matches!(unit(at + 8), Some(0xDC00..=0xDFFF)) =>
            {
                Ok(at + 12)
            }
            Some(0xD800..=0xDFFF) => {
                let path = self.path(self.frames.len() - usize::from(in_key));
                let escape = self.text.get(at..at + 6).unwrap_or(&self.text[at..]).to_owned();
                Err(Unportable { path, problem: Problem::LoneSurrogate { escape, in_key } })
            }
            _ => Ok(at + 6),
        }
    }

    /// Records the key `literal` (with its quotes) of the innermost object;
    /// a key it already has is an error.
    fn key(&mut self, literal: &'a str, escaped: bool) -> Result<(), Unportable> {
        let name = decode_key(literal, escaped);
        let Some(Frame::Object { keys_from, many, key, want_key }) = self.frames.last_mut() else {
            return Ok(());
        };
        (*key, *want_key) = (literal, false);
        let new = match many {
            Some(set) => set.insert(name.clone()),
            None if self.keys[*keys_from..].contains(&name) => false,
            None if self.keys.len() - *keys_from < KEYS_LINEAR_MAX => {
                self.keys.push(name.clone());
                true
            }
            None => {
                let mut set = HashSet::with_capacity(4 * KEYS_LINEAR_MAX);
                set.extend(self.keys.drain(*keys_from..).chain([name.clone()]));
                *many = Some(set);
                true
            }
        };
        if !new {
            let key = quote_json(&name);
            return Err(Unportable { path: self.path(self.frames.len()), problem: Problem::DuplicateKey { key } });
        }
        Ok(())
    }

    /// The number starting at `start`; returns the index after it.
    fn number(&mut self, start: usize) -> Result<usize, Unportable> {
        let bytes = self.text.as_bytes();
        let digits_from = |i: usize| run_end(bytes, i, |b| b.is_ascii_digit());
        let integer_from = start + usize::from(bytes[start] == b'-');
        let mut end = digits_from(integer_from);
        let integer_digits = (end - integer_from) as i64;
        if bytes.get(end) == Some(&b'.') {
            end = digits_from(end + 1);
        }
        let mut exponent = 0i64;
        if matches!(bytes.get(end), Some(b'e' | b'E')) {
            let sign = bytes.get(end + 1).copied().filter(|&b| b == b'+' || b == b'-');
            let digits = end + 1 + usize::from(sign.is_some());
            end = digits_from(digits);
            // Saturated far beyond any double's exponent: only its size matters.
            let magnitude = bytes
                .get(digits..end)
                .unwrap_or_default()
                .iter()
                .fold(0i64, |e, d| (e * 10 + i64::from(d - b'0')).min(1 << 40));
            exponent = if sign == Some(b'-') { -magnitude } else { magnitude };
        }
        let number = &self.text[start..end];
        // Below 10^(digits before the point + exponent) by its digits alone:
        // almost every number is checked without parsing it. `parse` gives
        // infinity, not an error, past f64::MAX.
        let surely_in_range = integer_digits + exponent <= DECIMAL_DIGITS_SAFE;
        if !surely_in_range && !number.parse::<f64>().is_ok_and(f64::is_finite) {
            let number = cut(number);
            return Err(Unportable {
                path: self.path(self.frames.len()),
                problem: Problem::NumberOutOfRange { number },
            });
        }
        self.out.push_str(number);
        Ok(end)
    }

    /// The path of the value the first `depth` frames lead to.
    fn path(&self, depth: usize) -> String {
        let mut path = String::new();
        for frame in &self.frames[..depth] {
            match frame {
                Frame::Array { index } => {
                    let _ = write!(path, "[{index}]");
                }
                Frame::Object { key, .. } => {
                    let name = decode_key(key, key.contains('\\'));
                    let simple = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if simple && name.len() <= QUOTE_BYTES_MAX {
                        path.push('.');
                        path.push_str(&name);
                    } else {
                        let _ = write!(path, "[{}]", quote_json(&name));
                    }
                }
            }
        }
        path
    }
}

/// The index of the first byte from `start` on that `part` refuses.
fn run_end(bytes: &[u8], start: usize, part: impl Fn(u8) -> bool) -> usize {
    let rest = bytes.get(start..).unwrap_or_default();
    rest.iter().position(|&b| !part(b)).map_or(bytes.len(), |n| start + n)
}

/// The value of four hex digits.
fn hex4(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |acc, &d| (acc << 4) | char::from(d).to_digit(16).unwrap_or(0))
}

/// A key's text: borrowed when it has no escapes, decoded otherwise (so
/// `"a"` and `"\u0061"` are the same key, as they are to every parser).
fn decode_key(literal: &str, escaped: bool) -> Cow<'_, str> {
    let inner = literal.strip_prefix('"').and_then(|l| l.strip_suffix('"')).unwrap_or(literal);
    if !escaped {
        return Cow::Borrowed(inner);
    }
    serde_json::from_str::<String>(literal).map_or(Cow::Borrowed(inner), Cow::Owned)
}

/// `name` as a JSON string, cut for a message.
fn quote_json(name: &str) -> String {
    serde_json::to_string(&cut(name)).unwrap_or_default()
}

/// `text`, or its first `QUOTE_BYTES_MAX` bytes (on a character boundary)
/// and `…`.
fn cut(text: &str) -> String {
    if text.len() <= QUOTE_BYTES_MAX {
        return text.to_owned();
    }
    let end = (0..=QUOTE_BYTES_MAX).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_at(text: &str) -> (String, Problem) {
        let e = compact_portable(text).expect_err(text);
        (e.path, e.problem)
    }

    #[test]
    fn compacts_whitespace_outside_strings_only() {
        let text = " {\n \"a b\" : [1, 2.50e3, \"x \\\" y\\\\\", true ,false, null] ,\"c\":{ } }\t";
        assert_eq!(compact_portable(text).unwrap(), r#"{"a b":[1,2.50e3,"x \" y\\",true,false,null],"c":{}}"#);
    }

    #[test]
    fn keeps_what_strict_parsers_read_back_byte_for_byte() {
        for text in [
            r#""\ud83d\ude00\uD83D\uDE00😀\u0000\/""#,
            r#"[1e308,-1.7976931348623157e308,17976931348623157e292,0.1e309,1e-999,-0.0,18446744073709551616]"#,
            r#"{"a":{"a":1},"b":[{"a":1},{"a":2}],"A":3,"\ud83d\ude00":4}"#,
            r#"{"\"":1,"\\\"":2,"\\":3}"#,
        ] {
            assert_eq!(compact_portable(text).as_deref(), Ok(text));
        }
        let wide: String = (0..1000).map(|i| format!(r#""k{i}":{i},"#)).collect();
        let wide = format!("{{{}}}", wide.trim_end_matches(','));
        assert_eq!(compact_portable(&wide).as_deref(), Ok(wide.as_str()));
    }

    #[test]
    fn lone_surrogates_are_refused_in_strings_and_keys() {
        for (text, path, escape, in_key) in [
            (r#""\ud800""#, "", r"\ud800", false),
            (r#""\udfff x""#, "", r"\udfff", false),
            (r#"{"a":{"b":"x\uDC00y"}}"#, ".a.b", r"\uDC00", false),
            (r#"["ok","\ud800\u0041"]"#, "[1]", r"\ud800", false),
            (r#""\ud800\ud800""#, "", r"\ud800", false),
            (r#""\ud83d\ude00\ude00""#, "", r"\ude00", false),
            (r#""\ud800\n""#, "", r"\ud800", false),
            (r#"{"ok":{"\udbff":1}}"#, ".ok", r"\udbff", true),
            (r#"{"a":1,"x\udbffy":1}"#, "", r"\udbff", true),
        ] {
            let want = Problem::LoneSurrogate { escape: escape.into(), in_key };
            assert_eq!(problem_at(text), (path.to_owned(), want), "{text}");
        }
    }

    #[test]
    fn numbers_beyond_a_double_are_refused() {
        let huge = format!("1{}", "0".repeat(309));
        for (text, path, number) in [
            ("1e999", "", "1e999"),
            (r#"{"n":[0,-1e999]}"#, ".n[1]", "-1e999"),
            ("1.8E+308", "", "1.8E+308"),
            ("17976931348623159e292", "", "17976931348623159e292"),
            (huge.as_str(), "", &cut(&huge)),
        ] {
            let want = Problem::NumberOutOfRange { number: number.into() };
            assert_eq!(problem_at(text), (path.to_owned(), want), "{text}");
        }
        // 308 digits is below 1e308; the largest double is in range.
        for text in [&"9".repeat(308), "9.99e307", "1e-99999999999999999999", "0.0000e400", "1797e305"] {
            assert!(compact_portable(text).is_ok(), "{text}");
        }
        for text in ["1798e305", "10e308", "0.1e310", "1e99999999999999999999"] {
            assert!(compact_portable(text).is_err(), "{text}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_however_escaped() {
        let many: String = (0..40).map(|i| format!(r#""k{i}":{i},"#)).collect();
        let many = format!(r#"{{"x":{{{many}"k39":0}}}}"#);
        for (text, path, key) in [
            (r#"{"a":1,"a":2}"#, ".a", "a"),
            (r#"[{"x":{"b":1,"c":2,"b":3}}]"#, "[0].x.b", "b"),
            (r#"{"a":1,"\u0061":2}"#, ".a", "a"),
            (r#"{"odd key":{"n":1,"n":1}}"#, r#"["odd key"].n"#, "n"),
            (many.as_str(), ".x.k39", "k39"),
        ] {
            let want = Problem::DuplicateKey { key: format!("\"{key}\"") };
            assert_eq!(problem_at(text), (path.to_owned(), want), "{text}");
        }
        // The same key in sibling and nested objects is no duplicate; a
        // closed object's keys are forgotten.
        assert!(compact_portable(r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":1}],"c":{"b":1}}"#).is_ok());
    }

    #[test]
    fn messages_name_the_place_under_the_field() {
        let e = compact_portable(r#"{"a":{"b":1,"b":2}}"#).unwrap_err();
        let message = e.at("payload");
        assert!(message.starts_with(r#"payload.a.b: duplicate object key "b""#), "{message}");
        let long = "k".repeat(200);
        let e = compact_portable(&format!(r#"{{"{long}":[1e999]}}"#)).unwrap_err();
        assert_eq!(e.path, format!("[\"{}…\"][0]", "k".repeat(QUOTE_BYTES_MAX)));
    }

    #[test]
    fn invalid_json_does_not_panic() {
        for text in [
            "1e",
            "1e-",
            "-",
            "1.",
            "\"",
            "\"\\",
            "\"\\u12",
            "\"\\ud800\\u",
            "{\"a",
            "]]]",
            "{\"a\":1,",
            "-",
            "\"\\ud800\\ud",
        ] {
            let _ = compact_portable(text);
        }
    }

    /// Any JSON value without the three problems (serde_json's `Map` keeps
    /// one value per key; its floats are finite), pretty-printed, comes out
    /// as serde_json's own compact text.
    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let text = r#"[a-z\\"\x00-\x1f é😀\u{ffff}]{0,12}"#;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((text, inner), 0..24)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn portable_json_compacts_to_what_serde_json_writes(value in json_value()) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            proptest::prop_assert_eq!(compact_portable(&pretty), Ok(serde_json::to_string(&value).unwrap()));
        }
    }
}
