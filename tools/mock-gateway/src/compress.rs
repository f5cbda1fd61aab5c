//! Outbound compression, one encoder per connection, as Discord does it (docs/discord-gateway.md).
//!
//! - zlib-stream: one deflate context for the connection, a sync flush per message so every
//!   message ends in `00 00 ff ff`.
//! - zstd-stream: one zstd context for the connection, flushed (the zstd frame is never ended)
//!   per message.
//! - payload: identify `compress: true` without transport compression: big payloads become
//!   binary frames holding a complete zlib stream each; small ones stay text.
//! - none: text frames.

use std::io::Write;

use bytes::Bytes;

use flate2::{Compress, Compression, FlushCompress};
use zstd::stream::raw::{Encoder as ZstdEncoder, InBuffer, Operation, OutBuffer};

use crate::config::Transport;

/// One gateway message ready for the socket.
#[derive(Debug)]
pub enum Frame {
    Text(Bytes),
    Binary(Bytes),
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("zlib: {0}")]
    Zlib(#[from] flate2::CompressError),
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
}

/// A connection's encoder.
pub enum Encoder {
    None,
    Payload { min_bytes: usize, level: u32 },
    ZlibStream(Box<Compress>),
    ZstdStream(Box<ZstdEncoder<'static>>),
}

impl Encoder {
    pub fn new(
        transport: Transport,
        payload_compress: bool,
        zlib_level: u32,
        zstd_level: i32,
        payload_min_bytes: usize,
    ) -> Result<Encoder, CompressError> {
        Ok(match transport {
            Transport::ZlibStream => {
                Encoder::ZlibStream(Box::new(Compress::new(Compression::new(zlib_level), true)))
            }
            Transport::ZstdStream => Encoder::ZstdStream(Box::new(ZstdEncoder::new(zstd_level)?)),
            Transport::None if payload_compress => Encoder::Payload {
                min_bytes: payload_min_bytes,
                level: zlib_level,
            },
            Transport::None => Encoder::None,
        })
    }

    /// Whether frames are binary (compressed) on this connection, for corrupt-frame faults.
    pub fn is_binary(&self) -> bool {
        !matches!(self, Encoder::None)
    }

    /// Encodes one complete gateway message.
    pub fn encode(&mut self, message: &Bytes) -> Result<Frame, CompressError> {
        match self {
            Encoder::None => Ok(Frame::Text(message.clone())),
            Encoder::Payload { min_bytes, .. } if message.len() < *min_bytes => {
                Ok(Frame::Text(message.clone()))
            }
            Encoder::Payload { level, .. } => {
                let mut encoder = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(message.len() / 3 + 64),
                    Compression::new(*level),
                );
                encoder.write_all(message)?;
                Ok(Frame::Binary(encoder.finish()?.into()))
            }
            Encoder::ZlibStream(compress) => {
                let mut out = Vec::with_capacity(message.len() / 3 + 64);
                let mut input: &[u8] = message;
                loop {
                    let before_in = compress.total_in();
                    compress.compress_vec(input, &mut out, FlushCompress::Sync)?;
                    let consumed = usize::try_from(compress.total_in() - before_in)
                        .expect("consumed bytes fit the input slice length");
                    input = &input[consumed..];
                    // Deflate stops early only when the output is full; room left over means
                    // the input is in and the sync flush (`00 00 ff ff`) is complete.
                    if out.len() < out.capacity() {
                        debug_assert!(input.is_empty());
                        break;
                    }
                    out.reserve(out.capacity().max(256));
                }
                Ok(Frame::Binary(out.into()))
            }
            Encoder::ZstdStream(encoder) => {
                let mut out = vec![0u8; zstd::zstd_safe::compress_bound(message.len()) + 64];
                let mut written = 0;
                let mut input = InBuffer::around(message);
                while input.pos < message.len() {
                    let mut output = OutBuffer::around_pos(&mut out, written);
                    encoder.run(&mut input, &mut output)?;
                    written = output.pos();
                    if written == out.len() {
                        out.resize(out.len() * 2, 0);
                    }
                }
                loop {
                    let mut output = OutBuffer::around_pos(&mut out, written);
                    let remaining = encoder.flush(&mut output)?;
                    written = output.pos();
                    if remaining == 0 {
                        break;
                    }
                    out.resize(out.len() * 2, 0);
                }
                out.truncate(written);
                Ok(Frame::Binary(out.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn messages() -> Vec<Vec<u8>> {
        (0..50)
            .map(|i| {
                let filler = "x".repeat(i * 97 % 3000);
                format!(r#"{{"t":"MESSAGE_CREATE","s":{i},"op":0,"d":{{"content":"{filler}"}}}}"#)
                    .into_bytes()
            })
            .collect()
    }

    #[test]
    fn zlib_stream_is_one_context_with_sync_flush_suffix() {
        let mut encoder = Encoder::new(Transport::ZlibStream, false, 6, 3, 0).unwrap();
        let mut inflate = flate2::Decompress::new(true);
        for message in messages() {
            let Frame::Binary(frame) = encoder.encode(&Bytes::from(message.clone())).unwrap()
            else {
                panic!()
            };
            assert!(frame.ends_with(&[0, 0, 0xff, 0xff]));
            let mut out = Vec::with_capacity(message.len() + 16);
            inflate
                .decompress_vec(&frame, &mut out, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, message);
        }
    }

    #[test]
    fn zstd_stream_is_one_context_flushed_per_message() {
        let mut encoder = Encoder::new(Transport::ZstdStream, false, 6, 3, 0).unwrap();
        let mut decoder = zstd::stream::raw::Decoder::new().unwrap();
        for message in messages() {
            let Frame::Binary(frame) = encoder.encode(&Bytes::from(message.clone())).unwrap()
            else {
                panic!()
            };
            let mut out = vec![0u8; message.len() + 64];
            let mut input = InBuffer::around(&frame);
            let mut output = OutBuffer::around(&mut out[..]);
            while input.pos < frame.len() {
                decoder.run(&mut input, &mut output).unwrap();
            }
            let n = output.pos();
            assert_eq!(&out[..n], &message[..]);
        }
    }

    #[test]
    fn payload_compression_only_for_big_payloads() {
        let mut encoder = Encoder::new(Transport::None, true, 6, 3, 1024).unwrap();
        let small = Bytes::from_static(b"{\"op\":11}");
        assert!(matches!(encoder.encode(&small).unwrap(), Frame::Text(_)));
        let big = messages().pop().unwrap();
        let Frame::Binary(frame) = encoder.encode(&Bytes::from(big.clone())).unwrap() else {
            panic!()
        };
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(&frame[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, big);
    }
}
