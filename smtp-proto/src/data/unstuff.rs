use bytes::BufMut;
use memchr::memchr3;

/// What to do with a bare CR or bare LF, or a NUL, inside DATA or a BDAT chunk: bytes a next
/// hop might split lines on (RFC 5321 2.3.8 and 4.1.1.4 forbid them in message data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineEndingPolicy {
    /// Pass the bytes through and flag the message ([`DotUnstuffer::saw_bare_line_ending`],
    /// [`DotUnstuffer::saw_nul`]) so the server refuses it with `550 5.6.0`. The session stays
    /// in sync because only CRLF "." CRLF ends the data.
    #[default]
    Reject,
    /// Turn each bare CR or LF into CRLF and remove NULs. The line after a bare line ending is
    /// not a new line for dot handling, so it can never end the data.
    Normalize,
}

/// Progress of [`DotUnstuffer::unstuff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Unstuffed {
    /// The whole input was taken; the data goes on.
    NeedMore,
    /// The end of data was found; `consumed` bytes of the input were taken (terminator
    /// included) and the rest belongs to the next command.
    Done {
        /// Bytes of the input taken.
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CRLF, or at the start of the data.
    LineStart,
    /// Inside a line.
    Middle,
    /// Inside a line after a CR (already written).
    Cr,
    /// A `.` at a line start (not written).
    Dot,
    /// `.` CR at a line start (neither written).
    DotCr,
}

/// The receiving side of dot transparency: strips stuffing, finds the end of data.
///
/// The output holds the message exactly: the CRLF before the final dot belongs to the message,
/// a first line `..x` becomes `.x`, a first line `.` ends an empty message. The result is the
/// same for any split of the input into chunks. The common path is a `memchr2` scan with no
/// per-byte branching.
#[derive(Debug, Clone)]
pub struct DotUnstuffer {
    state: State,
    policy: LineEndingPolicy,
    bare: bool,
    nul: bool,
}

impl DotUnstuffer {
    /// An unstuffer at the start of the data.
    pub fn new(policy: LineEndingPolicy) -> Self {
        DotUnstuffer { state: State::LineStart, policy, bare: false, nul: false }
    }

    /// Whether a NUL was seen in this message (removed under [`LineEndingPolicy::Normalize`]).
    pub fn saw_nul(&self) -> bool {
        self.nul
    }

    /// Whether a bare CR or LF was seen in this message.
    pub fn saw_bare_line_ending(&self) -> bool {
        self.bare
    }

    /// Back to the start of a new message.
    pub fn reset(&mut self) {
        self.state = State::LineStart;
        self.bare = false;
        self.nul = false;
    }

    fn bare_end(&mut self, out: &mut impl BufMut) {
        self.bare = true;
        if self.policy == LineEndingPolicy::Normalize {
            out.put_u8(b'\n');
        }
    }

    /// Unstuffs `input` into `out` until the end of data or the end of the input.
    pub fn unstuff(&mut self, input: &[u8], out: &mut impl BufMut) -> Unstuffed {
        let n = input.len();
        let mut i = 0;
        loop {
            match self.state {
                State::Middle => {
                    let mut span = i;
                    loop {
                        let Some(off) = memchr3(b'\r', b'\n', 0, &input[i..]) else {
                            out.put_slice(&input[span..]);
                            return Unstuffed::NeedMore;
                        };
                        let j = i + off;
                        if input[j] == 0 {
                            self.nul = true;
                            if self.policy == LineEndingPolicy::Normalize {
                                out.put_slice(&input[span..j]);
                                span = j + 1;
                            }
                            i = j + 1;
                            continue;
                        }
                        if input[j] == b'\n' {
                            // A bare LF: a CR before it would have been taken below.
                            out.put_slice(&input[span..j]);
                            if self.policy == LineEndingPolicy::Normalize {
                                out.put_u8(b'\r');
                            }
                            out.put_u8(b'\n');
                            self.bare = true;
                            i = j + 1;
                            span = i;
                            continue;
                        }
                        match input.get(j + 1) {
                            None => {
                                out.put_slice(&input[span..=j]);
                                self.state = State::Cr;
                                return Unstuffed::NeedMore;
                            }
                            Some(b'\n') => {
                                let line = j + 2;
                                if line < n && input[line] != b'.' {
                                    i = line;
                                    continue;
                                }
                                out.put_slice(&input[span..line]);
                                i = line;
                                self.state = State::LineStart;
                                break;
                            }
                            Some(_) => {
                                out.put_slice(&input[span..=j]);
                                self.bare_end(out);
                                i = j + 1;
                                span = i;
                            }
                        }
                    }
                }
                _ if i == n => return Unstuffed::NeedMore,
                State::LineStart => {
                    if input[i] == b'.' {
                        i += 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Middle;
                    }
                }
                State::Dot => {
                    // RFC 5321 4.5.2: the first character of the line is a period: delete it.
                    if input[i] == b'\r' {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Middle;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::LineStart;
                        return Unstuffed::Done { consumed: i + 1 };
                    }
                    out.put_u8(b'\r');
                    self.bare_end(out);
                    self.state = State::Middle;
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        out.put_u8(b'\n');
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        self.bare_end(out);
                        self.state = State::Middle;
                    }
                }
            }
        }
    }
}

