//! RESP2, the little of it the streams target speaks, by hand: commands are appended to the
//! caller's buffer (no allocation per argument; numbers through `itoa`), and replies are pulled
//! one header at a time through a fixed buffer.
//!
//! Redis's replies are input like any other. The reader must not panic, allocate beyond its
//! buffer (fixed at connection time), or trust a length: a line longer than the buffer, a bulk
//! string or array longer than [`BULK_BYTES_MAX`] / [`ARRAY_LEN_MAX`], a type this client never
//! asked for (RESP3's, inline text), or bytes where a CRLF belongs is [`RespError::Malformed`],
//! and the caller drops the connection. What it skips it reads and forgets, within a
//! [`Budget`], so that a big value (an entry's payload inside `XINFO STREAM`) costs reading, not
//! memory.

use std::io::{ErrorKind, Read};

use thiserror::Error;

/// The reply buffer of one connection: the longest line or kept bulk string it can hold.
pub(crate) const REPLY_BUFFER_BYTES: usize = 16 * 1024;
/// The longest bulk string the reader accepts, kept or skipped: Redis's own default bound
/// (`proto-max-bulk-len`).
pub(crate) const BULK_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// The most elements an array header may announce.
pub(crate) const ARRAY_LEN_MAX: u64 = 1024 * 1024;
/// An error reply's text is kept up to this many characters (printable ASCII only).
const ERROR_TEXT_CHARS_MAX: usize = 200;

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum RespError {
    #[error("no answer within the timeout")]
    TimedOut,
    #[error("the connection closed")]
    Closed,
    #[error("{0}")]
    Io(ErrorKind),
    /// An error reply (`-…`), its text cleaned and shortened.
    #[error("Redis answered: {0}")]
    Refused(String),
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    #[error("unexpected reply to {command}: {got}")]
    Unexpected {
        command: &'static str,
        got: &'static str,
    },
    #[error("a reply over its budget: {0}")]
    OverBudget(&'static str),
}

impl RespError {
    /// An I/O error as the reader reports it (a read or write timeout is [`RespError::TimedOut`]).
    pub(crate) fn io(error: &std::io::Error) -> RespError {
        match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => RespError::TimedOut,
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => RespError::Closed,
            kind => RespError::Io(kind),
        }
    }

    /// Whether the connection is still in step after this error: only after a whole error reply.
    pub(crate) fn leaves_connection_usable(&self) -> bool {
        matches!(self, RespError::Refused(_))
    }
}

// ---- Writing -------------------------------------------------------------------------------

/// `*count\r\n`: a command of `count` arguments follows.
pub(crate) fn array(out: &mut Vec<u8>, count: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One argument: `$len\r\nbytes\r\n`.
pub(crate) fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    bulk_header(out, bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// A number argument, in decimal as redis-rs writes it.
pub(crate) fn bulk_u64(out: &mut Vec<u8>, number: u64) {
    bulk(out, itoa::Buffer::new().format(number).as_bytes());
}

/// `$len\r\n`: the argument's `len` bytes and a CRLF must follow.
pub(crate) fn bulk_header(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A whole command.
pub(crate) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    array(out, args.len());
    for arg in args {
        bulk(out, arg);
    }
}

// ---- Reading -------------------------------------------------------------------------------

/// One reply's header. A bulk string's bytes (and CRLF) follow its header, an array's elements
/// follow it; read them with [`ReplyReader::bulk`] / [`ReplyReader::skip_bulk`] and further
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header<'a> {
    /// `+text`
    Simple(&'a [u8]),
    /// `-text`
    Error(&'a [u8]),
    /// `:n`
    Integer(i64),
    /// `$len` (`None`: `$-1`, the null bulk string)
    Bulk(Option<u64>),
    /// `*len` (`None`: `*-1`, the null array)
    Array(Option<u64>),
}

impl Header<'_> {
    /// The kind of reply, for an error message.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Header::Simple(_) => "a simple string",
            Header::Error(_) => "an error",
            Header::Integer(_) => "an integer",
            Header::Bulk(Some(_)) => "a bulk string",
            Header::Bulk(None) => "a null bulk string",
            Header::Array(Some(_)) => "an array",
            Header::Array(None) => "a null array",
        }
    }
}

/// What a skip may still read: bytes of bulk strings and elements of arrays, together over
/// one exchange, so that a hostile or broken server cannot keep the deliverer reading.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) bytes: u64,
    pub(crate) elements: u64,
}

impl Budget {
    fn take_bytes(&mut self, bytes: u64) -> Result<(), RespError> {
        self.bytes = self
            .bytes
            .checked_sub(bytes)
            .ok_or(RespError::OverBudget("too many bytes"))?;
        Ok(())
    }

