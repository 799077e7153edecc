//! The http check: a minimal HTTP/1.1 client (plain http only) that sends one GET with
//! `Connection: close`, accepts a 2xx or 3xx status, and — when asked — looks for a substring in
//! the first 64 KiB of the body. Bodies are never logged.

use std::borrow::Cow;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::check::host_port;
use super::error::Failure;

/// Response headers longer than this are not a health endpoint's.
const HEAD_LIMIT: usize = 64 * 1024;
/// How much of the body is searched for the expected text.
const BODY_LIMIT: usize = 64 * 1024;

/// One run, unbounded: the caller applies the timeout.
pub(super) async fn probe(
    host: &str,
    port: u16,
    path: &str,
    contains: Option<&str>,
) -> Result<(), Failure> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(Failure::Io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: herald\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        host_port(host, port)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(Failure::Io)?;

    let mut buf = Vec::new();
    let head = loop {
        let head = read_head(&mut stream, &mut buf).await?;
        // An interim response (100 Continue, 103 Early Hints) is followed by the real one.
        if !(100..200).contains(&head.status) {
            break head;
        }
        buf.drain(..head.len);
    };
    if !(200..400).contains(&head.status) {
        return Err(Failure::Status(head.status));
    }
    let Some(needle) = contains else {
        return Ok(());
    };
    let mut body = buf.split_off(head.len);
    loop {
        if body_contains(&body, &head.framing, needle.as_bytes()) {
            return Ok(());
        }
        let complete = match head.framing {
            Framing::Length(length) => body.len() >= length,
            Framing::Chunked => dechunk(&body).1,
            Framing::Close => false,
        };
        if complete || body.len() >= BODY_LIMIT {
            return Err(Failure::BodyMismatch);
        }
        if read_some(&mut stream, &mut body, BODY_LIMIT).await? == 0 {
            return Err(Failure::BodyMismatch);
        }
    }
}

/// What the response headers say.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
    /// Bytes up to and including the blank line.
    len: usize,
}

/// How the body's end is known.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// Reads into `buf` until it holds a whole response head, and parses it.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, Failure> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(head);
        }
        if buf.len() >= HEAD_LIMIT {
            return Err(Failure::NotHttp);
        }
        if read_some(stream, buf, HEAD_LIMIT).await? == 0 {
            return Err(Failure::Truncated);
        }
    }
}

/// `Ok(None)` while the head is incomplete; [`Failure::NotHttp`] as soon as the bytes cannot be
/// the start of an HTTP/1 response (so a non-HTTP server fails at once, not at the timeout).
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    const VERSION: &[u8] = b"HTTP/1.";
    let prefix = buf.len().min(VERSION.len());
    if buf[..prefix] != VERSION[..prefix] {
        return Err(Failure::NotHttp);
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(Failure::NotHttp)?;
    let mut framing = Framing::Close;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            // Chunked wins over a Content-Length (RFC 9112, 6.3).
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("content-length")
            && framing != Framing::Chunked
            && let Ok(length) = value.parse()
        {
            framing = Framing::Length(length);
        }
    }
    Ok(Some(Head {
        status,
        framing,
        len: end + 4,
    }))
}

/// Whether the body read so far contains `needle`. A chunked body is searched decoded (so the
/// text may straddle chunks) and raw (in case the encoding is broken).
fn body_contains(raw: &[u8], framing: &Framing, needle: &[u8]) -> bool {
    let body = match framing {
        Framing::Length(length) => Cow::Borrowed(&raw[..raw.len().min(*length)]),
        Framing::Chunked => Cow::Owned(dechunk(raw).0),
        Framing::Close => Cow::Borrowed(raw),
    };
    find(&body, needle).is_some() || (*framing == Framing::Chunked && find(raw, needle).is_some())
}

/// Decodes as much of a chunked body as is there; `true` once the last (empty) chunk is seen.
fn dechunk(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return (out, false);
        };
        let size_line = String::from_utf8_lossy(&rest[..line_end]);
        // Chunk extensions (";name=value") are allowed after the size.
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (out, false);
        };
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (out, true);
        }
        if rest.len() < size {
            out.extend_from_slice(rest);
            return (out, false);
        }
        out.extend_from_slice(&rest[..size]);
        match rest[size..].strip_prefix(b"\r\n") {
            Some(after) => rest = after,
            None => return (out, false),
        }
    }
}

/// Reads once into `buf`, never past `limit` bytes; returns the count (0 at the end).
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, Failure> {
    let mut chunk = [0u8; 8 * 1024];
    let room = limit.saturating_sub(buf.len()).min(chunk.len());
    let n = stream.read(&mut chunk[..room]).await.map_err(Failure::Io)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads() {
        let head = |status, framing, len| {
            Ok(Some(Head {
                status,
                framing,
                len,
            }))
        };
        // (bytes received so far, parsed)
        /// `Ok(None)`: incomplete so far; `Err(())`: not HTTP.
        type Parsed = Result<Option<Head>, ()>;
        let table: [(&[u8], Parsed); 10] = [
            (b"", Ok(None)),
            (b"HTTP/1.1 200 OK\r\n", Ok(None)),
            (b"HTTP/1.1 200 OK\r\n\r\n", head(200, Framing::Close, 19)),
            (
                b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 5\r\n\r\ndown!",
                head(503, Framing::Length(5), 55),
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
                head(200, Framing::Chunked, 66),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                head(200, Framing::Chunked, 72),
            ),
            (
                b"HTTP/1.1 301\r\nLocation: /x\r\n\r\n",
                head(301, Framing::Close, 30),
            ),
            (b"SSH-2.0-OpenSSH_9.6\r\n", Err(())),
            (b"HTTP/1.1 2000 OK\r\n\r\n", Err(())),
            (b"HTTP/1.1 OK\r\n\r\n", Err(())),
        ];
        for (bytes, want) in table {
            let got = parse_head(bytes).map_err(|_| ());
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn chunked_bodies() {
        // (raw body, decoded, complete)
        let table: [(&[u8], &[u8], bool); 6] = [
            (b"", b"", false),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello", true),
            (b"3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n", b"hello", true),
            (b"3\r\nhel\r\n2\r\nl", b"hell", false),
            (b"A\r\n0123456789\r\n", b"0123456789", false),
            (b"zz\r\nhello", b"", false),
        ];
        for (raw, decoded, complete) in table {
            let (got, got_complete) = dechunk(raw);
            assert_eq!(
                (got.as_slice(), got_complete),
                (decoded, complete),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn body_search() {
        // (body, framing, needle, found)
        let table: [(&[u8], Framing, &str, bool); 6] = [
            (b"status: ok", Framing::Close, "ok", true),
            (b"status: down", Framing::Close, "ok", false),
            // Bytes past Content-Length are not the body.
            (b"down ok", Framing::Length(4), "ok", false),
            // The text straddles two chunks.
            (
                b"2\r\n o\r\n1\r\nk\r\n0\r\n\r\n",
                Framing::Chunked,
                "ok",
                true,
            ),
            // Broken chunked encoding: the raw bytes are searched too.
            (b"zz\r\nok", Framing::Chunked, "ok", true),
            (b"2\r\nno\r\n0\r\n\r\n", Framing::Chunked, "ok", false),
        ];
        for (body, framing, needle, found) in table {
            assert_eq!(
                body_contains(body, &framing, needle.as_bytes()),
                found,
                "{:?} {framing:?} {needle:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