/// The checks of [`DotUnstuffer`] for BDAT chunks (RFC 3030), which carry no dot-stuffing:
/// bare CR or LF and NUL are flagged under [`LineEndingPolicy::Reject`], or made CRLF (and
/// removed) under [`LineEndingPolicy::Normalize`]. A CR at the end of one chunk is judged with
/// the next.
#[derive(Debug, Clone)]
pub struct LineChecker {
    policy: LineEndingPolicy,
    cr: bool,
    bare: bool,
    nul: bool,
}

impl LineChecker {
    /// A checker at the start of a message.
    pub fn new(policy: LineEndingPolicy) -> Self {
        LineChecker { policy, cr: false, bare: false, nul: false }
    }

    /// Whether a bare CR or LF was seen.
    pub fn saw_bare_line_ending(&self) -> bool {
        self.bare
    }

    /// Whether a NUL was seen.
    pub fn saw_nul(&self) -> bool {
        self.nul
    }

    /// Checks a chunk. Under `Reject` the chunk goes on unchanged (`None`); under `Normalize`
    /// the corrected bytes are returned when anything had to change.
    pub fn check(&mut self, input: &[u8]) -> Option<Vec<u8>> {
        if input.is_empty() {
            return None;
        }
        let normalize = self.policy == LineEndingPolicy::Normalize;
        let mut out: Option<Vec<u8>> = None;
        let mut span = 0;
        let mut i = 0;
        if self.cr {
            self.cr = false;
            if input[0] != b'\n' {
                // The CR that ended the previous chunk was bare.
                self.bare = true;
                if normalize {
                    out.get_or_insert_with(Vec::new).put_u8(b'\n');
                }
            }
            if input[0] == b'\n' {
                i = 1;
            }
        }
        while let Some(off) = memchr3(b'\r', b'\n', 0, &input[i..]) {
            let j = i + off;
            match input[j] {
                0 => {
                    self.nul = true;
                    if normalize {
                        let o = out.get_or_insert_with(Vec::new);
                        o.put_slice(&input[span..j]);
                        span = j + 1;
                    }
                    i = j + 1;
                }
                b'\r' if j + 1 == input.len() => {
                    self.cr = true;
                    i = j + 1;
                }
                b'\r' if input[j + 1] == b'\n' => i = j + 2,
                b'\r' => {
                    self.bare = true;
                    if normalize {
                        let o = out.get_or_insert_with(Vec::new);
                        o.put_slice(&input[span..=j]);
                        o.put_u8(b'\n');
                        span = j + 1;
                    }
                    i = j + 1;
                }
                _ => {
                    // A LF without its CR.
                    self.bare = true;
                    if normalize {
                        let o = out.get_or_insert_with(Vec::new);
                        o.put_slice(&input[span..j]);
                        o.put_slice(b"\r\n");
                        span = j + 1;
                    }
                    i = j + 1;
                }
            }
        }
        out.map(|mut o| {
            o.put_slice(&input[span..]);
            o
        })
    }

