//! HTTP/1.1 message bodies as both sides of the gateway read them: callers' request bodies
//! (`server::h1`) and awork's answers (`pool::h1`) are framed the same way (RFC 9112 6-7), by a
//! length, by chunks, or (answers only) by the end of the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncRead;

/// The longest chunk-size or trailer line taken.
pub const MAX_LINE: usize = 4096;

/// A connection's read side: what it has buffered, and a way to read more into that buffer.
pub trait Source {
    fn buffered(&mut self) -> &mut BytesMut;
    /// Reads more into the buffer: how many bytes, 0 at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;
}

/// Reads what `io` has next into `buf`: how many bytes, 0 at the end of the stream. The read is
/// offered at least half of `*read_size` of room; `*read_size` doubles, up to `max`, while reads
/// fill the room they are offered, so a short message takes one small read and a long body few
/// large ones.
pub fn poll_read_growing<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    read_size: &mut usize,
    max: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < *read_size / 2 {
        buf.reserve(*read_size);
    }
    let room = buf.capacity() - buf.len();
    let read = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf))?;
    if read == room && *read_size < max {
        *read_size *= 2;
    }
    Poll::Ready(Ok(read))
}

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed body: {0}")]
    Malformed(&'static str),
    #[error("the connection closed before the end of the body")]
    Closed,
}

/// Where a body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Length(u64),
    UntilClose,
    /// Before a chunk-size line.
    ChunkSize,
    ChunkData(u64),
    /// Before the CRLF that ends a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
    Done,
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }

    /// The bytes left when they are known.
    pub fn exact(&self) -> Option<u64> {
        match self {
            Decoder::Done => Some(0),
            Decoder::Length(left) => Some(*left),
            _ => None,
        }
    }

    /// The next piece of the body: `None` at its end.
    pub fn poll_data<S: Source>(
        &mut self,
        source: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, DecodeError>> {
        loop {
            let buf = source.buffered();
            match *self {
                Decoder::Done | Decoder::Length(0) => return Poll::Ready(Ok(None)),
                Decoder::Length(left) | Decoder::ChunkData(left) if !buf.is_empty() => {
                    let taken = left.min(buf.len() as u64);
                    let data = buf.split_to(taken as usize).freeze();
                    *self = match *self {
                        Decoder::ChunkData(_) if taken == left => Decoder::ChunkEnd,
                        Decoder::ChunkData(_) => Decoder::ChunkData(left - taken),
                        _ => Decoder::Length(left - taken),
                    };
                    return Poll::Ready(Ok(Some(data)));
                }
                Decoder::UntilClose if !buf.is_empty() => return Poll::Ready(Ok(Some(buf.split().freeze()))),
                Decoder::ChunkSize => {
                    if let Some(line) = take_line(buf)? {
                        let size = chunk_size(&line)?;
                        *self = if size == 0 { Decoder::Trailers } else { Decoder::ChunkData(size) };
                        continue;
                    }
                }
                Decoder::ChunkEnd if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return Poll::Ready(Err(DecodeError::Malformed("a chunk longer than its size")));
                    }
                    buf.advance(2);
                    *self = Decoder::ChunkSize;
                    continue;
                }
                Decoder::Trailers => {
                    if let Some(line) = take_line(buf)? {
                        if line.is_empty() {
                            *self = Decoder::Done;
                        } else if matches!(line[0], b' ' | b'\t') {
                            return Poll::Ready(Err(DecodeError::Malformed("a folded trailer line")));
                        }
                        continue;
                    }
                }
                Decoder::Length(_) | Decoder::ChunkData(_) | Decoder::ChunkEnd | Decoder::UntilClose => {}
            }
            if ready!(source.poll_fill(cx))? == 0 {
                return Poll::Ready(match self {
                    Decoder::UntilClose => {
                        *self = Decoder::Done;
                        Ok(None)
                    }
                    _ => Err(DecodeError::Closed),
                });
            }
        }
    }
}

/// The next CRLF-ended line of `buf`, without its CRLF; `None` until it is all there.
pub fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
    match memchr::memchr(b'\n', buf) {
        Some(end) if end > 0 && buf[end - 1] == b'\r' => {
            let line = buf.split_to(end + 1).freeze();
            Ok(Some(line.slice(..end - 1)))
        }
        Some(_) => Err(DecodeError::Malformed("a line of the chunked body not ended by CRLF")),
        None if buf.len() > MAX_LINE => Err(DecodeError::Malformed("a chunk-size or trailer line too long")),
        None => Ok(None),
    }
}

/// The size on a chunk-size line (hex digits, optional white space, then optional
/// `;extensions`), without its CRLF.
pub fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    const BAD: DecodeError = DecodeError::Malformed("a chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return Err(BAD);
    }
    line[..digits].iter().try_fold(0u64, |size, digit| {
        let value = (*digit as char).to_digit(16).ok_or(BAD)?;
        Ok(size * 16 + u64::from(value))
    })
}

/// A decimal number of at most 19 digits and nothing else.
pub fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions_and_bounded() {
        assert_eq!(chunk_size(b"1a").ok(), Some(26));
        assert_eq!(chunk_size(b"FF;name=value").ok(), Some(255));
        assert_eq!(chunk_size(b"10 ;ext=1").ok(), Some(16));
        assert_eq!(chunk_size(b"0").ok(), Some(0));
        for bad in [&b""[..], b"xyz", b"-1", b"0x5", b"5 x", b"1000000000000000", b"1ffffffffffffffff"] {
            assert!(chunk_size(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lines_must_end_with_crlf_and_be_short() {
        let mut buf = BytesMut::from(&b"5\r\nhello"[..]);
        assert_eq!(take_line(&mut buf).expect("line").as_deref(), Some(&b"5"[..]));
        assert_eq!(&buf[..], b"hello");
        assert!(take_line(&mut BytesMut::from(&b"5\nhello"[..])).is_err());
        assert!(take_line(&mut BytesMut::from(&vec![b'1'; MAX_LINE + 1][..])).is_err());
    }

    #[test]
    fn decimals_are_digits_only() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"1234"), Some(1234));
        for bad in [&b""[..], b"+3", b"-1", b" 3", b"3 ", b"99999999999999999999"] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
