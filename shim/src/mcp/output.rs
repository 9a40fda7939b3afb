//! Turning raw command output into something a model can read: bounded (head and tail kept, the
//! middle cut with a marker), decoded lossily with a flag, and without terminal escape sequences.

use std::collections::VecDeque;

/// Collects one output stream, keeping at most `limit` bytes: the first half and the last half.
#[derive(Debug)]
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
        let tail: Vec<u8> = self.tail.into_iter().collect();
        let cut_bytes = self.total - (self.head.len() + tail.len()) as u64;
        let (head_text, head_bad) = decode(&self.head, false, cut_bytes > 0 || !tail.is_empty());
        let (tail_text, tail_bad) = decode(&tail, cut_bytes > 0, false);
        let mut text = clean_text(&head_text);
        if cut_bytes > 0 {
            text.push_str(&format!("\n[... {cut_bytes} bytes of output cut ...]\n"));
        }
        text.push_str(&clean_text(&tail_text));
        CleanOutput {
            text,
            cut_bytes,
            invalid_utf8: head_bad || tail_bad,
        }
    }
}

/// Decodes lossily. A cut may split a multi-byte character at either edge; those partial
/// characters are dropped rather than reported as invalid UTF-8.
fn decode(bytes: &[u8], cut_before: bool, cut_after: bool) -> (String, bool) {
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
    let text = String::from_utf8_lossy(slice);
    let invalid = matches!(text, std::borrow::Cow::Owned(_));
    (text.into_owned(), invalid)
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

    #[test]
    fn last_line_should_skip_blank_lines() {
        let mut b = CappedBuffer::new(1000);
        b.push(b"step 1\nstep 2\n\n");
        assert_eq!(b.last_line().as_deref(), Some("step 2"));
    }
}
