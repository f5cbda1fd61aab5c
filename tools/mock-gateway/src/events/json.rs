//! Stage: test world, event generator, byte level. Compact-JSON writers that append to a
//! caller-owned `Vec<u8>`: strings with escaping, integers, snowflakes, Discord timestamps.
//!
//! Must not: allocate (beyond `out` growing), go through `format!` or serde, or emit anything but
//! valid UTF-8 JSON tokens.

use crate::rng::mix64;

/// Appends raw JSON text (keys, punctuation, literals) as is.
#[inline]
pub(super) fn push(out: &mut Vec<u8>, json_text: &str) {
    out.extend_from_slice(json_text.as_bytes());
}

/// Appends a decimal integer.
#[inline]
pub(super) fn push_u64(out: &mut Vec<u8>, value: u64) {
    let mut buffer = itoa::Buffer::new();
    out.extend_from_slice(buffer.format(value).as_bytes());
}

/// Appends a snowflake as Discord sends it: a JSON string of its decimal digits.
#[inline]
pub(super) fn push_snowflake(out: &mut Vec<u8>, id: u64) {
    out.push(b'"');
    push_u64(out, id);
    out.push(b'"');
}

/// Appends `"value"` with JSON escaping.
#[inline]
pub(super) fn push_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    push_escaped(out, value);
    out.push(b'"');
}

/// Appends `"value"` or `null`.
#[inline]
pub(super) fn push_optional_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => push_string(out, value),
        None => push(out, "null"),
    }
}

/// Appends the JSON-escaped body of a string (no surrounding quotes): `"` and `\` escaped, control
/// characters as `\n`, `\r`, `\t` or `\u00XX`; everything else, emoji included, as UTF-8.
#[inline]
pub(super) fn push_escaped(out: &mut Vec<u8>, value: &str) {
    let mut rest = value.as_bytes();
    loop {
        let clean_bytes = clean_prefix_len(rest);
        out.extend_from_slice(&rest[..clean_bytes]);
        let Some((&byte, after)) = rest[clean_bytes..].split_first() else {
            return;
        };
        push_escaped_byte(out, byte);
        rest = after;
    }
}

/// How many leading bytes need no escaping: eight at a time, then byte by byte.
#[inline]
fn clean_prefix_len(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    // Exact "does any byte of `word` equal zero" test (the borrow trick can mark a wrong byte,
    // never a wrong word).
    let has_zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGH_BITS != 0;
    let mut clean_bytes = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8) yields 8 bytes"));
        // Bytes below 0x20: subtracting 0x20 borrows into the high bit of a byte < 0x80.
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS != 0;
        if control
            || has_zero_byte(word ^ (ONES * u64::from(b'"')))
            || has_zero_byte(word ^ (ONES * u64::from(b'\\')))
        {
            break;
        }
        clean_bytes += 8;
    }
    let needs_escape = |&byte: &u8| byte < 0x20 || byte == b'"' || byte == b'\\';
    clean_bytes
        + bytes[clean_bytes..]
            .iter()
            .position(needs_escape)
            .unwrap_or(bytes.len() - clean_bytes)
}

/// Appends one byte of a string, escaped if JSON requires it.
#[inline]
fn push_escaped_byte(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x00..=0x1f => {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        }
        _ => out.push(byte),
    }
}

/// Appends `count` lowercase hex digits of `value` (low digits last), e.g. image hashes.
#[inline]
pub(super) fn push_hex(out: &mut Vec<u8>, value: u128, count: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    assert!(count <= 32, "a u128 has 32 hex digits");
    let mut digits = [0u8; 32];
    for (position, digit) in digits[..count].iter_mut().rev().enumerate() {
        *digit = HEX[((value >> (position * 4)) & 0xf) as usize];
    }
    out.extend_from_slice(&digits[..count]);
}

/// Appends `count` characters of the URL-safe base64 alphabet, a pure function of `seed`: tokens,
/// proxy URL hashes, image placeholders.
pub(super) fn push_base64ish(out: &mut Vec<u8>, seed: u64, count: usize) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = seed;
    let mut remaining = count;
    while remaining > 0 {
        state = mix64(state);
        let mut bits = state;
        let mut chars = [0u8; 10];
        for char in &mut chars {
            *char = ALPHABET[(bits & 63) as usize];
            bits >>= 6;
        }
        let taken = remaining.min(10);
        out.extend_from_slice(&chars[..taken]);
        remaining -= taken;
    }
}

/// Appends a timestamp string `"2026-02-27T23:56:48.287000+00:00"` for Unix milliseconds,
/// microseconds written as Discord writes message timestamps (millisecond precision, `000`).
#[inline]
pub(super) fn push_timestamp_ms(out: &mut Vec<u8>, unix_ms: u64) {
    push_timestamp_us(out, unix_ms * 1000);
}

