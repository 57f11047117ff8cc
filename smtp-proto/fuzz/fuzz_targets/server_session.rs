#![no_main]
//! Drive the server session with input mapped onto an SMTP alphabet (so deep states are reached),
//! accepting or refusing decisions by the input's own bits. It must never panic and must keep its
//! buffers bounded.
use libfuzzer_sys::fuzz_target;
use smtp_proto::server::{ServerConfig, ServerSession};
use smtp_proto::{codes, auth::AuthMechanism};

const WORDS: &[&[u8]] = &[
    b"EHLO a\r\n", b"HELO b\r\n", b"MAIL FROM:<a@b>", b"SEND FROM:<>", b"RCPT TO:<c@d>", b"RCPT TO:<@x,@y:c@d>",
    b" SIZE=10", b" NOTIFY=NEVER", b" SMTPUTF8", b"DATA\r\n", b"BDAT 5", b" LAST", b"\r\n", b"\n", b"\r", b".",
    b"\r\n.\r\n", b"STARTTLS\r\n", b"AUTH PLAIN", b" AHUAcA==", b"AUTH LOGIN\r\n", b"*\r\n", b"RSET\r\n",
    b"VRFY x\r\n", b"EXPN y\r\n", b"HELP\r\n", b"NOOP\r\n", b"QUIT\r\n", b"\0", b"x",
];

fuzz_target!(|data: &[u8]| {
    let mut s = ServerSession::new(ServerConfig {
        starttls: true,
        auth_mechanisms: vec![AuthMechanism::Plain, AuthMechanism::Login],
        auth_without_tls: true,
        max_message_size: 64,
        max_line_len: 64,
        max_recipients: 3,
        ..Default::default()
    });
    let mut awaiting_tls = false;
    for (i, &b) in data.iter().enumerate() {
        let word = WORDS[b as usize % WORDS.len()];
        if s.wants_input() {
            s.handle_input(word);
        }
        while let Some(ev) = s.poll_event() {
            if s.is_pending() {
                if b & 0x80 == 0 { s.accept() } else { s.respond(codes::local_error()) }
            }
            if ev == smtp_proto::server::Event::StartTls {
                awaiting_tls = true;
                if i % 2 == 0 {
                    s.tls_established();
                    awaiting_tls = false;
                }
            }
        }
        let _ = s.poll_output();
        // Never stuck: with the events drained, the session waits for a decision, wants input,
        // waits for the TLS handshake it asked for, or is closed.
        assert!(s.is_pending() || s.wants_input() || s.is_closed() || awaiting_tls);
    }
});
