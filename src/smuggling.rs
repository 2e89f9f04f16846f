//! The request-smuggling rules every HTTP/1 request head is judged by before it is parsed.
//!
//! RFC 9112 6.3 lets a server read a request that carries both `Content-Length` and
//! `Transfer-Encoding` by the latter, and merge repeated equal `Content-Length`s. A gateway
//! refuses such requests instead: no honest client sends them, and the parties behind a gateway
//! may frame them differently. Refused, with 400 `gateway-bad-request` (`server::h1`), and the
//! connection closed after the answer:
//! - `Content-Length` and `Transfer-Encoding` together, either repeated, a `Content-Length`
//!   that is not one decimal number, a `Transfer-Encoding` other than `chunked` (or in an
//!   HTTP/1.0 request), and header names that imitate them (`transfer_encoding`);
//! - obsolete line folding, a bare LF as line end, white space before a header's colon, a
//!   malformed request line;
//! - an HTTP/1.1 request without a `Host`, or any request with more than one.
//!
//! The head judged is the head the server parses and frames the body by: there is one parser,
//! so a request hidden in a body is only ever body.

/// The HTTP/2 connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a judged head says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// `Ok(end)`: the head is `buf[..end]`, up to and including its empty line. `Err(resume)`:
/// incomplete; search again from `resume` when more has arrived (so a head that trickles in
/// is scanned once, not once per byte).
pub fn find_head_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    while let Some(at) = buf.get(i..).and_then(|rest| memchr::memchr(b'\n', rest)) {
        let newline = i + at;
        match &buf[newline + 1..] {
            [b'\n', ..] => return Ok(newline + 2),
            [b'\r', b'\n', ..] => return Ok(newline + 3),
            [] | [b'\r'] => return Err(newline),
            _ => i = newline + 1,
        }
    }
    Err(buf.len())
}

const BARE_LF: &str = "a line of the request head ends in a bare LF instead of CRLF";

/// Decides whether a complete request head is unambiguous, and how its body is framed.
pub fn judge(head: &[u8]) -> Result<Framing, &'static str> {
    let head = head.strip_suffix(b"\n").unwrap_or(head);
    let mut lines = lines(head);
    let request_line = lines.next().unwrap_or_default().strip_suffix(b"\r").ok_or(BARE_LF)?;
    let http10 = if request_line.ends_with(b" HTTP/1.1") {
        false
    } else if request_line.ends_with(b" HTTP/1.0") {
        true
    } else {
        return Err("malformed request line");
    };
    let (mut lengths, mut encodings, mut hosts) = (0, 0, 0);
    let mut length = 0u64;
    let mut chunked = false;
    for line in lines {
        let line = line.strip_suffix(b"\r").ok_or(BARE_LF)?;
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            return Err("obsolete line folding (a header line starting with white space)");
        }
        let colon = memchr::memchr(b':', line).ok_or("a header line without a colon")?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err("white space or a character not allowed in a header name");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            if value.contains(&b',') {
                return Err("Content-Length with more than one value");
            }
            length = crate::http1::decimal(value).ok_or("Content-Length is not a decimal number")?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encodings += 1;
            chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.contains(&b'_') && imitates_framing(name) {
            return Err("a header name that imitates Content-Length or Transfer-Encoding");
        }
    }
    if lengths > 0 && encodings > 0 {
        return Err("both Content-Length and Transfer-Encoding (a request smuggling attempt)");
    }
    if lengths > 1 {
        return Err("Content-Length given more than once");
    }
    if encodings > 1 {
        return Err("Transfer-Encoding given more than once");
    }
    if encodings == 1 && !chunked {
        return Err("a Transfer-Encoding other than chunked");
    }
    if encodings == 1 && http10 {
        return Err("Transfer-Encoding in an HTTP/1.0 request");
    }
    if hosts > 1 {
        return Err("more than one Host header");
    }
    if hosts == 0 && !http10 {
        return Err("an HTTP/1.1 request without a Host header");
    }
    Ok(if chunked {
        Framing::Chunked
    } else if lengths == 1 {
        Framing::Length(length)
    } else {
        Framing::None
    })
}

/// What `head.split(|&b| b == b'\n')` gives (the pieces between line feeds, the last one after
/// the last), found with `memchr`: every request head is split so.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b'\n', current) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// A token character of a header name (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`is_tchar`] for every byte, made at compile time: every header name's bytes are looked up.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        b += 1;
    }
    table
};

fn imitates_framing(name: &[u8]) -> bool {
    let dashed: Vec<u8> = name.iter().map(|&b| if b == b'_' { b'-' } else { b }).collect();
    dashed.eq_ignore_ascii_case(b"content-length") || dashed.eq_ignore_ascii_case(b"transfer-encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(head: &str) -> Result<Framing, &'static str> {
        judge(head.as_bytes())
    }

    #[test]
    fn plain_heads_pass_with_their_framing() {
        assert_eq!(judged("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(Framing::None));
        assert_eq!(judged("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n"), Ok(Framing::Length(12)));
        assert_eq!(judged("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"), Ok(Framing::Chunked));
        assert_eq!(judged("GET / HTTP/1.0\r\n\r\n"), Ok(Framing::None));
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET /\r\nHost: x\r\n\r\n",
        ] {
            assert!(judged(head).is_err(), "{head:?}");
        }
    }

    #[test]
    fn lines_are_the_pieces_split_gives() {
        for head in [&b""[..], b"\n", b"a", b"a\n", b"\na", b"GET / HTTP/1.1\r\nHost: x\r\n\r", b"a\n\nb\n"] {
            let split: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
            assert_eq!(lines(head).collect::<Vec<_>>(), split, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn head_end_is_found_once_complete() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest", 0), Ok(27));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 0), Err(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 24), Err(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: x\n\n", 0), Ok(24));
    }
}