/// Appends a timestamp string `"2026-02-27T23:53:35.495923+00:00"` for Unix microseconds.
pub(super) fn push_timestamp_us(out: &mut Vec<u8>, unix_us: u64) {
    let unix_seconds = unix_us / 1_000_000;
    let micros = unix_us % 1_000_000;
    let days = unix_seconds / 86_400;
    let second_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut text = *b"\"0000-00-00T00:00:00.000000+00:00\"";
    write_digits(&mut text[1..5], year);
    write_digits(&mut text[6..8], month);
    write_digits(&mut text[9..11], day);
    write_digits(&mut text[12..14], second_of_day / 3600);
    write_digits(&mut text[15..17], second_of_day / 60 % 60);
    write_digits(&mut text[18..20], second_of_day % 60);
    write_digits(&mut text[21..27], micros);
    out.extend_from_slice(&text);
}

/// Fills `digits` (an even count) with the low decimal digits of `value`, zero padded, two at a
/// time.
#[inline]
fn write_digits(digits: &mut [u8], mut value: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
                                2021222324252627282930313233343536373839\
                                4041424344454647484950515253545556575859\
                                6061626364656667686970717273747576777879\
                                8081828384858687888990919293949596979899";
    for pair in digits.rchunks_exact_mut(2) {
        let index = (value % 100) as usize * 2;
        pair.copy_from_slice(&PAIRS[index..index + 2]);
        value /= 100;
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// restricted to dates after 1970).
fn civil_from_days(days_since_epoch: u64) -> (u64, u64, u64) {
    let z = days_since_epoch + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).expect("writers emit UTF-8")
    }

    #[test]
    fn escaping_round_trips_through_serde() {
        let samples = [
            "",
            "plain",
            "say \"hi\"",
            r"C:\Users\bob ¯\_(ツ)_/¯",
            "line one\nline two\r\n\ttabbed",
            "bell \u{7} and nul \u{0} and \u{1f}",
            "emoji 😂🔥 and привет こんにちは",
        ];
        for sample in samples {
            let json = text(|out| push_string(out, sample));
            let parsed: String = serde_json::from_str(&json).expect("valid JSON string");
            assert_eq!(parsed, sample);
        }
        assert_eq!(text(|out| push_string(out, "a\"b\\c\n")), r#""a\"b\\c\n""#);
        assert_eq!(text(|out| push_escaped(out, "\u{1}")), r"\u0001");
    }

    #[test]
    fn escaping_matches_serde_on_random_strings() {
        let alphabet = [
            'a', 'Z', ' ', '"', '\\', '\n', '\t', '\u{1}', '\u{1f}', '~', 'é', '😂', '\u{7f}',
        ];
        let mut rng = crate::rng::Rng::new(3);
        for _ in 0..2000 {
            let length = rng.below(40) as usize;
            let sample: String = (0..length).map(|_| rng.pick(&alphabet)).collect();
            let ours = text(|out| push_string(out, &sample));
            let parsed: String = serde_json::from_str(&ours).expect("valid JSON string");
            assert_eq!(parsed, sample);
            let clean = text(|out| push_escaped(out, "exactly sixteen!"));
            assert_eq!(clean, "exactly sixteen!");
        }
    }

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(
            text(|out| push_timestamp_ms(out, 1_772_236_608_287)),
            "\"2026-02-27T23:56:48.287000+00:00\""
        );
        assert_eq!(
            text(|out| push_timestamp_us(out, 1_709_063_451_701_123)),
            "\"2024-02-27T19:50:51.701123+00:00\""
        );
        assert_eq!(
            text(|out| push_timestamp_ms(out, 0)),
            "\"1970-01-01T00:00:00.000000+00:00\""
        );
        // Leap day and end of year.
        assert_eq!(
            text(|out| push_timestamp_ms(out, 951_782_400_000)),
            "\"2000-02-29T00:00:00.000000+00:00\""
        );
        assert_eq!(
            text(|out| push_timestamp_ms(out, 1_767_225_599_999)),
            "\"2025-12-31T23:59:59.999000+00:00\""
        );
    }

    #[test]
    fn numbers_and_hex() {
        assert_eq!(
            text(|out| push_snowflake(out, 900_000_000_000_000_008)),
            "\"900000000000000008\""
        );
        assert_eq!(text(|out| push_u64(out, 0)), "0");
        assert_eq!(text(|out| push_hex(out, 0xabc, 6)), "000abc");
        assert_eq!(text(|out| push_hex(out, u128::MAX, 32)), "f".repeat(32));
    }
}
