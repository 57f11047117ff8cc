use bytes::BufMut;
use memchr::memchr2;

/// The sending side of dot transparency: turns any message into DATA bytes.
///
/// Every line end in the output is CRLF (bare CR and bare LF become CRLF), a `.` starting any
/// line is doubled, and [`DotStuffer::finish`] ends the data with CRLF "." CRLF. Whatever the
/// caller's body holds, it cannot end the data early or inject commands (RUSTSEC-2021-0069).
/// The output is the same for any split of the input into chunks.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    line_start: bool,
    after_cr: bool,
    stuff_dots: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of a message.
    pub fn new() -> Self {
        DotStuffer { line_start: true, after_cr: false, stuff_dots: true }
    }

    /// Canonical line ends only (bare CR / LF become CRLF), no dot stuffing: for BDAT (RFC 3030),
    /// where the data is counted, not terminated. End it with [`DotStuffer::finish_lines`].
    pub fn line_normalizer() -> Self {
        DotStuffer { line_start: true, after_cr: false, stuff_dots: false }
    }

    /// Stuffs one chunk of the message into `out`.
    pub fn stuff(&mut self, input: &[u8], out: &mut impl BufMut) {
        let mut i = 0;
        while i < input.len() {
            if self.after_cr {
                self.after_cr = false;
                if input[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.line_start {
                self.line_start = false;
                if input[i] == b'.' && self.stuff_dots {
                    out.put_u8(b'.');
                }
            }
            match memchr2(b'\r', b'\n', &input[i..]) {
                None => {
                    out.put_slice(&input[i..]);
                    return;
                }
                Some(off) => {
                    let j = i + off;
                    out.put_slice(&input[i..j]);
                    out.put_slice(b"\r\n");
                    self.line_start = true;
                    self.after_cr = input[j] == b'\r';
                    i = j + 1;
                }
            }
        }
    }

    /// Ends the data: a CRLF if the last line is unfinished, then "." CRLF. Resets the stuffer.
    pub fn finish(&mut self, out: &mut impl BufMut) {
        if !self.line_start {
            out.put_slice(b"\r\n");
        }
        out.put_slice(b".\r\n");
        self.line_start = true;
        self.after_cr = false;
    }

    /// Ends a normalized body with CRLF if its last line is unfinished. Resets the normalizer.
    pub fn finish_lines(&mut self, out: &mut impl BufMut) {
        if !self.line_start {
            out.put_slice(b"\r\n");
        }
        self.line_start = true;
        self.after_cr = false;
    }

    /// Stuffs a whole message, terminator included.
    pub fn stuff_all(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + input.len() / 64 + 8);
        let mut s = DotStuffer::new();
        s.stuff(input, &mut out);
        s.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b"a\r\n.\r\nMAIL FROM:<x@y>\r\n", b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"),
            (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"\r\n\r\n", b"\r\n\r\n.\r\n"),
            (b"..x", b"...x\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(DotStuffer::stuff_all(input), *want, "{:?}", String::from_utf8_lossy(input));
            let mut out = Vec::new();
            let mut s = DotStuffer::new();
            for b in *input {
                s.stuff(std::slice::from_ref(b), &mut out);
            }
            s.finish(&mut out);
            assert_eq!(out, *want);
        }
    }

    #[test]
    fn the_line_normalizer_keeps_dots_and_ends_unfinished_lines() {
        for (input, want) in
            [(&b".a\n.\rb"[..], &b".a\r\n.\r\nb\r\n"[..]), (b"a\r\n", b"a\r\n"), (b"a\r", b"a\r\n"), (b"", b"")]
        {
            let mut out = Vec::new();
            let mut n = DotStuffer::line_normalizer();
            n.stuff(input, &mut out);
            n.finish_lines(&mut out);
            assert_eq!(out, want, "{:?}", String::from_utf8_lossy(input));
            // Reset: the next body starts at a line start, with no pending CR.
            n.stuff(b"\nx", &mut out);
            assert_eq!(out, [want, b"\r\nx"].concat(), "{:?}", String::from_utf8_lossy(&out));
        }
    }
}
