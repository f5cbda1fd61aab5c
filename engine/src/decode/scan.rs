//! The field helpers' fast path: a forward-only scanner that walks a payload's top-level object
//! to `d`, then `d`'s members, and hands back the raw bytes of the values it was asked for. What
//! it skips it does not validate: a string ends at its first unescaped quote, an object or array
//! at the bracket that brings the count of open brackets (outside strings) back to zero, a
//! number or literal at the next delimiter. What it walks — the two objects on the path, their
//! keys, colons and commas — it checks as a parser would.
//!
//! Must not: allocate, recurse, panic, read out of bounds, or loop without moving forward. Each
//! step consumes at least one byte or stops, so a scan ends within one pass over the payload;
//! nesting is a counter, so depth costs nothing. (sonic-rs's checked skip recurses once per
//! level: on a 2 MiB thread stack it overflows at about 19,000 levels in a release build and
//! about 70 in a debug one. The scanner never hands a payload to it.)
//!
//! Cost: a realistic MESSAGE_CREATE walks some 45 strings and 15 brackets before its content, most
//! of them a few bytes long, so what counts is the instructions spent per string and per byte
//! between strings: strings go eight bytes at a time, the bytes between them through one table
//! lookup each ([`BYTE_CLASS`]), and the hot helpers are inlined. Wider steps were tried and
//! lost, 25–50 % slower on the mock generator's stream: finding the next quote or bracket eight
//! bytes at a time, strings sixteen or thirty-two bytes at a time, and 8-byte quote and bracket
//! bitmaps with an in-string mask all spend more on the short runs than they save on the long
//! ones. What does pay is skipping a whole object or array 64 bytes at a time (`wide`, SSE2):
//! a message's `member` object and its embeds are a few hundred bytes of short strings, which
//! the byte loop walks string by string and the block step crosses in a few steps (the walk to a
//! message's id and content: 540 → 400 µs over the bench's messages, side by side). Walking all
//! of `d` in 64-byte blocks instead, its members found from the colons at its own level (masks of
//! quotes, brackets and colons; each key read back from its colon) lost as well: 10–22 % slower
//! than this walk on the mock's messages (about 1.5 KB, 14 members before the content), with
//! SSE2 and with every instruction set of the build machine alike.
//!
//! # Agreement with sonic-rs
//!
//! On valid JSON each walk gives exactly what sonic-rs's checked lazy readers give, quirks
//! included: [`d_member`] is `get_from_slice(payload, ["d", key])` (the first `d`, its first
//! `key`) and [`message_id_and_content`] is `get_many` over `d.id` and `d.content` (later
//! duplicates overwrite earlier ones until two values have been seen, and a second `d` is walked
//! if the first lacked one). An empty object on the path answers nothing, as sonic-rs's
//! `GetInEmptyObject` does. Keys are compared as text: a key written with escapes
//! (`"\u0069d"` is `"id"`) is unescaped as it is compared, without a copy.
//!
//! On malformed input the scanner answers `None` wherever its walk meets something it does not
//! expect (a truncated payload, a missing colon, unbalanced brackets, a number or literal at the
//! very end that may have lost bytes). What it does not look at — the inside of skipped values,
//! UTF-8, escapes inside values — it does not check, so on such a payload it may read a field
//! that sonic-rs, which validates everything it skips, would refuse. Payloads reach the filter
//! only after [`classify`](super::classify); the bot parses them in full.

/// The raw bytes of `d.<name>` as `sonic_rs::get_from_slice(payload, ["d", name])` finds them:
/// the first top-level `d`, which must be an object, and its first member named `name` (ASCII).
pub(crate) fn d_member<'a>(payload: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut cursor = Cursor::new(payload);
    cursor.enter_object()?;
    while !cursor.key()?.is(b"d") {
        cursor.value()?;
        if !cursor.next_member()? {
            return None;
        }
    }
    cursor.enter_object()?;
    while !cursor.key()?.is(name) {
        cursor.value()?;
        if !cursor.next_member()? {
            return None;
        }
    }
    cursor.value()
}

/// The event name: the first top-level `t` if it is a string without escapes, its bytes
/// between the quotes. Discord writes `t` first, so this reads a few bytes of the payload.
pub(crate) fn event_name(payload: &[u8]) -> Option<&[u8]> {
    let mut cursor = Cursor::new(payload);
    cursor.enter_object()?;
    loop {
        let key = cursor.key()?;
        let value = cursor.value()?;
        if key.is(b"t") {
            let name = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
            return (!name.contains(&b'\\')).then_some(name);
        }
        if !cursor.next_member()? {
            return None;
        }
    }
}

/// The raw bytes of the top-level `t` and `d` (the first of each): what identifies a dispatch
/// whatever session carried it (`s` differs between sessions; these do not). `None` unless
/// both are there.
pub(crate) fn event_name_and_data(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut cursor = Cursor::new(payload);
    let (mut name, mut data) = (None, None);
    cursor.enter_object()?;
    loop {
        let key = cursor.key()?;
        let value = cursor.value()?;
        if name.is_none() && key.is(b"t") {
            name = Some(value);
        } else if data.is_none() && key.is(b"d") {
            data = Some(value);
        }
        if name.is_some() && data.is_some() {
            break;
        }
        if !cursor.next_member()? {
            break;
        }
    }
    Some((name?, data?))
}

