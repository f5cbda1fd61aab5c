//! Classification: a payload's `op`, `s` and `t` without parsing the payload (filter before
//! parse). No DOM, no allocation on the fast path, no copy: `t` borrows the payload.
//!
//! The fast path reads Discord's own envelope, `{"t":null|"NAME","s":null|N,"op":N,` (or `}`),
//! byte by byte. Anything else — another key order, whitespace, escapes, a number it cannot read
//! — falls back to sonic-rs's lazy object iterator over the top level only, which stops as soon as
//! it has seen all three keys. Both paths give the same answer wherever the fast path answers.
//!
//! # Choices where the protocol is silent
//!
//! - **Only the head is read.** The rest of the payload (`d`) is neither parsed nor validated
//!   here: the bot parses it. The fallback checks UTF-8 over the whole payload (sonic-rs does);
//!   the fast path checks only what it reads. Nothing before checks UTF-8 either (the transport
//!   hands text frames up as bytes): a payload that is not UTF-8 or not JSON reaches the sink
//!   as it came, and the sink leaves it out, counted, when the bot refuses its batch.
//! - **`op` above 255 is 255** (an unknown opcode, as [`PayloadHead::op`] documents); a negative,
//!   fractional, exponent or non-number `op` is an error.
//! - **`t` with an escape sequence is rejected** ([`ClassifyError::EscapedEventName`]): event names
//!   are plain ASCII, and an escaped name could not be borrowed from the payload without a copy.
//! - **A key given twice counts once, the first time** (serde_json's `Value` would keep the last);
//!   Discord never repeats a key.
//! - **Missing `t` or `s` is `None`** (HELLO and HEARTBEAT_ACK may omit them); missing `op` is an
//!   error.

use std::borrow::Cow;

use sonic_rs::{JsonValueTrait, LazyValue};
use thiserror::Error;

use crate::shard::PayloadHead;

/// Why a payload has no head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ClassifyError {
    #[error("payload is not a JSON object")]
    NotAnObject,
    #[error("payload nests deeper than {NESTING_MAX} levels")]
    TooDeep,
    #[error("payload is not valid JSON (or not UTF-8) before its head was read")]
    InvalidJson,
    #[error("payload has no `op`")]
    MissingOp,
    #[error("`op` is not a non-negative integer")]
    InvalidOp,
    #[error("`s` is neither null nor an unsigned 64-bit integer")]
    InvalidSequence,
    #[error("`t` is neither null nor a string")]
    InvalidEventName,
    #[error("`t` contains an escape sequence")]
    EscapedEventName,
}

/// Reads `op`, `s` and `t` from the top level of a gateway payload.
/// The deepest nesting the recursive (sonic-rs) readers are given. Discord's payloads nest
/// about 8 levels; sonic-rs recurses once per level, and an unoptimised build overflows a 2 MiB
/// stack at about 70.
pub const NESTING_MAX: usize = 32;

pub fn classify(payload: &[u8]) -> Result<PayloadHead<'_>, ClassifyError> {
    match classify_prefix(payload) {
        Some(head) => Ok(head),
        None => classify_lazy(payload),
    }
}

/// The fast path: Discord's exact envelope prefix, or `None` to fall back.
pub(crate) fn classify_prefix(payload: &[u8]) -> Option<PayloadHead<'_>> {
    let rest = payload.strip_prefix(b"{\"t\":")?;
    let (t, rest) = match rest.strip_prefix(b"null") {
        Some(rest) => (None, rest),
        None => {
            let rest = rest.strip_prefix(b"\"")?;
            let name_bytes = rest.iter().position(|&byte| !is_plain_name_byte(byte))?;
            let (name, rest) = rest.split_at(name_bytes);
            let rest = rest.strip_prefix(b"\"")?;
            // Printable ASCII only, so this cannot fail; a failure just falls back.
            (Some(std::str::from_utf8(name).ok()?), rest)
        }
    };
    let rest = rest.strip_prefix(b",\"s\":")?;
    let (s, rest) = match rest.strip_prefix(b"null") {
        Some(rest) => (None, rest),
        None => {
            let (s, rest) = split_unsigned(rest)?;
            (Some(s), rest)
        }
    };
    let rest = rest.strip_prefix(b",\"op\":")?;
    let (op, rest) = split_unsigned(rest)?;
    // A delimiter after the digits: they are the whole number, not a truncated one.
    if !matches!(rest.first(), Some(b',' | b'}')) {
        return None;
    }
    Some(PayloadHead {
        op: u8::try_from(op).unwrap_or(u8::MAX),
        s,
        t,
    })
}

