//! Dot transparency (RFC 5321 4.5.2, RFC 788 4.5.2) as streaming codecs.
//!
//! The end of data is exactly CRLF "." CRLF. A bare LF or a bare CR never ends data and never
//! starts a line for dot handling: `\n.\n`, `\n.\r\n`, `\r.\r\n`, `\r\n.\r` and `\r\n\0.\r\n` are
//! message content. This is the defence against SMTP smuggling (CVE-2023-51764, -51765, -51766).

mod stuff;
mod unstuff;

pub use stuff::DotStuffer;
pub use unstuff::{DotUnstuffer, LineChecker, LineEndingPolicy, Unstuffed};