/// [`event_name_and_data`]'s `t` and [`d_member`]'s `d.<member>` (when `member` is given) from
/// one walk: exactly `(event_name_and_data(payload).map(|(t, _)| t), member.and_then(|m|
/// d_member(payload, m)))` on every input, valid or not. The two walks share the members before
/// `d`; inside `d` the member's walk goes first, and the skip to `d`'s end that
/// [`event_name_and_data`] needs continues from where it stopped instead of starting over at
/// `d`'s bracket (the guild id is usually `d`'s last member, so `d` is walked about once, not
/// twice).
///
/// The continuation is the skip's own answer only where the member's walk read the bytes as the
/// skip would: strings and containers are read by the same helpers, but a number or literal runs
/// to its delimiter in the walk, while the skip would count a quote or an opening bracket inside
/// one (malformed JSON). After such a scalar, or where the member's walk broke off, `d` is
/// skipped from its start as before.
pub(crate) fn event_name_and_d_member<'a>(
    payload: &'a [u8],
    member: Option<&[u8]>,
) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let mut cursor = Cursor::new(payload);
    let (mut name, mut data_seen, mut found) = (None, false, None);
    if cursor.enter_object().is_none() {
        return (None, None);
    }
    loop {
        let Some(key) = cursor.key() else {
            return (None, found);
        };
        if !data_seen && key.is(b"d") {
            data_seen = true;
            let mut inner = Cursor::new(payload);
            inner.at = cursor.at;
            let walked = member.and_then(|member| d_member_from(&mut inner, member));
            found = walked.and_then(|walked| walked.value);
            let end = match walked {
                // Inside `d` (depth 1), outside any string: the skip goes on from here.
                Some(walked) if walked.clean && walked.value.is_some() => {
                    container_end(payload, inner.at)
                }
                // The walk read `d` to its closing bracket.
                Some(walked) if walked.clean => Some(inner.at),
                _ => cursor.value().map(|_| cursor.at),
            };
            let Some(end) = end else {
                return (None, found);
            };
            cursor.at = end;
            if name.is_some() {
                return (name, found);
            }
        } else {
            let Some(value) = cursor.value() else {
                return (None, found);
            };
            if name.is_none() && key.is(b"t") {
                name = Some(value);
                if data_seen {
                    return (name, found);
                }
            }
        }
        if cursor.next_member() != Some(true) {
            return (None, found);
        }
    }
}

/// How [`d_member_from`] walked `d`.
#[derive(Clone, Copy)]
struct DWalk<'a> {
    /// The member's raw value; `None` when `d` ended without it (the cursor is then past `d`).
    value: Option<&'a [u8]>,
    /// Whether every number or literal walked is free of quotes and opening brackets, so that
    /// the cursor stands where [`container_end`] would have passed.
    clean: bool,
}

/// [`d_member`]'s walk inside `d`, from the cursor just past `d`'s key: `None` where that walk
/// answers `None` for a broken `d` (not an object, a broken member before the one asked for).
fn d_member_from<'a>(cursor: &mut Cursor<'a>, name: &[u8]) -> Option<DWalk<'a>> {
    cursor.enter_object()?;
    let mut clean = true;
    loop {
        let is_member = cursor.key()?.is(name);
        let value = cursor.value()?;
        clean &= skips_alike(value);
        if is_member {
            return Some(DWalk {
                value: Some(value),
                clean,
            });
        }
        if !cursor.next_member()? {
            return Some(DWalk { value: None, clean });
        }
    }
}

/// Whether [`container_end`] would pass over `value` (as [`Cursor::value`] read it) as the walk
/// did: strings and containers are read alike; a number or literal only when no quote or
/// opening bracket hides inside it.
fn skips_alike(value: &[u8]) -> bool {
    match value.split_first() {
        Some((b'"' | b'{' | b'[', _)) => true,
        Some((_, rest)) => !rest.iter().any(|&byte| matches!(byte, b'"' | b'{' | b'[')),
        None => true,
    }
}

/// The raw bytes of `d.id` and `d.content` as `sonic_rs::get_many` finds them for those two
/// paths: both members of every top-level `d` count, each one found overwrites the last of its
/// name, and the walk ends after the second one found (or at the end of the payload's object).
/// `None` unless both were found.
pub(crate) fn message_id_and_content(payload: &[u8]) -> Option<MessageFields<'_>> {
    message_id_and_content_traced(payload).0
}

/// A message's `d.id` and `d.content`, raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageFields<'a> {
    pub(crate) id: &'a [u8],
    pub(crate) content: &'a [u8],
}

/// [`message_id_and_content`], and whether the walk entered a `d` after reading a key written
/// with escapes. sonic-rs's `get_many` fails a debug assertion there (`strbuf.is_empty()` in its
/// `get_many_keys`: the buffer that held the unescaped key is not cleared), so a debug build of
/// the sonic-rs reader panics on such a payload; the fuzz check has to know.
pub(crate) fn message_id_and_content_traced(payload: &[u8]) -> (Option<MessageFields<'_>>, bool) {
    let mut cursor = Cursor::new(payload);
    let mut escaped_before_d = false;
    let (mut id, mut content) = (None, None);
    let mut found = 0;
    let mut walk = || {
        cursor.enter_object()?;
        'payload: loop {
            if cursor.key()?.is(b"d") {
                escaped_before_d |= cursor.escaped_keys;
                cursor.enter_object()?;
                loop {
                    let key = cursor.key()?;
                    let slot = if key.is(b"id") {
                        Some(&mut id)
                    } else if key.is(b"content") {
                        Some(&mut content)
                    } else {
                        None
                    };
                    let value = cursor.value()?;
                    if let Some(slot) = slot {
                        *slot = Some(value);
                        found += 1;
                        if found == 2 {
                            break 'payload;
                        }
                    }
                    if !cursor.next_member()? {
                        break;
                    }
                }
            } else {
                cursor.value()?;
            }
            if !cursor.next_member()? {
                break;
            }
        }
        Some(MessageFields {
            id: id?,
            content: content?,
        })
    };
    let fields = walk();
    (fields, escaped_before_d)
}

