//! Which compression a connection uses: the `--compression` names, the `compress=` query
//! parameter and the identify `compress` flag they imply (docs/discord-gateway.md, Compression).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How a connection's payloads arrive. The names are the `--compression` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// `compress=zstd-stream`: one zstd context per connection, one binary frame per payload.
    /// The cheapest compressed mode to decode (docs/discord-gateway.md), hence the default.
    #[default]
    ZstdStream,
    /// `compress=zlib-stream`: one inflate context per connection; a payload ends with a frame
    /// whose last 4 bytes are `00 00 ff ff`.
    ZlibStream,
    /// Identify `compress: true`, no transport compression: big payloads arrive as binary frames
    /// holding one complete zlib stream each, the rest as text.
    Payload,
    /// Plain text frames.
    None,
}

impl Compression {
    /// Every mode, in the order of the `--compression` documentation.
    pub const ALL: [Compression; 4] = [
        Compression::ZstdStream,
        Compression::ZlibStream,
        Compression::Payload,
        Compression::None,
    ];

    /// The command-line name: `zstd-stream`, `zlib-stream`, `payload` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::ZstdStream => "zstd-stream",
            Compression::ZlibStream => "zlib-stream",
            Compression::Payload => "payload",
            Compression::None => "none",
        }
    }

    /// The value of the gateway URL's `compress=` parameter, if the mode has one.
    pub fn query_param(self) -> Option<&'static str> {
        match self {
            Compression::ZstdStream => Some("zstd-stream"),
            Compression::ZlibStream => Some("zlib-stream"),
            Compression::Payload | Compression::None => None,
        }
    }

    /// Whether identify must say `compress: true` (only [`Compression::Payload`]).
    pub fn identify_compress(self) -> bool {
        self == Compression::Payload
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A `--compression` value that names no mode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown compression `{name}` (expected zstd-stream, zlib-stream, payload or none)")]
pub struct UnknownCompression {
    pub name: String,
}

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(name: &str) -> Result<Compression, UnknownCompression> {
        Compression::ALL
            .into_iter()
            .find(|compression| compression.as_str() == name)
            .ok_or_else(|| UnknownCompression {
                name: name.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_and_display() {
        for compression in Compression::ALL {
            assert_eq!(compression.to_string().parse(), Ok(compression));
        }
        assert_eq!(Compression::default(), Compression::ZstdStream);
        assert_eq!(
            "zstd".parse::<Compression>(),
            Err(UnknownCompression {
                name: "zstd".to_owned()
            })
        );
    }

    #[test]
    fn query_param_and_identify_flag() {
        assert_eq!(Compression::ZstdStream.query_param(), Some("zstd-stream"));
        assert_eq!(Compression::ZlibStream.query_param(), Some("zlib-stream"));
        assert_eq!(Compression::Payload.query_param(), None);
        assert_eq!(Compression::None.query_param(), None);
        let identify: Vec<bool> = Compression::ALL
            .iter()
            .map(|c| c.identify_compress())
            .collect();
        assert_eq!(identify, [false, false, true, false]);
    }

    #[test]
    fn serde_uses_the_command_line_names() {
        for compression in Compression::ALL {
            let json = serde_json::to_string(&compression).unwrap();
            assert_eq!(json, format!("\"{compression}\""));
            assert_eq!(
                serde_json::from_str::<Compression>(&json).unwrap(),
                compression
            );
        }
    }
}
