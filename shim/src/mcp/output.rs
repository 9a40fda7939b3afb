//! Turning raw command output into something a model can read: bounded (head and tail kept, the
//! middle cut with a marker), decoded lossily with a flag, and without terminal escape sequences.

use std::collections::VecDeque;

/// Collects one output stream, keeping at most `limit` bytes: the first half and the last half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedBuffer {
    limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

/// A stream ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanOutput {
    pub text: String,
    /// Bytes removed from the middle to respect the limit.
    pub cut_bytes: u64,
    /// The output was not valid UTF-8; invalid bytes were replaced with U+FFFD.
    pub invalid_utf8: bool,
}

impl CappedBuffer {
    pub fn new(limit: usize) -> CappedBuffer {
        CappedBuffer {
            limit: limit.max(2),
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let head_room = (self.limit / 2).saturating_sub(self.head.len());
        let (to_head, rest) = data.split_at(head_room.min(data.len()));
        self.head.extend_from_slice(to_head);
        let tail_limit = self.limit - self.limit / 2;
        if rest.len() >= tail_limit {
            self.tail.clear();
            self.tail.extend(&rest[rest.len() - tail_limit..]);
        } else {
            let overflow = (self.tail.len() + rest.len()).saturating_sub(tail_limit);
            self.tail.drain(..overflow);
            self.tail.extend(rest);
        }
    }

    /// The buffer that pushing a whole stream would have left, rebuilt from what the daemon read
    /// of a job's output file: its first bytes (`head`, from offset 0, at most `limit / 2` of
    /// them are used) and a window `data` at `offset` that reaches the stream's current end.
    /// When the two meet or overlap, the stream is known in full and is pushed as it is.
    pub fn from_parts(limit: usize, head: &[u8], offset: u64, data: &[u8]) -> CappedBuffer {
        let mut buffer = CappedBuffer::new(limit);
        match usize::try_from(offset) {
            Ok(start) if start <= head.len() => {
                buffer.push(&head[..start]);
                buffer.push(data);
            }
            _ => {
                let half = buffer.limit / 2;
                let tail_limit = buffer.limit - half;
                buffer.head = head[..head.len().min(half)].to_vec();
                buffer.tail = data[data.len().saturating_sub(tail_limit)..]
                    .iter()
                    .copied()
                    .collect();
                buffer.total = offset + data.len() as u64;
            }
        }
        buffer
    }

    /// What the buffer would have kept of the same stream with a smaller `limit`.
    pub fn shrink(&self, limit: usize) -> CappedBuffer {
        let mut smaller = CappedBuffer::new(limit.min(self.limit));
        if self.total == (self.head.len() + self.tail.len()) as u64 {
            // Nothing was cut: head and tail are the whole stream.
            smaller.push(&self.head);
            smaller.push(&self.tail.iter().copied().collect::<Vec<u8>>());
            return smaller;
        }
        let half = smaller.limit / 2;
        let tail_limit = smaller.limit - half;
        smaller.head = self.head[..self.head.len().min(half)].to_vec();
        let skip = self.tail.len().saturating_sub(tail_limit);
        smaller.tail = self.tail.iter().skip(skip).copied().collect();
        smaller.total = self.total;
        smaller
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The last non-empty line seen so far (for progress messages), cleaned and shortened.
    pub fn last_line(&self) -> Option<String> {
        let bytes: Vec<u8> = if self.tail.is_empty() {
            self.head.clone()
        } else {
            self.tail.iter().copied().collect()
        };
        let text = clean_text(&String::from_utf8_lossy(&bytes));
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.chars().take(200).collect())
    }

    pub fn finish(self) -> CleanOutput {
        let mut head = self.head;
        let mut tail: Vec<u8> = self.tail.into_iter().collect();
        if self.total == (head.len() + tail.len()) as u64 {
            // Nothing was cut: head and tail are one stream (a character may span them).
            head.append(&mut tail);
            let (text, invalid_utf8) = decode(&head, false, false);
            return CleanOutput {
                text: clean_text(&text),
                cut_bytes: 0,
                invalid_utf8,
            };
        }
        // Cut at line boundaries where one is near, so no line is shown half.
        if head.last() != Some(&b'\n') {
            let from = head.len().saturating_sub(LINE_SNAP);
            if let Some(newline) = head[from..].iter().rposition(|&b| b == b'\n') {
                head.truncate(from + newline + 1);
            }
        }
        // What precedes the tail is not kept, so whether it starts a line is not known: it
        // starts after the first newline near its start (one whole line may go with the cut).
        let near = tail.len().min(LINE_SNAP);
        if let Some(newline) = tail[..near].iter().position(|&b| b == b'\n')
            && newline + 1 < tail.len()
        {
            tail.drain(..=newline);
        }
        let cut_bytes = self.total - (head.len() + tail.len()) as u64;
        let (head_text, head_bad) = decode(&head, false, true);
        let (tail_text, tail_bad) = decode(&tail, true, false);
        let mut text = clean_text(&head_text);
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("[... {cut_bytes} bytes of output cut ...]\n"));
        text.push_str(&clean_text(&tail_text));
        CleanOutput {
            text,
            cut_bytes,
            invalid_utf8: head_bad || tail_bad,
        }
    }
}

