//! Request bodies (issue #13 item 9): read whole, at most `max_body_bytes`
//! as sent and again once decoded. `Content-Encoding: gzip` is inflated as
//! the bytes arrive and inflating stops at the cap, so a zip bomb costs at
//! most one body's worth of memory; any other coding is 415.

use std::io::Write as _;

use axum::body::{BodyDataStream, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use flate2::write::MultiGzDecoder;
use futures_util::StreamExt as _;

use crate::{AppState, error::ApiError};

/// A header value quoted in a message is cut to this many bytes.
const QUOTED_HEADER_BYTES_MAX: usize = 64;

/// A request body, decoded. Handlers extract it after the middleware has
/// run, so a request without a valid token is refused before any of its
/// body is read.
pub(crate) struct RequestBody(pub Bytes);

impl FromRequest<AppState> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let coding = ContentCoding::of(req.headers())?;
        let announced =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let mut chunks = req.into_body().into_data_stream();
        let read = match coding {
            // Refused before a byte is kept when the length says so.
            _ if announced.is_some_and(|n| n > limit as u64) => Err(too_large(limit, coding)),
            ContentCoding::Identity => read_plain(&mut chunks, limit, announced.unwrap_or(0) as usize).await,
            ContentCoding::Gzip => inflate(&mut chunks, limit).await,
        };
        if read.is_err() {
            // The client may still be sending: reading and dropping up to
            // one more body's worth lets it read the refusal rather than
            // see the connection reset under it.
            discard(&mut chunks, limit).await;
        }
        read.map(Self)
    }
}

/// The content codings ferry takes (RFC 9110 §8.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentCoding {
    Identity,
    Gzip,
}

impl ContentCoding {
    /// Codings are case-insensitive and `x-gzip` is `gzip`. A list of
    /// codings, or two headers, means a body encoded more than once: not
    /// taken, like any other coding.
    fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
        let Some(value) = values.next() else { return Ok(Self::Identity) };
        let coding = value.to_str().unwrap_or_default().trim();
        if values.next().is_none() {
            if coding.eq_ignore_ascii_case("identity") {
                return Ok(Self::Identity);
            }
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                return Ok(Self::Gzip);
            }
        }
        let sent: Vec<String> = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| cut(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Encoding {:?} is not supported: send the body as is, or gzip it once", sent.join(", ")),
        ))
    }
}

fn cut(text: &str) -> String {
    if text.len() <= QUOTED_HEADER_BYTES_MAX {
        return text.to_owned();
    }
    let end = (0..=QUOTED_HEADER_BYTES_MAX).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}…", &text[..end])
}

fn too_large(limit: usize, coding: ContentCoding) -> ApiError {
    let what = match coding {
        ContentCoding::Identity => "the request body exceeds",
        ContentCoding::Gzip => "the request body, as sent or once inflated, exceeds",
    };
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("{what} max_body_bytes ({limit} bytes)"))
}

fn unreadable(e: &axum::Error) -> ApiError {
    ApiError::bad_request("invalid_body", format!("the request body could not be read: {e}"))
}

/// The body as sent, refused past `limit` bytes.
async fn read_plain(chunks: &mut BodyDataStream, limit: usize, announced: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity(announced.min(limit));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| unreadable(&e))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(limit, ContentCoding::Identity));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// The body inflated from gzip (one member or several, RFC 1952 §2.2),
/// refused past `limit` bytes as sent or inflated: inflating stops at the
/// first byte over. Nothing after the last member is allowed.
async fn inflate(chunks: &mut BodyDataStream, limit: usize) -> Result<Bytes, ApiError> {
    let mut decoder = MultiGzDecoder::new(Capped { out: Vec::new(), limit, over: false });
    let mut sent = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| unreadable(&e))?;
        sent += chunk.len();
        if sent > limit {
            return Err(too_large(limit, ContentCoding::Gzip));
        }
        // Past the cap the decoder's writes fail: inflating stops there.
        decoder.write_all(&chunk).map_err(|e| not_inflated(&decoder, &e))?;
    }
    if sent == 0 {
        // Nothing was encoded: an empty body is empty in any coding (an
        // exporter reset, say, with the client's usual headers).
        return Ok(Bytes::new());
    }
    // Ends the stream: a member cut short is an error here.
    decoder.try_finish().map_err(|e| not_inflated(&decoder, &e))?;
    let capped = decoder.finish().map_err(|e| not_gzip(&e))?;
    Ok(capped.out.into())
}

