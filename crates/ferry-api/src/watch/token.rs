//! The resume token a watch sends as each event's SSE `id:`:
//! `{session:016x}.{epoch}.{seq}`, at most `WATCH_TOKEN_BYTES_MAX` bytes
//! whatever the number of ledgers. `seq` counts the events the session sent
//! on its current branch; `epoch` counts its reconnects, so a token of a
//! branch a reconnect abandoned is told from a current one.

use std::fmt;

use ferry_core::limits::WATCH_TOKEN_BYTES_MAX;
use ferry_store::WATCH_SESSION_DIGITS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub session: u64,
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}.{}.{}", self.session, self.epoch, self.seq)
    }
}

impl Token {
    /// Parses a token, saying what is wrong with one that is not.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > WATCH_TOKEN_BYTES_MAX {
            return Err(format!("longer than {WATCH_TOKEN_BYTES_MAX} bytes"));
        }
        let mut parts = text.split('.');
        let (Some(session), Some(epoch), Some(seq), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not SESSION.EPOCH.SEQ".into());
        };
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if session.len() != WATCH_SESSION_DIGITS || !session.bytes().all(lower_hex) {
            return Err(format!("the session is not {WATCH_SESSION_DIGITS} lower-case hex digits"));
        }
        let number = |s: &str, what: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("the {what} is not a decimal number"));
            }
            s.parse::<u64>().map_err(|_| format!("the {what} is out of range"))
        };
        Ok(Self {
            session: u64::from_str_radix(session, 16).map_err(|e| e.to_string())?,
            epoch: number(epoch, "epoch")?,
            seq: number(seq, "sequence number")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_stay_bounded_and_reject_junk() {
        let t = Token { session: 0x7f3a_9c2e_41d0_b8e5, epoch: 3, seq: 1042 };
        assert_eq!(t.to_string(), "7f3a9c2e41d0b8e5.3.1042");
        assert_eq!(Token::parse(&t.to_string()), Ok(t));
        let widest = Token { session: u64::MAX, epoch: u64::MAX, seq: u64::MAX };
        assert_eq!(widest.to_string().len(), WATCH_TOKEN_BYTES_MAX);
        assert_eq!(Token::parse(&widest.to_string()), Ok(widest));
        for bad in [
            "",
            "x",
            "1796402466583/p.a:4",
            "7f3a9c2e41d0b8e5.3",
            "7f3a9c2e41d0b8e5.3.4.5",
            "7F3A9C2E41D0B8E5.3.4",
            "7f3a9c2e41d0b8e.3.4",
            "7f3a9c2e41d0b8e5.-3.4",
            "7f3a9c2e41d0b8e5.3.+4",
            "7f3a9c2e41d0b8e5..4",
            "7f3a9c2e41d0b8e5.3.99999999999999999999",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }
}