/// How far a cut moves to reach a line boundary: a newline within this many bytes of it.
const LINE_SNAP: usize = 256;

/// Decodes lossily. A cut may split a multi-byte character at either edge; those partial
/// characters are dropped rather than reported as invalid UTF-8.
fn decode(bytes: &[u8], cut_before: bool, cut_after: bool) -> (String, bool) {
    let (text, invalid, _, _) = decode_raw(bytes, cut_before, cut_after);
    (text, invalid)
}

/// One window of a stream read at an offset, decoded and cleaned for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub text: String,
    pub invalid_utf8: bool,
    /// Bytes skipped at the front: the end of a character that began before the window.
    pub skipped: usize,
    /// Bytes of the window the text covers (from its first byte, `skipped` included); a
    /// character cut at the end is left for the next window, which starts at `used`.
    pub used: usize,
}

/// Decodes a window lossily: with `cut_before`, continuation bytes at the front belong to a
/// character the window does not have and are skipped; with `cut_after`, a character
/// incomplete at the end is left out (the next window, read from `used`, has it whole).
pub fn decode_window(bytes: &[u8], cut_before: bool, cut_after: bool) -> Window {
    let (text, invalid_utf8, skipped, used) = decode_raw(bytes, cut_before, cut_after);
    Window {
        text: clean_text(&text),
        invalid_utf8,
        skipped,
        used,
    }
}

/// The lossy text, whether bytes were invalid, bytes skipped at the front, bytes covered.
fn decode_raw(bytes: &[u8], cut_before: bool, cut_after: bool) -> (String, bool, usize, usize) {
    let mut start = 0;
    if cut_before {
        while start < bytes.len().min(3) && (bytes[start] & 0xC0) == 0x80 {
            start += 1;
        }
    }
    let mut slice = &bytes[start..];
    if cut_after
        && let Err(e) = std::str::from_utf8(slice)
        && e.error_len().is_none()
    {
        slice = &slice[..e.valid_up_to()];
    }
    let used = start + slice.len();
    let text = String::from_utf8_lossy(slice);
    let invalid = matches!(text, std::borrow::Cow::Owned(_));
    (text.into_owned(), invalid, start, used)
}