/// Why the decoder failed: the cap, or a stream that is not gzip.
fn not_inflated(decoder: &MultiGzDecoder<Capped>, e: &std::io::Error) -> ApiError {
    let capped = decoder.get_ref();
    if capped.over { too_large(capped.limit, ContentCoding::Gzip) } else { not_gzip(e) }
}

/// Reads and drops the rest of a body, up to `budget` bytes.
async fn discard(chunks: &mut BodyDataStream, mut budget: usize) {
    while let Some(Ok(chunk)) = chunks.next().await {
        let Some(left) = budget.checked_sub(chunk.len()) else { return };
        budget = left;
    }
}

fn not_gzip(e: &std::io::Error) -> ApiError {
    ApiError::bad_request("invalid_body", format!("the request body is not valid gzip: {e}"))
}

/// Where inflated bytes go: refuses a write that would pass `limit`.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    /// Set when a write was refused, to tell that from a broken stream.
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + bytes.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("over max_body_bytes"));
        }
        self.out.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn inflated(body: Vec<u8>, limit: usize) -> Result<Vec<u8>, (StatusCode, String)> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut chunks = axum::body::Body::from(body).into_data_stream();
        runtime.block_on(inflate(&mut chunks, limit)).map(|b| b.to_vec()).map_err(|e| (e.status, e.message))
    }

    #[test]
    fn one_member_or_several_inflate_to_their_concatenation() {
        assert_eq!(inflated(gzip(b"hello"), 100).unwrap(), b"hello");
        assert_eq!(inflated([gzip(b"hel"), gzip(b""), gzip(b"lo")].concat(), 100).unwrap(), b"hello");
        assert_eq!(inflated(Vec::new(), 100).unwrap(), b"");
    }

    #[test]
    fn inflating_stops_at_the_limit_and_exactly_the_limit_passes() {
        let zeros = gzip(&vec![0; 1 << 20]);
        assert_eq!(inflated(zeros.clone(), 1 << 20).unwrap().len(), 1 << 20);
        let (status, message) = inflated(zeros.clone(), (1 << 20) - 1).unwrap_err();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{message}");
        // As sent: the compressed bytes count against the limit too.
        let (status, _) = inflated(zeros.clone(), zeros.len() - 1).unwrap_err();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn a_broken_stream_is_400_saying_gzip() {
        let good = gzip(br#"{"payload":1}"#);
        let mut bad_crc = good.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 0xff;
        let mut bad_length = good.clone();
        let at = bad_length.len() - 1;
        bad_length[at] ^= 0xff;
        for body in [
            br#"{"payload":1}"#.to_vec(),
            good[..good.len() - 6].to_vec(),
            good[..5].to_vec(),
            bad_crc,
            bad_length,
            [good.clone(), b"{}".to_vec()].concat(),
        ] {
            let (status, message) = inflated(body.clone(), 1000).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {message}");
            assert!(message.contains("not valid gzip"), "{message}");
        }
    }

    #[test]
    fn only_identity_and_gzip_once_are_taken() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_ENCODING, v.parse().unwrap());
            }
            h
        };
        assert_eq!(ContentCoding::of(&headers(&[])).unwrap(), ContentCoding::Identity);
        for v in ["identity", "IDENTITY", " identity "] {
            assert_eq!(ContentCoding::of(&headers(&[v])).unwrap(), ContentCoding::Identity, "{v}");
        }
        for v in ["gzip", "GZip", "x-gzip", "X-GZIP"] {
            assert_eq!(ContentCoding::of(&headers(&[v])).unwrap(), ContentCoding::Gzip, "{v}");
        }
        for values in [&["br"][..], &["deflate"], &["gzip, gzip"], &["identity, gzip"], &[""], &["gzip", "gzip"]] {
            let e = ContentCoding::of(&headers(values)).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
                "{values:?}"
            );
        }
        let e = ContentCoding::of(&headers(&[&"z".repeat(1000)])).unwrap_err();
        assert!(e.message.len() < 200, "{}", e.message);
    }
}