/// A key as written between its quotes.
#[derive(Debug, Clone, Copy)]
struct Key<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl Key<'_> {
    /// Whether the key's text is `name` (ASCII). Inlined: against a constant `name` the
    /// comparison is a length check and a load or two, not a call to `memcmp`.
    #[inline]
    fn is(&self, name: &[u8]) -> bool {
        if self.escaped {
            unescaped_equals(self.raw, name)
        } else {
            self.raw == name
        }
    }
}

/// A position in a payload; everything before it has been walked.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Whether a key read so far was written with escapes (the key the cursor just read included).
    escaped_keys: bool,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor {
            bytes,
            at: 0,
            escaped_keys: false,
        }
    }

    /// Skips whitespace and answers the next byte without consuming it.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&byte) = self.bytes.get(self.at) {
            if !is_whitespace(byte) {
                return Some(byte);
            }
            self.at += 1;
        }
        None
    }

    /// Skips whitespace and consumes `expected`.
    fn expect(&mut self, expected: u8) -> Option<()> {
        if self.peek() != Some(expected) {
            return None;
        }
        self.at += 1;
        Some(())
    }

    /// An object's `{` and the opening quote of its first key. An empty object is `None`.
    fn enter_object(&mut self) -> Option<()> {
        self.expect(b'{')?;
        self.expect(b'"')
    }

    /// A key (the cursor is past its opening quote) and the colon after it.
    #[inline(always)]
    fn key(&mut self) -> Option<Key<'a>> {
        let start = self.at;
        let (end, escaped) = string_end(self.bytes, start)?;
        let raw = self.bytes.get(start..end)?;
        self.at = end + 1;
        self.escaped_keys |= escaped;
        self.expect(b':')?;
        Some(Key { raw, escaped })
    }

    /// After a member's value: `,` and the next key's opening quote (true), or `}` (false).
    fn next_member(&mut self) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.at += 1;
                self.expect(b'"')?;
                Some(true)
            }
            b'}' => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// Skips one value and answers its raw bytes: a string with its quotes, a whole object or
    /// array, or a number or literal up to the delimiter after it (which must be there).
    fn value(&mut self) -> Option<&'a [u8]> {
        let first = self.peek()?;
        let start = self.at;
        let after_first = start + 1;
        let end = match first {
            b'"' => string_end(self.bytes, after_first).map(|(end, _)| end + 1),
            b'{' | b'[' => container_end(self.bytes, after_first),
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => scalar_end(self.bytes, after_first),
            _ => None,
        }?;
        self.at = end;
        self.bytes.get(start..end)
    }
}

/// JSON's whitespace.
fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a key written with escapes (`raw`, between its quotes) has the text `name`, which is
/// ASCII. An escape that is not JSON's, or that stands for a character outside ASCII, cannot
/// match. Nothing is copied. Rare (Discord does not escape keys), so kept out of the walk.
#[cold]
#[inline(never)]
fn unescaped_equals(raw: &[u8], name: &[u8]) -> bool {
    let (mut rest, mut name) = (raw, name);
    loop {
        let (byte, after) = match rest {
            [] => return name.is_empty(),
            [b'\\', b'u', digits @ ..] => {
                let Some((hex, after)) = digits.split_first_chunk::<4>() else {
                    return false;
                };
                match hex_u16(hex) {
                    Some(unit) if unit < 0x80 => (unit as u8, after),
                    _ => return false,
                }
            }
            [b'\\', escape, after @ ..] => {
                let byte = match escape {
                    b'"' | b'\\' | b'/' => *escape,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    _ => return false,
                };
                (byte, after)
            }
            [byte, after @ ..] => (*byte, after),
        };
        match name.split_first() {
            Some((&expected, more)) if expected == byte => (rest, name) = (after, more),
            _ => return false,
        }
    }
}

/// Four hexadecimal digits (either case) as a number.
fn hex_u16(digits: &[u8; 4]) -> Option<u16> {
    digits.iter().try_fold(0u16, |value, &digit| {
        let nibble = char::from(digit).to_digit(16)?;
        Some((value << 4) | nibble as u16)
    })
}

/// The index of the quote that closes a string whose contents start at `at`, and whether the
/// string has an escape. A backslash escapes the byte after it (`\"` and `\\` included); what
/// follows it is not checked further. `None` if the string does not end.
#[inline(always)]
fn string_end(bytes: &[u8], mut at: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        // Eight bytes at a time while eight remain: the first quote or backslash among them.
        // (`at + 8` cannot overflow: `at` is at most two past the end of a slice.)
        while let Some(chunk) = bytes.get(at..at + 8).and_then(<[u8]>::first_chunk::<8>) {
            let word = u64::from_le_bytes(*chunk);
            let quotes = bytes_equal(word, b'"');
            let hits = quotes | bytes_equal(word, b'\\');
            if hits != 0 {
                let lowest = hits & hits.wrapping_neg();
                at += (lowest.trailing_zeros() / 8) as usize;
                // Exact: a false positive of `quotes` lies above one of its true hits, so at the
                // lowest hit of either it is set only for a real quote.
                if quotes & lowest != 0 {
                    return Some((at, escaped));
                }
                break;
            }
            at += 8;
        }
        match *bytes.get(at)? {
            b'"' => return Some((at, escaped)),
            b'\\' => {
                escaped = true;
                at += 2;
            }
            _ => at += 1,
        }
    }
}