    fn take_elements(&mut self, elements: u64) -> Result<(), RespError> {
        self.elements = self
            .elements
            .checked_sub(elements)
            .ok_or(RespError::OverBudget("too many elements"))?;
        Ok(())
    }
}

/// Replies of one connection, read through a fixed buffer. After any error but
/// [`RespError::Refused`] the stream is out of step: drop the connection (and this reader).
pub(crate) struct ReplyReader {
    buffer: Box<[u8]>,
    /// The first byte not yet consumed.
    start: usize,
    /// The end of the bytes read.
    end: usize,
}

impl ReplyReader {
    pub(crate) fn new() -> ReplyReader {
        ReplyReader::with_capacity(REPLY_BUFFER_BYTES)
    }

    /// A reader with a buffer of `bytes` (at least 64).
    pub(crate) fn with_capacity(bytes: usize) -> ReplyReader {
        ReplyReader {
            buffer: vec![0; bytes.max(64)].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The next header.
    pub(crate) fn header<R: Read>(&mut self, io: &mut R) -> Result<Header<'_>, RespError> {
        let line = self.line(io)?;
        let (&kind, rest) = line
            .split_first()
            .ok_or(RespError::Malformed("an empty line"))?;
        Ok(match kind {
            b'+' => Header::Simple(rest),
            b'-' => Header::Error(rest),
            b':' => Header::Integer(parse_i64(rest).ok_or(RespError::Malformed("an integer"))?),
            b'$' => Header::Bulk(parse_len(rest, BULK_BYTES_MAX, "a bulk string's length")?),
            b'*' => Header::Array(parse_len(rest, ARRAY_LEN_MAX, "an array's length")?),
            _ => return Err(RespError::Malformed("not a RESP2 reply")),
        })
    }

    /// A bulk string's `len` bytes (after its header) and their CRLF, kept: `len` must fit the
    /// buffer with its CRLF.
    pub(crate) fn bulk<R: Read>(&mut self, io: &mut R, len: u64) -> Result<&[u8], RespError> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.buffer.len() - 2)
            .ok_or(RespError::Malformed("a value too long to keep"))?;
        while self.end - self.start < len + 2 {
            self.fill(io)?;
        }
        let range = self.start..self.start + len;
        if self.buffer.get(range.end..range.end + 2) != Some(b"\r\n") {
            return Err(RespError::Malformed("no CRLF after a bulk string"));
        }
        self.start = range.end + 2;
        Ok(&self.buffer[range])
    }

    /// The first `len` bytes of a longer bulk string (after its header), kept; the rest must be
    /// read with [`ReplyReader::skip_bulk`]. `len` must fit the buffer.
    pub(crate) fn bulk_prefix<R: Read>(
        &mut self,
        io: &mut R,
        len: u64,
    ) -> Result<&[u8], RespError> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.buffer.len())
            .ok_or(RespError::Malformed("a value too long to keep"))?;
        while self.end - self.start < len {
            self.fill(io)?;
        }
        let range = self.start..self.start + len;
        self.start = range.end;
        Ok(&self.buffer[range])
    }

    /// A bulk string's `len` bytes (after its header) and their CRLF, read and forgotten.
    pub(crate) fn skip_bulk<R: Read>(
        &mut self,
        io: &mut R,
        len: u64,
        budget: &mut Budget,
    ) -> Result<(), RespError> {
        budget.take_bytes(len)?;
        let mut left = len;
        loop {
            let buffered = (self.end - self.start) as u64;
            if buffered >= left {
                // `left` is at most `buffered`, a usize.
                self.start += left as usize;
                break;
            }
            left -= buffered;
            self.start = self.end;
            self.fill(io)?;
        }
        self.bulk(io, 0).map(|_| ())
    }

    /// One whole value of any shape, read and forgotten. Arrays are counted, not recursed into.
    pub(crate) fn skip_value<R: Read>(
        &mut self,
        io: &mut R,
        budget: &mut Budget,
    ) -> Result<(), RespError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.header(io)? {
                Header::Bulk(Some(len)) => self.skip_bulk(io, len, budget)?,
                Header::Array(Some(len)) => {
                    budget.take_elements(len)?;
                    pending += len;
                }
                Header::Simple(_)
                | Header::Error(_)
                | Header::Integer(_)
                | Header::Bulk(None)
                | Header::Array(None) => {}
            }
        }
        Ok(())
    }

    /// The next line without its CRLF.
    fn line<R: Read>(&mut self, io: &mut R) -> Result<&[u8], RespError> {
        let mut searched = self.start;
        let range = loop {
            if let Some(offset) = self.buffer[searched..self.end]
                .iter()
                .position(|&byte| byte == b'\n')
            {
                let newline = searched + offset;
                if newline == self.start || self.buffer[newline - 1] != b'\r' {
                    return Err(RespError::Malformed("a line that does not end in CRLF"));
                }
                break self.start..newline - 1;
            }
            let before = self.start;
            searched = self.end;
            self.fill(io)?;
            // `fill` may have moved the buffered bytes to the front.
            searched -= before - self.start;
        };
        self.start = range.end + 2;
        Ok(&self.buffer[range])
    }

    /// Reads more bytes after those buffered, first moving them to the front if the buffer's
    /// end is reached; a buffer full of one unfinished line is malformed.
    fn fill<R: Read>(&mut self, io: &mut R) -> Result<(), RespError> {
        if self.end == self.buffer.len() {
            if self.start == 0 {
                return Err(RespError::Malformed("a line longer than the reply buffer"));
            }
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match io.read(&mut self.buffer[self.end..]) {
                Ok(0) => return Err(RespError::Closed),
                Ok(read) => {
                    // A reader claiming more than it was given is not trusted either.
                    self.end = (self.end + read).min(self.buffer.len());
                    return Ok(());
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(RespError::io(&error)),
            }
        }
    }
}