/// Removes terminal escape sequences (CSI, OSC, and two-byte escapes) and control characters
/// other than newline and tab; carriage returns become newlines.
pub fn clean_text(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in @..~
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC (and DCS, PM, APC): until BEL or ESC \
                Some(']' | 'P' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_should_pass_unchanged() {
        let mut b = CappedBuffer::new(100);
        b.push(b"hello\n");
        b.push(b"world\n");
        let out = b.finish();
        assert_eq!(out.text, "hello\nworld\n");
        assert_eq!(out.cut_bytes, 0);
        assert!(!out.invalid_utf8);
    }

    #[test]
    fn large_output_should_keep_head_and_tail_with_a_marker() {
        let mut b = CappedBuffer::new(10);
        for chunk in [&b"0123"[..], b"456789", b"abcdefghij", b"XYZ"] {
            b.push(chunk);
        }
        assert_eq!(b.total(), 23);
        let out = b.finish();
        assert_eq!(out.cut_bytes, 13);
        assert_eq!(out.text, "01234\n[... 13 bytes of output cut ...]\nijXYZ");
    }

    #[test]
    fn tail_should_track_across_many_small_pushes() {
        let mut b = CappedBuffer::new(8);
        for i in 0..100u8 {
            b.push(&[b'a' + (i % 26)]);
        }
        let out = b.finish();
        assert!(out.text.starts_with("abcd\n[... 92 bytes"), "{}", out.text);
        assert!(out.text.ends_with("stuv"), "{}", out.text);
    }

    #[test]
    fn invalid_utf8_should_be_replaced_and_flagged() {
        let mut b = CappedBuffer::new(100);
        b.push(b"ok \xff\xfe bytes");
        let out = b.finish();
        assert!(out.invalid_utf8);
        assert!(out.text.contains('\u{FFFD}'));
    }

    #[test]
    fn cut_through_a_multibyte_char_should_not_count_as_invalid() {
        let mut b = CappedBuffer::new(6);
        b.push("ééééééééé".as_bytes()); // 2 bytes each
        let out = b.finish();
        assert!(!out.invalid_utf8, "{out:?}");
    }

    #[test]
    fn escape_sequences_should_be_removed() {
        let raw =
            "\u{1b}[1;31mred\u{1b}[0m \u{1b}]0;title\u{7}plain\r\nprogress 1\rprogress 2\u{8}\n";
        assert_eq!(clean_text(raw), "red plain\nprogress 1\nprogress 2\n");
    }

    /// What `from_parts` rebuilds must equal pushing the whole stream, for any stream length,
    /// with the parts the daemon sends: the last `limit - limit / 2` bytes, and the first
    /// `min(limit / 2, offset)` bytes.
    #[test]
    fn from_parts_should_equal_the_whole_stream_pushed() {
        let letters = |i: usize| b'a' + (i % 26) as u8;
        let lines = |i: usize| {
            if i % 4 == 3 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        };
        for (len, byte) in [0usize, 1, 5, 9, 10, 11, 15, 16, 17, 40]
            .into_iter()
            .flat_map(|len| [(len, letters as fn(usize) -> u8), (len, lines)])
        {
            let stream: Vec<u8> = (0..len).map(byte).collect();
            for limit in [2usize, 10, 11, 16, 17] {
                let mut whole = CappedBuffer::new(limit);
                whole.push(&stream);
                let whole = whole.finish();
                let half = limit / 2;
                let offset = len.saturating_sub(limit - half);
                let head = &stream[..half.min(offset)];
                let rebuilt =
                    CappedBuffer::from_parts(limit, head, offset as u64, &stream[offset..])
                        .finish();
                assert_eq!(rebuilt, whole, "length {len}, limit {limit}");
            }
        }
    }

    #[test]
    fn from_parts_should_mark_the_gap_between_head_and_window() {
        let out = CappedBuffer::from_parts(10, b"01234", 20, b"vwxyz").finish();
        assert_eq!(out.cut_bytes, 15);
        assert_eq!(out.text, "01234\n[... 15 bytes of output cut ...]\nvwxyz");
    }

    #[test]
    fn window_should_leave_cut_characters_to_its_neighbours() {
        let bytes = "é-é".as_bytes(); // c3 a9 2d c3 a9
        let w = decode_window(&bytes[1..4], true, true);
        assert_eq!((w.text.as_str(), w.skipped, w.used), ("-", 1, 2));
        assert!(!w.invalid_utf8);
        let w = decode_window(b"ok \xff\x1b[1mbold\r\n", false, false);
        assert_eq!(w.text, "ok \u{FFFD}bold\n");
        assert!(w.invalid_utf8);
        assert_eq!(w.used, 14);
    }

    #[test]
    fn cuts_should_fall_on_line_boundaries_when_one_is_near() {
        let stream: String = (0..1000).map(|n| format!("line {n:04}\n")).collect();
        let mut b = CappedBuffer::new(1024);
        b.push(stream.as_bytes());
        let out = b.finish();
        let (head, rest) = out.text.split_once("[... ").unwrap();
        let (marker, tail) = rest.split_once(" bytes of output cut ...]\n").unwrap();
        assert!(head.ends_with("line 0050\n"), "{head}");
        assert!(tail.starts_with("line 0"), "{tail}");
        assert!(tail.ends_with("line 0999\n"), "{tail}");
        for line in head.lines().chain(tail.lines()) {
            assert_eq!(line.len(), 9, "a whole line: {line:?}");
        }
        assert_eq!(marker.parse::<u64>().unwrap(), out.cut_bytes);
        assert_eq!(
            out.cut_bytes as usize,
            stream.len() - head.len() - tail.len()
        );
        // A line longer than the snapping distance is cut where the limit falls.
        let mut b = CappedBuffer::new(1024);
        b.push(format!("short\n{}\nend\n", "x".repeat(5000)).as_bytes());
        let out = b.finish();
        assert!(out.text.starts_with("short\nxxxx"), "{}", &out.text[..20]);
        assert!(out.text.ends_with("xxx\nend\n"));
    }

    #[test]
    fn a_character_across_head_and_tail_should_survive_when_nothing_is_cut() {
        let mut b = CappedBuffer::new(10);
        b.push("abcdé!".as_bytes()); // the head takes 5 bytes: half of é
        let out = b.finish();
        assert_eq!(out.text, "abcdé!");
        assert!(!out.invalid_utf8);
    }

    #[test]
    fn last_line_should_skip_blank_lines() {
        let mut b = CappedBuffer::new(1000);
        b.push(b"step 1\nstep 2\n\n");
        assert_eq!(b.last_line().as_deref(), Some("step 2"));
    }
}