/// Whether `bytes` nests objects and arrays deeper than `max` anywhere (brackets outside
/// strings). Linear, no recursion. Guards the readers that recurse per level (sonic-rs), so
/// that a hostile payload costs a reconnect, never a core's stack.
pub(crate) fn nests_deeper_than(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(class) = next_structural(bytes, &mut at) {
        match class {
            ByteClass::Quote => match string_end(bytes, at) {
                Some((end, _)) => at = end + 1,
                None => return false,
            },
            ByteClass::Open => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            ByteClass::Close => depth = depth.saturating_sub(1),
            // Not returned by `next_structural`.
            ByteClass::Other | ByteClass::Delimiter => {}
        }
    }
    false
}

/// The index just past the bracket that closes an object or array whose contents start at `at`:
/// brackets of either kind are counted, outside strings. `None` if it does not close.
///
/// 64 bytes at a time where the target has SSE2 ([`wide::container_end`]); an empty container
/// and what the wide step cannot judge alike (a backslash outside a string: malformed JSON) go
/// byte by byte.
#[inline]
fn container_end(bytes: &[u8], at: usize) -> Option<usize> {
    if let Some(b'}' | b']') = bytes.get(at) {
        return Some(at + 1);
    }
    #[cfg(target_arch = "x86_64")]
    match wide::container_end(bytes, at) {
        wide::Outcome::Ends(end) => return Some(end),
        wide::Outcome::RunsOut => return None,
        wide::Outcome::Unsure => {}
    }
    container_end_bytewise(bytes, at)
}

/// [`container_end`] one structural byte at a time.
fn container_end_bytewise(bytes: &[u8], mut at: usize) -> Option<usize> {
    let mut depth = 1usize;
    loop {
        match next_structural(bytes, &mut at)? {
            ByteClass::Quote => at = string_end(bytes, at)?.0 + 1,
            ByteClass::Open => depth += 1,
            ByteClass::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            // Not returned by `next_structural`.
            ByteClass::Other | ByteClass::Delimiter => {}
        }
    }
}