/// The fallback: the top-level keys in any order, with any whitespace and escapes in keys.
pub(crate) fn classify_lazy(payload: &[u8]) -> Result<PayloadHead<'_>, ClassifyError> {
    let first = payload
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(ClassifyError::NotAnObject);
    }
    if super::scan::nests_deeper_than(payload, NESTING_MAX) {
        return Err(ClassifyError::TooDeep);
    }
    let mut op = None;
    let mut s = None;
    let mut t = None;
    for entry in sonic_rs::to_object_iter(payload) {
        let (key, value) = entry.map_err(|_| ClassifyError::InvalidJson)?;
        match key.as_ref() {
            "op" if op.is_none() => op = Some(op_value(&value)?),
            "s" if s.is_none() => s = Some(sequence_value(&value)?),
            "t" if t.is_none() => t = Some(event_name_value(&value)?),
            _ => {}
        }
        if op.is_some() && s.is_some() && t.is_some() {
            break;
        }
    }
    Ok(PayloadHead {
        op: op.ok_or(ClassifyError::MissingOp)?,
        s: s.flatten(),
        t: t.flatten(),
    })
}

/// Bytes the fast path takes inside `t`: printable ASCII without `"` and `\`.
fn is_plain_name_byte(byte: u8) -> bool {
    (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\'
}

/// Splits a leading JSON unsigned integer (no sign, fraction or exponent, no leading zero) that
/// fits a u64 off `bytes`. `None` if there is none or it overflows.
fn split_unsigned(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes
        .iter()
        .position(|byte| !byte.is_ascii_digit())
        .unwrap_or(bytes.len());
    let (number, rest) = bytes.split_at(digits);
    Some((parse_unsigned(number)?, rest))
}

/// A JSON unsigned integer made only of `raw` (no sign, fraction, exponent or leading zero).
pub(crate) fn parse_unsigned(raw: &[u8]) -> Option<u64> {
    match raw {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        _ => raw.iter().try_fold(0u64, |value, &byte| {
            if !byte.is_ascii_digit() {
                return None;
            }
            value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
        }),
    }
}

/// Whether `raw` is a JSON unsigned integer too big for a u64.
fn is_big_unsigned(raw: &[u8]) -> bool {
    raw.len() > 1 && raw[0] != b'0' && raw.iter().all(u8::is_ascii_digit)
}

fn op_value(value: &LazyValue<'_>) -> Result<u8, ClassifyError> {
    let raw = value.as_raw_str().as_bytes();
    match parse_unsigned(raw) {
        Some(op) => Ok(u8::try_from(op).unwrap_or(u8::MAX)),
        None if is_big_unsigned(raw) => Ok(u8::MAX),
        None => Err(ClassifyError::InvalidOp),
    }
}

fn sequence_value(value: &LazyValue<'_>) -> Result<Option<u64>, ClassifyError> {
    if value.is_null() {
        return Ok(None);
    }
    parse_unsigned(value.as_raw_str().as_bytes())
        .map(Some)
        .ok_or(ClassifyError::InvalidSequence)
}

fn event_name_value<'a>(value: &LazyValue<'a>) -> Result<Option<&'a str>, ClassifyError> {
    if value.is_null() {
        return Ok(None);
    }
    if !value.is_str() {
        return Err(ClassifyError::InvalidEventName);
    }
    // A payload given as a byte slice gives values borrowed from it.
    let Cow::Borrowed(raw) = value.as_raw_cow() else {
        return Err(ClassifyError::InvalidJson);
    };
    let name = raw
        .strip_prefix('"')
        .and_then(|raw| raw.strip_suffix('"'))
        .ok_or(ClassifyError::InvalidEventName)?;
    if name.contains('\\') {
        return Err(ClassifyError::EscapedEventName);
    }
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support;

    /// op, t and s as serde_json reads them.
    fn reference(payload: &[u8]) -> (u64, Option<String>, Option<u64>) {
        let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
        (
            value["op"].as_u64().unwrap(),
            value["t"].as_str().map(str::to_owned),
            value["s"].as_u64(),
        )
    }

    fn head(op: u8, s: Option<u64>, t: Option<&str>) -> PayloadHead<'_> {
        PayloadHead { op, s, t }
    }

    #[test]
    fn every_generated_payload_matches_serde_json_on_the_fast_path() {
        let generated = test_support::connection(21, 6, 4000);
        for item in &generated {
            let payload = &item.payload[..];
            let head = classify(payload).unwrap();
            let (op, t, s) = reference(payload);
            assert_eq!(u64::from(head.op), op);
            assert_eq!(head.t.map(str::to_owned), t);
            assert_eq!(head.s, s);
            // Discord's key order: the fast path answers, and the fallback agrees.
            assert_eq!(classify_prefix(payload), Some(head));
            assert_eq!(classify_lazy(payload), Ok(head));
            if let Some(info) = item.info {
                assert_eq!(head.t, Some(info.name));
            }
        }
    }

    #[test]
    fn any_key_order_and_whitespace() {
        let cases: &[(&[u8], PayloadHead<'_>)] = &[
            (
                br#"{"op":0,"d":{},"s":5,"t":"MESSAGE_CREATE"}"#,
                head(0, Some(5), Some("MESSAGE_CREATE")),
            ),
            (
                b"{ \"t\" : \"READY\" ,\n\t\"s\" : 1 , \"op\" : 0 , \"d\" : {} }",
                head(0, Some(1), Some("READY")),
            ),
            (b" \r\n{\"op\":11}", head(11, None, None)),
            // `op` inside `d` or inside a string is not the payload's.
            (
                br#"{"d":{"op":3,"t":"X","s":9},"op":11}"#,
                head(11, None, None),
            ),
            (br#"{"d":"\"op\":1","op":2}"#, head(2, None, None)),
            // Escaped keys are still keys.
            (
                br#"{"\u0074":"TYPING_START","\u0073":7,"o\u0070":0}"#,
                head(0, Some(7), Some("TYPING_START")),
            ),
            // The fast path's prefix with a non-ASCII name falls back and still reads it.
            (
                "{\"t\":\"ÉVÉNEMENT\",\"s\":3,\"op\":0}".as_bytes(),
                head(0, Some(3), Some("ÉVÉNEMENT")),
            ),
            // A key given twice counts the first time.
            (br#"{"op":1,"op":2}"#, head(1, None, None)),
            (
                br#"{"t":null,"s":null,"op":256,"d":null}"#,
                head(255, None, None),
            ),
            (
                br#"{"t":null,"s":null,"op":99999999999999999999999,"d":null}"#,
                head(255, None, None),
            ),
            (
                br#"{"t":"X","s":18446744073709551615,"op":0}"#,
                head(0, Some(u64::MAX), Some("X")),
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                classify(payload),
                Ok(*expected),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn the_fast_path_takes_only_discords_own_prefix() {
        assert!(classify_prefix(br#"{"t":"A","s":1,"op":0,"d":{}}"#).is_some());
        assert!(classify_prefix(br#"{"t":null,"s":null,"op":11}"#).is_some());
        for other in [
            &br#"{"op":0,"t":"A","s":1}"#[..],
            br#"{"t": "A","s":1,"op":0}"#,
            br#"{"t":"A\u0042","s":1,"op":0}"#,
            br#"{"t":"A","s":1.0,"op":0}"#,
            br#"{"t":"A","s":1,"op":0.5}"#,
            br#"{"t":"A","s":1,"op":1e1}"#,
            br#"{"t":"A","s":01,"op":0}"#,
            br#"{"t":"A","s":18446744073709551616,"op":0}"#,
            // Digits at the end of the input may be a truncated number.
            br#"{"t":null,"s":null,"op":1"#,
        ] {
            assert_eq!(
                classify_prefix(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn errors_are_precise() {
        let cases: &[(&[u8], ClassifyError)] = &[
            (b"", ClassifyError::NotAnObject),
            (b"  ", ClassifyError::NotAnObject),
            (b"[1,2]", ClassifyError::NotAnObject),
            (b"\"op\"", ClassifyError::NotAnObject),
            (b"11", ClassifyError::NotAnObject),
            (b"{}", ClassifyError::MissingOp),
            (
                br#"{"t":null,"s":null,"d":{"op":1}}"#,
                ClassifyError::MissingOp,
            ),
            (br#"{"op":-1}"#, ClassifyError::InvalidOp),
            (br#"{"op":1.5}"#, ClassifyError::InvalidOp),
            (br#"{"op":1e2}"#, ClassifyError::InvalidOp),
            (br#"{"op":"1"}"#, ClassifyError::InvalidOp),
            (br#"{"op":null}"#, ClassifyError::InvalidOp),
            (br#"{"op":true}"#, ClassifyError::InvalidOp),
            (br#"{"op":0,"s":-1}"#, ClassifyError::InvalidSequence),
            (br#"{"op":0,"s":"1"}"#, ClassifyError::InvalidSequence),
            (br#"{"op":0,"s":2.0}"#, ClassifyError::InvalidSequence),
            (
                br#"{"op":0,"s":18446744073709551616}"#,
                ClassifyError::InvalidSequence,
            ),
            (br#"{"op":0,"t":5}"#, ClassifyError::InvalidEventName),
            (
                br#"{"op":0,"t":["READY"]}"#,
                ClassifyError::InvalidEventName,
            ),
            (
                br#"{"t":"MESSAGE\u005fCREATE","s":1,"op":0}"#,
                ClassifyError::EscapedEventName,
            ),
            // The mock gateway's corrupt text frame.
            (br#"{"t":"MESSAGE_CREATE","s":"#, ClassifyError::InvalidJson),
            (br#"{"op":1"#, ClassifyError::InvalidJson),
            (br#"{"op" 1}"#, ClassifyError::InvalidJson),
            (
                b"{\"t\":\"\xff\",\"s\":1,\"op\":0}",
                ClassifyError::InvalidJson,
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                classify(payload),
                Err(*expected),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn event_names_borrow_the_payload() {
        let payload = br#"{"t":"GUILD_CREATE","s":2,"op":0,"d":{}}"#.to_vec();
        let lazy_payload = br#"{"op":0,"t":"GUILD_CREATE"}"#.to_vec();
        for payload in [&payload, &lazy_payload] {
            let name = classify(payload).unwrap().t.unwrap();
            let offset = name.as_ptr() as usize - payload.as_ptr() as usize;
            assert_eq!(&payload[offset..offset + name.len()], b"GUILD_CREATE");
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_the_recursive_reader() {
        // Not Discord's prefix, so the fallback runs; 100,000 levels would overflow its stack.
        let mut payload = b"{\"op\":0,\"d\":".to_vec();
        payload.extend(std::iter::repeat_n(b'[', 100_000));
        payload.extend(std::iter::repeat_n(b']', 100_000));
        payload.push(b'}');
        assert_eq!(classify(&payload).unwrap_err(), ClassifyError::TooDeep);
        assert!(super::super::too_deep(&payload));
        // Brackets inside strings do not count.
        let quoted = format!(
            r#"{{"op":0,"s":1,"t":"X","d":{{"a":"{}"}}}}"#,
            "[".repeat(500)
        );
        assert_eq!(classify(quoted.as_bytes()).unwrap().op, 0);
    }
}