    /// The end of the message: a CR left over from the last chunk is bare. Returns the bytes
    /// to add under `Normalize`.
    pub fn finish(&mut self) -> Option<&'static [u8]> {
        if std::mem::take(&mut self.cr) {
            self.bare = true;
            return (self.policy == LineEndingPolicy::Normalize).then_some(&b"\n"[..]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unstuffs with every split into two chunks and one byte at a time; all must agree.
    fn run(input: &[u8], policy: LineEndingPolicy) -> (Vec<u8>, Option<usize>, bool) {
        let whole = run_chunks(input, &[input.len()], policy);
        for split in 0..=input.len() {
            assert_eq!(run_chunks(input, &[split, input.len() - split], policy), whole, "split at {split}");
        }
        assert_eq!(run_chunks(input, &vec![1; input.len()], policy), whole);
        whole
    }

    fn run_chunks(input: &[u8], sizes: &[usize], policy: LineEndingPolicy) -> (Vec<u8>, Option<usize>, bool) {
        let mut u = DotUnstuffer::new(policy);
        let mut out = Vec::new();
        let mut pos = 0;
        for &sz in sizes {
            if let Unstuffed::Done { consumed } = u.unstuff(&input[pos..pos + sz], &mut out) {
                return (out, Some(pos + consumed), u.saw_bare_line_ending());
            }
            pos += sz;
        }
        (out, None, u.saw_bare_line_ending())
    }

    #[test]
    fn terminators() {
        use LineEndingPolicy::Reject;
        assert_eq!(run(b".\r\n", Reject), (vec![], Some(3), false));
        assert_eq!(run(b"..x\r\n.\r\nQUIT\r\n", Reject), (b".x\r\n".to_vec(), Some(8), false));
        assert_eq!(run(b"a\r\n.\r\n", Reject), (b"a\r\n".to_vec(), Some(6), false));
        assert_eq!(run(b"a\r\n..\r\n.\r\n", Reject), (b"a\r\n.\r\n".to_vec(), Some(10), false));
    }

    #[test]
    fn smuggling_is_never_a_terminator() {
        for body in [&b"a\n.\nb"[..], b"a\n.\r\nb", b"a\r.\r\nb", b"a\r\n.\rb", b"a\r\n\x00.\r\nb", b"a\r.\rb"] {
            for policy in [LineEndingPolicy::Reject, LineEndingPolicy::Normalize] {
                let (_, end, _) = run(body, policy);
                assert_eq!(end, None, "{:?} ended data", String::from_utf8_lossy(body));
            }
        }
        let (out, _, bare) = run(b"a\n.\nb", LineEndingPolicy::Reject);
        assert!(bare);
        assert_eq!(out, b"a\n.\nb");
        let (out, _, bare) = run(b"a\n.\nb\r.\r\n", LineEndingPolicy::Normalize);
        assert!(bare);
        assert_eq!(out, b"a\r\n.\r\nb\r\n.\r\n");
        let (_, _, bare) = run(b"a\r\n\x00.\r\n", LineEndingPolicy::Reject);
        assert!(!bare);
    }

    #[test]
    fn bdat_chunks_get_the_same_checks() {
        let check = |chunks: &[&[u8]], policy| {
            let mut c = LineChecker::new(policy);
            let mut out = Vec::new();
            for ch in chunks {
                match c.check(ch) {
                    Some(fixed) => out.extend(fixed),
                    None => out.extend_from_slice(ch),
                }
            }
            out.extend(c.finish().unwrap_or_default());
            (out, c.saw_bare_line_ending(), c.saw_nul())
        };
        use LineEndingPolicy::{Normalize, Reject};
        assert_eq!(check(&[b"a\r\nb\r", b"\nc\r\n"], Reject), (b"a\r\nb\r\nc\r\n".to_vec(), false, false));
        assert_eq!(check(&[b"a\nb"], Reject), (b"a\nb".to_vec(), true, false));
        assert!(check(&[b"a\r", b"b"], Reject).1, "a CR split from its non-LF");
        assert_eq!(check(&[b"a\x00b"], Reject), (b"a\x00b".to_vec(), false, true));
        assert_eq!(check(&[b"a\nb\rc\x00d\r", b"\ne\r"], Normalize).0, b"a\r\nb\r\ncd\r\ne\r\n".to_vec());
    }

    #[test]
    fn nul_is_flagged_or_removed() {
        let mut u = DotUnstuffer::new(LineEndingPolicy::Reject);
        let mut out = Vec::new();
        assert_eq!(u.unstuff(b"a\x00b\r\n\x00.\r\n.\r\n", &mut out), Unstuffed::Done { consumed: 12 });
        assert!(u.saw_nul() && !u.saw_bare_line_ending());
        assert_eq!(out, b"a\x00b\r\n\x00.\r\n", "passed through, flagged");
        let mut u = DotUnstuffer::new(LineEndingPolicy::Normalize);
        let mut out = Vec::new();
        assert_eq!(u.unstuff(b"a\x00b\r\n\x00.\r\n.\r\n", &mut out), Unstuffed::Done { consumed: 12 });
        assert_eq!(out, b"ab\r\n.\r\n", "removed; the dot line stays content");
        u.reset();
        assert!(!u.saw_nul());
    }
}