/// The container skip 64 bytes at a time, with SSE2 (part of every x86-64 CPU): per block, the
/// bitmaps of quotes, backslashes, opening and closing brackets; the escaped bytes from the
/// backslashes (each unescaped backslash escapes the byte after it, across blocks too); the bytes
/// inside strings as the running parity of the unescaped quotes (an opening quote counts as
/// inside, a closing one as outside); then the brackets outside strings. A block whose closing
/// brackets cannot bring the depth to zero is counted in one step; only the block where the
/// container may close is walked bracket by bracket.
///
/// It agrees with [`container_end_bytewise`] on every input where no backslash stands outside a
/// string, that is on all valid JSON: up to the first such backslash both read the same strings.
/// At one it answers [`Outcome::Unsure`] and the byte-wise walk decides.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod wide {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    pub(super) enum Outcome {
        /// Just past the closing bracket.
        Ends(usize),
        /// The bytes ran out first.
        RunsOut,
        /// A backslash outside a string: the byte-wise walk must decide.
        Unsure,
    }

    const BLOCK: usize = 64;

    pub(super) fn container_end(bytes: &[u8], at: usize) -> Outcome {
        let mut depth = 1usize;
        // All ones when the previous block ended inside a string.
        let mut inside_carry = 0u64;
        // Whether the first byte of the next block is escaped.
        let mut escape_carry = false;
        let mut start = at;
        let mut tail = [0u8; BLOCK];
        while let Some(rest) = bytes.get(start..).filter(|rest| !rest.is_empty()) {
            let block = match rest.first_chunk::<BLOCK>() {
                Some(block) => block,
                None => {
                    // The last, short block, padded with bytes that match nothing.
                    tail[..rest.len()].copy_from_slice(rest);
                    &tail
                }
            };
            let masks = Masks::of(block);
            let escaped = escaped(masks.backslashes, &mut escape_carry);
            let inside = prefix_xor(masks.quotes & !escaped) ^ inside_carry;
            inside_carry = 0u64.wrapping_sub(inside >> 63);
            if masks.backslashes & !inside != 0 {
                return Outcome::Unsure;
            }
            let opens = masks.opens & !inside;
            let closes = masks.closes & !inside;
            let closing = closes.count_ones() as usize;
            if closing < depth {
                depth = depth + opens.count_ones() as usize - closing;
            } else {
                let mut brackets = opens | closes;
                while brackets != 0 {
                    let index = brackets.trailing_zeros();
                    let bit = 1u64 << index;
                    if opens & bit != 0 {
                        depth += 1;
                    } else {
                        depth -= 1;
                        if depth == 0 {
                            return Outcome::Ends(start + index as usize + 1);
                        }
                    }
                    brackets &= brackets - 1;
                }
            }
            start += BLOCK;
        }
        Outcome::RunsOut
    }

    /// One block's bytes of interest, bit `i` for byte `i`.
    struct Masks {
        quotes: u64,
        backslashes: u64,
        opens: u64,
        closes: u64,
    }

    impl Masks {
        #[inline]
        fn of(block: &[u8; BLOCK]) -> Masks {
            // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code can run on has it.
            unsafe { Masks::of_sse2(block) }
        }

        #[target_feature(enable = "sse2")]
        fn of_sse2(block: &[u8; BLOCK]) -> Masks {
            let mut masks = Masks {
                quotes: 0,
                backslashes: 0,
                opens: 0,
                closes: 0,
            };
            for lane in 0..BLOCK / 16 {
                // SAFETY: `block` holds 64 bytes, so the 16 from `lane * 16` are in bounds, and
                // `loadu` has no alignment requirement.
                let bytes =
                    unsafe { _mm_loadu_si128(block.as_ptr().add(lane * 16).cast::<__m128i>()) };
                // `{` and `[` differ from `}` and `]` only in bit 5 of 0x7b/0x5b and 0x7d/0x5d:
                // with it set, one comparison each (no other byte folds onto them).
                let folded = _mm_or_si128(bytes, _mm_set1_epi8(0x20));
                let shift = lane * 16;
                let quotes = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
                let backslashes = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
                let opens = _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8));
                let closes = _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8));
                masks.quotes |= u64::from(_mm_movemask_epi8(quotes) as u16) << shift;
                masks.backslashes |= u64::from(_mm_movemask_epi8(backslashes) as u16) << shift;
                masks.opens |= u64::from(_mm_movemask_epi8(opens) as u16) << shift;
                masks.closes |= u64::from(_mm_movemask_epi8(closes) as u16) << shift;
            }
            masks
        }
    }

    /// The bytes a backslash escapes: each backslash not itself escaped escapes the byte after
    /// it; `carry` brings that across from the block before and to the block after.
    #[inline(always)]
    fn escaped(backslashes: u64, carry: &mut bool) -> u64 {
        let mut escaped = u64::from(*carry);
        *carry = false;
        let mut acting = backslashes & !escaped;
        while acting != 0 {
            let index = acting.trailing_zeros();
            acting &= acting - 1;
            if index == 63 {
                *carry = true;
            } else {
                let next = 1u64 << (index + 1);
                escaped |= next;
                acting &= !next;
            }
        }
        escaped
    }

    /// Bit `i` is the parity of bits `0..=i`.
    #[inline(always)]
    fn prefix_xor(mut bits: u64) -> u64 {
        bits ^= bits << 1;
        bits ^= bits << 2;
        bits ^= bits << 4;
        bits ^= bits << 8;
        bits ^= bits << 16;
        bits ^= bits << 32;
        bits
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn escapes_pair_up_and_cross_blocks() {
            let mut carry = false;
            // Backslashes at 0, 1, 2: 0 escapes 1, 2 escapes 3.
            assert_eq!(escaped(0b111, &mut carry), 0b1010);
            assert!(!carry);
            assert_eq!(escaped(1 << 63, &mut carry), 0);
            assert!(carry);
            // The carried escape falls on a backslash, which then escapes nothing.
            assert_eq!(escaped(0b1, &mut carry), 0b1);
            assert!(!carry);
        }

        #[test]
        fn prefix_xor_is_the_running_parity() {
            assert_eq!(prefix_xor(0b1001), 0b0111);
            assert_eq!(prefix_xor(1), u64::MAX);
            assert_eq!(prefix_xor(1 << 63), 1 << 63);
        }
    }
}

/// The class of the first quote or bracket at or after `at`, with `at` moved just past it; `None`
/// when the bytes run out first. One table lookup per byte skipped: cheaper than the five-way
/// `match` it replaces, and than skipping eight bytes at a time (the runs between strings are a
/// few bytes long).
#[inline(always)]
fn next_structural(bytes: &[u8], at: &mut usize) -> Option<ByteClass> {
    loop {
        let class = BYTE_CLASS[usize::from(*bytes.get(*at)?)];
        *at += 1;
        if matches!(class, ByteClass::Quote | ByteClass::Open | ByteClass::Close) {
            return Some(class);
        }
    }
}

/// What the scanner's byte loops see in a byte outside strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteClass {
    Quote,
    /// `{` or `[`.
    Open,
    /// `}` or `]`.
    Close,
    /// What ends a number or literal besides a closing bracket: whitespace or `,`.
    Delimiter,
    Other,
}

/// [`ByteClass`] by byte.
static BYTE_CLASS: [ByteClass; 256] = {
    let mut classes = [ByteClass::Other; 256];
    classes[b'"' as usize] = ByteClass::Quote;
    classes[b'{' as usize] = ByteClass::Open;
    classes[b'[' as usize] = ByteClass::Open;
    classes[b'}' as usize] = ByteClass::Close;
    classes[b']' as usize] = ByteClass::Close;
    classes[b',' as usize] = ByteClass::Delimiter;
    classes[b' ' as usize] = ByteClass::Delimiter;
    classes[b'\t' as usize] = ByteClass::Delimiter;
    classes[b'\n' as usize] = ByteClass::Delimiter;
    classes[b'\r' as usize] = ByteClass::Delimiter;
    classes
};

/// The index of the delimiter (whitespace, `,`, `}` or `]`) that ends a number or literal whose
/// remaining bytes start at `at`. `None` at the end of the input: the token may be cut short.
fn scalar_end(bytes: &[u8], at: usize) -> Option<usize> {
    let length = bytes.get(at..)?.iter().position(|&byte| {
        matches!(
            BYTE_CLASS[usize::from(byte)],
            ByteClass::Delimiter | ByteClass::Close
        )
    })?;
    Some(at + length)
}