/// An error reply's text for a log line: printable ASCII, at most [`ERROR_TEXT_CHARS_MAX`].
pub(crate) fn error_text(raw: &[u8]) -> String {
    raw.iter()
        .take(ERROR_TEXT_CHARS_MAX)
        .map(|&byte| {
            if byte.is_ascii_graphic() || byte == b' ' {
                char::from(byte)
            } else {
                '?'
            }
        })
        .collect()
}

/// `-1` (null) or a length up to `max`.
fn parse_len(raw: &[u8], max: u64, what: &'static str) -> Result<Option<u64>, RespError> {
    if raw == b"-1" {
        return Ok(None);
    }
    match parse_u64(raw) {
        Some(len) if len <= max => Ok(Some(len)),
        Some(_) => Err(RespError::OverBudget(what)),
        None => Err(RespError::Malformed(what)),
    }
}

/// Decimal digits only, no sign, no overflow.
pub(crate) fn parse_u64(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    raw.iter().try_fold(0u64, |value, &byte| {
        let digit = char::from(byte).to_digit(10)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// An optional `-` and decimal digits, no overflow.
fn parse_i64(raw: &[u8]) -> Option<i64> {
    match raw.strip_prefix(b"-") {
        Some(digits) => 0i64.checked_sub_unsigned(parse_u64(digits)?),
        None => i64::try_from(parse_u64(raw)?).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes a few at a time, as a socket may.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let count = self.step.min(out.len()).min(self.bytes.len());
            out[..count].copy_from_slice(&self.bytes[..count]);
            self.bytes = &self.bytes[count..];
            Ok(count)
        }
    }

    fn budget() -> Budget {
        Budget {
            bytes: 1 << 20,
            elements: 1000,
        }
    }

    #[test]
    fn commands_are_written_as_redis_rs_writes_them() {
        let mut out = Vec::new();
        command(&mut out, &[b"SELECT", b"3"]);
        array(&mut out, 2);
        bulk(&mut out, b"XLEN");
        bulk_u64(&mut out, 18_446_744_073_709_551_615);
        let mut expected = redis::cmd("SELECT").arg("3").get_packed_command();
        expected.extend(redis::cmd("XLEN").arg(u64::MAX).get_packed_command());
        assert_eq!(out, expected);
    }

    #[test]
    fn headers_and_values_across_any_read_sizes() {
        let input = b"+OK\r\n-ERR no such key\r\n:-42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$3\r\nabc\r\n:7\r\n*-1\r\n$0\r\n\r\n";
        for step in 1..input.len() {
            let mut io = Trickle { bytes: input, step };
            let mut reader = ReplyReader::with_capacity(64);
            assert_eq!(reader.header(&mut io), Ok(Header::Simple(b"OK")));
            assert_eq!(
                reader.header(&mut io),
                Ok(Header::Error(b"ERR no such key"))
            );
            assert_eq!(reader.header(&mut io), Ok(Header::Integer(-42)));
            assert_eq!(reader.header(&mut io), Ok(Header::Bulk(Some(5))));
            assert_eq!(reader.bulk(&mut io, 5), Ok(&b"hello"[..]));
            assert_eq!(reader.header(&mut io), Ok(Header::Bulk(None)));
            reader.skip_value(&mut io, &mut budget()).unwrap();
            assert_eq!(reader.header(&mut io), Ok(Header::Array(None)));
            assert_eq!(reader.header(&mut io), Ok(Header::Bulk(Some(0))));
            assert_eq!(reader.bulk(&mut io, 0), Ok(&b""[..]));
            assert_eq!(reader.header(&mut io), Err(RespError::Closed));
        }
    }

    #[test]
    fn a_skipped_value_may_be_far_bigger_than_the_buffer() {
        let payload = vec![b'x'; 10_000];
        let mut input = b"*2\r\n*2\r\n$10000\r\n".to_vec();
        input.extend_from_slice(&payload);
        input.extend_from_slice(b"\r\n:1\r\n$2\r\nok\r\n+after\r\n");
        let mut io = Trickle {
            bytes: &input,
            step: 1000,
        };
        let mut reader = ReplyReader::with_capacity(64);
        reader.skip_value(&mut io, &mut budget()).unwrap();
        assert_eq!(reader.header(&mut io), Ok(Header::Simple(b"after")));
        // The same over a budget of fewer bytes or elements.
        for mut budget in [
            Budget {
                bytes: 9_999,
                elements: 100,
            },
            Budget {
                bytes: 1 << 20,
                elements: 3,
            },
        ] {
            let mut io = Trickle {
                bytes: &input,
                step: 1000,
            };
            let mut reader = ReplyReader::with_capacity(64);
            assert!(matches!(
                reader.skip_value(&mut io, &mut budget),
                Err(RespError::OverBudget(_))
            ));
        }
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        let cases: &[(&[u8], RespError)] = &[
            (b"", RespError::Closed),
            (b"+OK", RespError::Closed),
            (
                b"+OK\n",
                RespError::Malformed("a line that does not end in CRLF"),
            ),
            (
                b"\n",
                RespError::Malformed("a line that does not end in CRLF"),
            ),
            (b"\r\n", RespError::Malformed("an empty line")),
            (b"%1\r\n", RespError::Malformed("not a RESP2 reply")),
            (b"OK\r\n", RespError::Malformed("not a RESP2 reply")),
            (b":\r\n", RespError::Malformed("an integer")),
            (b":12a\r\n", RespError::Malformed("an integer")),
            (b":-\r\n", RespError::Malformed("an integer")),
            (
                b":99999999999999999999\r\n",
                RespError::Malformed("an integer"),
            ),
            (b"$-2\r\n", RespError::Malformed("a bulk string's length")),
            (b"$+3\r\n", RespError::Malformed("a bulk string's length")),
            (
                b"$999999999999\r\n",
                RespError::OverBudget("a bulk string's length"),
            ),
            (
                b"$99999999999999999999999\r\n",
                RespError::Malformed("a bulk string's length"),
            ),
            (
                b"*99999999999\r\n",
                RespError::OverBudget("an array's length"),
            ),
        ];
        for (input, expected) in cases {
            let mut io = Trickle {
                bytes: input,
                step: 3,
            };
            let mut reader = ReplyReader::with_capacity(64);
            assert_eq!(
                reader.header(&mut io).map(|_| ()).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // A line longer than the buffer.
        let long = [&b"+"[..], &[b'a'; 100], b"\r\n"].concat();
        let mut reader = ReplyReader::with_capacity(64);
        assert_eq!(
            reader.header(&mut &long[..]),
            Err(RespError::Malformed("a line longer than the reply buffer"))
        );
        // A bulk string without its CRLF, or longer than the buffer when kept.
        let mut reader = ReplyReader::with_capacity(64);
        let mut io = &b"$3\r\nabcd\r\n"[..];
        reader.header(&mut io).unwrap();
        assert_eq!(
            reader.bulk(&mut io, 3),
            Err(RespError::Malformed("no CRLF after a bulk string"))
        );
        let mut reader = ReplyReader::with_capacity(64);
        assert_eq!(
            reader.bulk(&mut &b""[..], 63),
            Err(RespError::Malformed("a value too long to keep"))
        );
        // Random bytes, and mutations of a good reply, read as far as they go.
        let good = b"*3\r\n$5\r\nhello\r\n:12\r\n*2\r\n+OK\r\n-ERR x\r\n".to_vec();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let input: Vec<u8> = if round % 2 == 0 {
                (0..next() % 40)
                    .map(|_| b"*$:+-\r\n0123-9x"[(next() % 14) as usize])
                    .collect()
            } else {
                let mut input = good.clone();
                let at = (next() % input.len() as u64) as usize;
                input[at] = next() as u8;
                input.truncate((next() % (input.len() as u64 + 1)) as usize);
                input
            };
            let mut io = Trickle {
                bytes: &input,
                step: 1 + (next() % 5) as usize,
            };
            let mut reader = ReplyReader::with_capacity(64);
            let mut budget = budget();
            while reader.skip_value(&mut io, &mut budget).is_ok() {}
        }
    }

    #[test]
    fn error_text_is_printable_and_short() {
        assert_eq!(error_text(b"ERR a\tb\xff"), "ERR a?b?");
        assert_eq!(error_text(&[b'x'; 500]).len(), ERROR_TEXT_CHARS_MAX);
    }
}
