//! Fuzzing entry point for the admin API's request reader ([`super::http::read_request`]): bytes
//! become what a client sends, and the reader must answer within its bounds. A `fuzz/` target is
//! one line into [`request_entry`]; `engine/tests/fuzz_corpus.rs` replays the seed corpus on
//! stable.
//!
//! Input: byte 0 bit 0 makes the client endless (the rest of the input repeats forever, so the
//! reader must stop by itself); the other bits seed the sizes of the reads (as TCP segments
//! arrive: at most 4 B to 4 KiB, as the seed picks). The rest is the request.
//!
//! Invariants checked (a violation panics, which is what a fuzzer reports):
//! - it returns (an endless client included) without reading more than
//!   [`HEAD_BYTES_MAX`] + one read + [`BODY_BYTES_MAX`] bytes: what it reads is what it holds;
//! - a request's body is at most [`BODY_BYTES_MAX`], its method, path, query and authorization
//!   come from a head of at most [`HEAD_BYTES_MAX`];
//! - reads of any size give the same answer as reads of 4 KiB, except where the client sent more
//!   than its `Content-Length` (refused only when the extra bytes come with the head).

use std::io::{self, Read};

use super::http::{BODY_BYTES_MAX, HEAD_BYTES_MAX, Request, RequestError, read_request};

/// The most the reader asks for at once (its chunk).
const READ_BYTES_MAX: usize = 4096;

/// Interprets `data` as a client and checks the reader's answer.
pub fn request_entry(data: &[u8]) {
    let Some((&control, request)) = data.split_first() else {
        return;
    };
    let endless = control & 1 == 1;
    let segmented = answer(request, endless, control >> 1);
    let whole = answer(request, endless, 0);
    let more_than_content_length = |answer: &Answer| matches!(answer, Err(reason) if reason.contains("more bytes than Content-Length"));
    assert!(
        segmented == whole
            || more_than_content_length(&segmented)
            || more_than_content_length(&whole),
        "reads of any size: {segmented:?}, reads of 4 KiB: {whole:?}"
    );
}

/// A request's parts, or the error's text.
type Answer = Result<(String, String, String, Option<Vec<u8>>, Vec<u8>), String>;

/// Reads `request` from a [`Client`] and checks the bounds.
fn answer(request: &[u8], endless: bool, seed: u8) -> Answer {
    let mut client = Client {
        request,
        position: 0,
        endless,
        state: u32::from(seed),
        seed,
        delivered_bytes: 0,
    };
    let result = read_request(&mut client);
    let delivered_max = HEAD_BYTES_MAX + READ_BYTES_MAX + BODY_BYTES_MAX;
    assert!(
        client.delivered_bytes <= delivered_max,
        "read {} bytes, at most {delivered_max}",
        client.delivered_bytes
    );
    match result {
        Ok(Request {
            method,
            path,
            query,
            authorization,
            body,
        }) => {
            assert!(body.len() <= BODY_BYTES_MAX, "body of {} bytes", body.len());
            let head_bytes = method.len()
                + path.len()
                + query.len()
                + authorization.as_ref().map_or(0, Vec::len);
            assert!(head_bytes <= HEAD_BYTES_MAX, "head of {head_bytes} bytes");
            Ok((method, path, query, authorization, body))
        }
        Err(RequestError::Io(error)) => Err(format!("I/O: {:?}", error.kind())),
        Err(error) => Err(error.to_string()),
    }
}

/// A client sending `request` (forever, when `endless`) in reads whose sizes `seed` draws
/// (0: as much as asked for).
struct Client<'a> {
    request: &'a [u8],
    position: usize,
    endless: bool,
    state: u32,
    seed: u8,
    delivered_bytes: usize,
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut bytes = buf.len();
        if self.seed != 0 {
            // Reads of at most 4 B to 4 KiB (the seed picks), but an endless client's at least
            // 256 B: the reader rescans its buffer after every read, and 20 KiB in tiny reads
            // would make the run slow, not more thorough.
            let floor_shift = if self.endless { 6 } else { 0 };
            let read_bytes_max = 4 << (usize::from(self.seed) % 11).max(floor_shift);
            self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            bytes = bytes.min(1 + (self.state >> 16) as usize % read_bytes_max);
        }
        let mut written = 0;
        while written < bytes && !self.request.is_empty() {
            if self.position == self.request.len() {
                if !self.endless {
                    break;
                }
                self.position = 0;
            }
            let chunk = (bytes - written).min(self.request.len() - self.position);
            buf[written..written + chunk]
                .copy_from_slice(&self.request[self.position..self.position + chunk]);
            self.position += chunk;
            written += chunk;
        }
        self.delivered_bytes += written;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_endless_clients() {
        let requests: [&[u8]; 5] = [
            b"POST /commands?shard_id=3 HTTP/1.1\r\nAuthorization: Bearer k\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabcdef",
            b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ];
        for request in requests {
            for control in [0u8, 1, 2, 3, 0x80, 0xff] {
                request_entry(&[&[control][..], request].concat());
            }
        }
    }
}