/// A word with the high bit of each byte of `word` that equals `needle` set. Bits above the
/// lowest may be false positives (a borrow runs upward from a matching byte), so only the lowest
/// set bit is meaningful: that is all [`string_end`] reads. In an OR of such words the lowest set
/// bit is the first byte that matches any needle, and a word has that bit set only if its needle
/// is the byte there (its false positives lie above its own first match).
fn bytes_equal(word: u64, needle: u8) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_where_equal = word ^ (ONES * u64::from(needle));
    zero_where_equal.wrapping_sub(ONES) & !zero_where_equal & HIGHS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_name_and_data_are_the_top_level_members_raw() {
        let payload = br#"{"t":"MESSAGE_CREATE","s":12,"op":0,"d":{"id":"1","t":"inner"}}"#;
        assert_eq!(
            event_name_and_data(payload),
            Some((
                &br#""MESSAGE_CREATE""#[..],
                &br#"{"id":"1","t":"inner"}"#[..]
            ))
        );
        // Any key order; `d` before `t`.
        let reordered = br#"{"op":0,"d":[1,2],"s":1,"t":"X"}"#;
        assert_eq!(
            event_name_and_data(reordered),
            Some((&br#""X""#[..], &b"[1,2]"[..]))
        );
        assert_eq!(event_name_and_data(br#"{"t":"X","s":1}"#), None);
        assert_eq!(event_name_and_data(br#"{"t":"X","d":{"#), None);
        assert_eq!(event_name_and_data(b"[]"), None);
    }
    use crate::decode::test_support::Random;

    /// [`event_name_and_d_member`] against the two walks it replaces.
    fn check_one_walk(payload: &[u8], member: Option<&[u8]>) {
        assert_eq!(
            event_name_and_d_member(payload, member),
            (
                event_name_and_data(payload).map(|(name, _)| name),
                member.and_then(|member| d_member(payload, member))
            ),
            "{:?} in {:?}",
            member.map(String::from_utf8_lossy),
            String::from_utf8_lossy(payload)
        );
    }

    #[test]
    fn the_one_walk_answers_what_the_two_walks_answer() {
        let cases: &[&[u8]] = &[
            br#"{"t":"GUILD_CREATE","s":1,"op":0,"d":{"id":"5","name":"x"}}"#,
            br#"{"t":"MESSAGE_CREATE","s":1,"op":0,"d":{"id":"5","guild_id":"7","x":[1,{"a":"}"}]}}"#,
            br#"{"t":"X","s":1,"op":0,"d":{"id":"5","x":[1,{"a":"}"}],"guild_id":7}}"#,
            // `d` before `t`; two `d`s; `t` twice.
            br#"{"op":0,"d":{"guild_id":"7"},"s":1,"t":"X"}"#,
            br#"{"d":{"guild_id":"1"},"d":{"guild_id":"2"},"t":"Y","t":"Z"}"#,
            br#"{"t":"X","d":{"guild_id":"1"},"d":[}"#,
            // A number or literal that hides a quote or bracket, before and as the member.
            br#"{"t":"X","d":{"a":1"{,"guild_id":"1","b":"}"}}"#,
            br#"{"t":"X","d":{"a":tr[ue,"guild_id":"1"},"s":2}"#,
            br#"{"t":"X","d":{"guild_id":1"}",x"}}"#,
            br#"{"t":"X","d":{"guild_id":1[,"a":]}}}"#,
            // Truncated, empty, not an object, trailing garbage.
            br#"{"t":"X","d":{"guild_id":"1","#,
            br#"{"t":"X","d":{"guild_id":"1"}"#,
            br#"{"t":"X","d":{"guild_id":"1"} "#,
            br#"{"t":"X","d":{"guild_id":"1"}x"#,
            br#"{"t":"X","d":{}}"#,
            br#"{"t":"X","d":[]}"#,
            br#"{"t":"X","d":null}"#,
            br#"{"t":"X","d":{"a":{"guild_id":"9"}}}"#,
            br#"{"t":"X","d" : { "guild_id" : "1" , "b" : [ ] } }"#,
            br#"{"t":"X","d":{"gu\u0069ld_id":"1"}}"#,
            br#"{"t":"X"}"#,
            b"{}",
            b"[]",
            b"",
        ];
        for member in [Some(&b"guild_id"[..]), Some(b"id"), Some(b"b"), None] {
            for case in cases {
                check_one_walk(case, member);
            }
        }
        // Generated payloads, and the same with a few bytes changed, cut or hidden in scalars.
        const BYTES: &[u8] = b"{}[]\",:0-.e \\tsopd";
        let mut random = Random(0x0E_3A1C);
        for item in crate::decode::test_support::connection(7, 3, 400) {
            let payload = item.payload;
            if payload.len() > 64 * 1024 {
                continue;
            }
            for member in [Some(&b"guild_id"[..]), Some(b"id")] {
                check_one_walk(&payload, member);
            }
            for _ in 0..8 {
                let mut mutated = payload.clone();
                match random.below(3) {
                    0 => {
                        for _ in 0..1 + random.below(3) {
                            let at = random.below(mutated.len());
                            mutated[at] = BYTES[random.below(BYTES.len())];
                        }
                    }
                    1 => mutated.truncate(random.below(mutated.len())),
                    _ => {
                        // Right after a digit or a literal's letter: inside a scalar.
                        let at = random.below(mutated.len());
                        if let Some(offset) = mutated[at..]
                            .iter()
                            .position(|byte| byte.is_ascii_digit() || *byte == b'l')
                        {
                            let byte = [b'"', b'{', b'[', b']'][random.below(4)];
                            mutated.insert(at + offset + 1, byte);
                        }
                    }
                }
                check_one_walk(&mutated, Some(b"guild_id"));
            }
        }
        for _ in 0..20_000 {
            let length = random.below(60);
            let prefix = br#"{"t":"X","d":{"#;
            let mut bytes = prefix[..random.below(prefix.len() + 1)].to_vec();
            bytes.extend((0..length).map(|_| match random.below(6) {
                0 => b'a' + random.below(3) as u8,
                _ => BYTES[random.below(BYTES.len())],
            }));
            for member in [Some(&b"a"[..]), Some(b"d"), None] {
                check_one_walk(&bytes, member);
            }
        }
    }

    /// The byte-at-a-time readers the table and word steps replaced: the reference they must
    /// agree with on every input.
    mod reference {
        pub(super) fn string_end(bytes: &[u8], mut at: usize) -> Option<(usize, bool)> {
            let mut escaped = false;
            loop {
                match *bytes.get(at)? {
                    b'"' => return Some((at, escaped)),
                    b'\\' => {
                        escaped = true;
                        at += 2;
                    }
                    _ => at += 1,
                }
            }
        }

        pub(super) fn container_end(bytes: &[u8], mut at: usize) -> Option<usize> {
            let mut depth = 1usize;
            loop {
                let byte = *bytes.get(at)?;
                at += 1;
                match byte {
                    b'"' => at = string_end(bytes, at)?.0 + 1,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at);
                        }
                    }
                    _ => {}
                }
            }
        }

        pub(super) fn nests_deeper_than(bytes: &[u8], max: usize) -> bool {
            let mut depth = 0usize;
            let mut at = 0;
            while let Some(&byte) = bytes.get(at) {
                at += 1;
                match byte {
                    b'"' => match string_end(bytes, at) {
                        Some((end, _)) => at = end + 1,
                        None => return false,
                    },
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > max {
                            return true;
                        }
                    }
                    b'}' | b']' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            false
        }

        pub(super) fn scalar_end(bytes: &[u8], at: usize) -> Option<usize> {
            let length = bytes.get(at..)?.iter().position(|&byte| {
                matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']')
            })?;
            Some(at + length)
        }
    }

    #[test]
    fn the_readers_agree_with_the_byte_at_a_time_reference() {
        // Mostly the bytes the readers look at, in runs long and short enough for every lane of
        // the word steps, and the rest of the byte range now and then.
        const ALPHABET: &[u8] = b"\"\"\"\\\\{}[]{}[],:  \t\n\r0-tfnaxyzY_\x7f\xff\x80\x01";
        let mut random = Random(0x5CA7_5EED);
        for round in 0..100_000 {
            let length = random.below(if round % 10 == 0 { 200 } else { 40 });
            let bytes: Vec<u8> = (0..length)
                .map(|_| match random.below(16) {
                    0 => random.below(256) as u8,
                    1..=4 => b'a' + random.below(26) as u8,
                    _ => ALPHABET[random.below(ALPHABET.len())],
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            for at in 0..=length + 2 {
                assert_eq!(
                    string_end(&bytes, at),
                    reference::string_end(&bytes, at),
                    "{at} {text}"
                );
                assert_eq!(
                    container_end(&bytes, at),
                    reference::container_end(&bytes, at),
                    "{at} {text}"
                );
                assert_eq!(
                    scalar_end(&bytes, at),
                    reference::scalar_end(&bytes, at),
                    "{at} {text}"
                );
            }
            let max = random.below(4);
            assert_eq!(
                nests_deeper_than(&bytes, max),
                reference::nests_deeper_than(&bytes, max),
                "{max} {text}"
            );
        }
    }

    #[test]
    fn containers_agree_with_the_reference_across_blocks() {
        // JSON-like text (backslashes only inside strings, where the wide step decides alone),
        // long enough for several 64-byte blocks, with strings, escapes and brackets on every
        // side of a block's edge; then the same with a stray backslash somewhere.
        let mut random = Random(0xB10C_5EED);
        for round in 0..20_000 {
            let mut bytes = Vec::new();
            let length = random.below(if round % 4 == 0 { 600 } else { 160 });
            while bytes.len() < length {
                match random.below(8) {
                    0 => bytes.push(b'{'),
                    1 => bytes.push(b'['),
                    2 | 3 => bytes.push([b'}', b']'][random.below(2)]),
                    4 => {
                        bytes.push(b'"');
                        for _ in 0..random.below(80) {
                            match random.below(10) {
                                0 => bytes.extend_from_slice(br#"\""#),
                                1 => bytes.extend_from_slice(br"\\"),
                                2 => bytes.push([b'{', b'}', b'[', b']'][random.below(4)]),
                                _ => bytes.push(b'a' + random.below(26) as u8),
                            }
                        }
                        bytes.push(b'"');
                    }
                    _ => bytes.extend_from_slice(&b",:0 1tx"[..1 + random.below(7)]),
                }
            }
            if round % 3 == 0 && !bytes.is_empty() {
                let at = random.below(bytes.len());
                bytes.insert(at, b'\\');
            }
            let text = String::from_utf8_lossy(&bytes);
            for at in (0..=bytes.len()).step_by(1 + random.below(5)) {
                assert_eq!(
                    container_end(&bytes, at),
                    reference::container_end(&bytes, at),
                    "{at} {text}"
                );
            }
        }
    }

    #[test]
    fn byte_classes() {
        for byte in 0..=u8::MAX {
            let expected = match byte {
                b'"' => ByteClass::Quote,
                b'{' | b'[' => ByteClass::Open,
                b'}' | b']' => ByteClass::Close,
                b',' => ByteClass::Delimiter,
                _ if is_whitespace(byte) => ByteClass::Delimiter,
                _ => ByteClass::Other,
            };
            assert_eq!(BYTE_CLASS[usize::from(byte)], expected, "{byte:#04x}");
        }
        let mut at = 0;
        assert_eq!(
            next_structural(b"ab: 1,\"", &mut at),
            Some(ByteClass::Quote)
        );
        assert_eq!(at, 7);
        assert_eq!(next_structural(b"ab: 1,\"", &mut at), None);
        assert_eq!(at, 7);
    }

    #[test]
    fn strings_end_at_the_first_unescaped_quote() {
        type Case = (&'static [u8], Option<(usize, bool)>);
        let cases: &[Case] = &[
            (b"\"", Some((0, false))),
            (b"abc\"", Some((3, false))),
            (br#"a\"b""#, Some((4, true))),
            (br#"a\\"b""#, Some((3, true))),
            (br#"a\\\"b""#, Some((6, true))),
            // Long enough for the eight-byte steps, with the quote in each lane.
            (b"0123456789abcdef\"", Some((16, false))),
            (b"0123456\"89abcdef\"", Some((7, false))),
            (br#"0123456\"9abcdef""#, Some((16, true))),
            (br#"01234567\\\\\\\\\\\\""#, Some((20, true))),
            ("caf\u{e9} \u{1F600} \"".as_bytes(), Some((11, false))),
            (b"", None),
            (b"abc", None),
            (b"abc\\", None),
            (br#"abc\""#, None),
            (b"0123456789abcdef\\", None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                string_end(bytes, 0),
                *expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn the_lowest_match_in_a_word_is_exact() {
        for needle in [b'"', b'\\', 0, 0xff] {
            for position in 0..8 {
                // Bytes one bit away from the needle everywhere else, and matches above it, must
                // not move the answer.
                let mut bytes = [needle ^ 1; 8];
                bytes[position] = needle;
                let lowest = |bytes: [u8; 8]| bytes_equal(u64::from_le_bytes(bytes), needle);
                assert_eq!((lowest(bytes).trailing_zeros() / 8) as usize, position);
                for above in bytes.iter_mut().skip(position + 1).step_by(2) {
                    *above = needle;
                }
                assert_eq!((lowest(bytes).trailing_zeros() / 8) as usize, position);
            }
            assert_eq!(
                bytes_equal(u64::from_le_bytes([needle.wrapping_add(1); 8]), needle),
                0
            );
        }
    }

    #[test]
    fn containers_count_brackets_outside_strings() {
        assert_eq!(container_end(b"}", 0), Some(1));
        assert_eq!(container_end(br#""a":[1,{"b":"}]"}]},"#, 0), Some(19));
        assert_eq!(container_end(br#""\"}":1}x"#, 0), Some(8));
        assert_eq!(container_end(br#""\\":1}x"#, 0), Some(7));
        assert_eq!(container_end(b"[[[]]", 0), None);
        assert_eq!(container_end(br#""}"#, 0), None);
    }

    #[test]
    fn scalars_need_a_delimiter() {
        assert_eq!(scalar_end(b"23,", 0), Some(2));
        assert_eq!(scalar_end(b"rue}", 0), Some(3));
        assert_eq!(scalar_end(b"23 ", 0), Some(2));
        assert_eq!(scalar_end(b"23", 0), None);
        assert_eq!(scalar_end(b"", 5), None);
    }

    #[test]
    fn members_of_d() {
        let payload = br#"{"op":0,"d":{"a":{"guild_id":"1"},"guild_id":"2","x":[[]"#;
        assert_eq!(d_member(payload, b"guild_id"), Some(&br#""2""#[..]));
        assert_eq!(d_member(payload, b"x"), None);
        assert_eq!(d_member(payload, b"missing"), None);
        assert_eq!(
            d_member(br#"{"op":0,"\u0064":{"\u0061":1,"b":2}}"#, b"b"),
            Some(&b"2"[..])
        );
        assert_eq!(
            message_id_and_content(br#"{"d":{"content":"x","id":"1"}}"#),
            Some(MessageFields {
                id: br#""1""#,
                content: br#""x""#
            })
        );
    }

    #[test]
    fn escaped_keys_are_compared_as_text() {
        let equal: &[(&[u8], &[u8])] = &[
            (br"\u0069d", b"id"),
            (br"\u0069\u0044", b"iD"),
            (br"guild\u005Fid", b"guild_id"),
            (br"guild\u005fid", b"guild_id"),
            (br#"a\"b\\c\/d\b\f\n\r\t"#, b"a\"b\\c/d\x08\x0c\n\r\t"),
            (br"\u0000", b"\0"),
        ];
        for (raw, name) in equal {
            assert!(
                unescaped_equals(raw, name),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let different: &[(&[u8], &[u8])] = &[
            (br"\u0069", b"id"),
            (br"\u0069dd", b"id"),
            (br"\u00e9", b"\xe9"),
            (br"\u0069\u006", b"id"),
            (br"\u00g9d", b"id"),
            (br"\x69d", b"id"),
            (br"i\", b"i"),
            (br"\", b""),
            (br"\ud83d\ude00", b"??"),
        ];
        for (raw, name) in different {
            assert!(
                !unescaped_equals(raw, name),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
