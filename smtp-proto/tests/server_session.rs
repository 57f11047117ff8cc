//! Byte-exact transcripts of the server session, each run with the input whole and one byte at
//! a time: the output must not depend on how the input was split.

use smtp_proto::server::{AbortReason, CloseReason, Event, ServerConfig, ServerSession};
use smtp_proto::{codes, LineEndingPolicy, MailVerb, Reply};

/// Decides every decision event; `refuse` returns a reply for events to refuse.
struct Run {
    output: String,
    events: Vec<Event>,
    body: Vec<u8>,
}

fn drive(config: ServerConfig, chunks: &[&[u8]], refuse: &dyn Fn(&Event) -> Option<Reply>) -> Run {
    let mut s = ServerSession::new(config);
    let mut run = Run { output: String::new(), events: Vec::new(), body: Vec::new() };
    let pump = |s: &mut ServerSession, run: &mut Run| {
        while let Some(ev) = s.poll_event() {
            if let Event::DataChunk(b) = &ev {
                run.body.extend_from_slice(b);
            }
            if s.is_pending() {
                match refuse(&ev) {
                    Some(r) => s.respond(r),
                    None => s.accept(),
                }
            }
            if matches!(ev, Event::DataAborted(_)) {
                run.body.clear();
            }
            run.events.push(ev);
        }
        if let Some(o) = s.poll_output() {
            run.output.push_str(&String::from_utf8_lossy(&o));
        }
    };
    pump(&mut s, &mut run);
    for c in chunks {
        s.handle_input(c);
        pump(&mut s, &mut run);
    }
    run
}

fn transcript(config: ServerConfig, input: &[u8], refuse: &dyn Fn(&Event) -> Option<Reply>) -> Run {
    let whole = drive(config.clone(), &[input], refuse);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let split = drive(config, &bytes, refuse);
    assert_eq!(whole.output, split.output, "output depends on chunking");
    assert_eq!(whole.body, split.body, "body depends on chunking");
    whole
}

fn cfg() -> ServerConfig {
    ServerConfig { hostname: "mx.test".into(), ..ServerConfig::default() }
}

fn accept_all(_: &Event) -> Option<Reply> {
    None
}

fn codes_of(output: &str) -> Vec<&str> {
    output.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| &l[..3]).collect()
}

#[test]
fn rfc788_example_one_recipient_refused() {
    // RFC 788 3.1's example: Green is refused, the others get the message.
    let input = b"HELO Alpha.ARPA\r\nMAIL FROM:<Smith@Alpha.ARPA>\r\nRCPT TO:<Jones@Beta.ARPA>\r\n\
RCPT TO:<Green@Beta.ARPA>\r\nRCPT TO:<Brown@Beta.ARPA>\r\nDATA\r\nBlah blah\r\n..dots\r\n.\r\nQUIT\r\n";
    let refuse = |e: &Event| match e {
        Event::Rcpt { to, .. } if to.to_string().contains("Green") => {
            Some(Reply::new(550, Some(smtp_proto::EnhancedCode::new(5, 1, 1)), "No such user here"))
        }
        _ => None,
    };
    let run = transcript(cfg(), input, &refuse);
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "550", "250", "354", "250", "221"]);
    assert!(run.output.starts_with("220 mx.test ESMTP Tern\r\n250 mx.test greets Alpha.ARPA\r\n"));
    assert_eq!(run.body, b"Blah blah\r\n.dots\r\n");
    assert!(matches!(run.events.last(), Some(Event::Close(CloseReason::Quit))));
}

#[test]
fn ehlo_lists_extensions_including_rfc788_verbs_and_limits() {
    let run = transcript(cfg(), b"EHLO client.test\r\n", &accept_all);
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "LIMITS RCPTMAX=100",
        "SEND",
        "SOML",
        "SAML",
        "HELP",
    ] {
        assert!(
            run.output.contains(&format!("250-{ext}\r\n")) || run.output.contains(&format!("250 {ext}\r\n")),
            "{ext}"
        );
    }
    assert!(!run.output.contains("STARTTLS"));
    assert!(!run.output.contains("AUTH"));
}

#[test]
fn send_soml_saml_start_transactions() {
    for verb in [MailVerb::Send, MailVerb::Soml, MailVerb::Saml] {
        let input = format!("HELO a\r\n{verb} FROM:<x@y>\r\nRCPT TO:<u@h>\r\nDATA\r\nhi\r\n.\r\n");
        let run = transcript(cfg(), input.as_bytes(), &accept_all);
        assert!(run.events.iter().any(|e| matches!(e, Event::Mail { verb: v, .. } if *v == verb)));
        assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "354", "250"]);
    }
}

#[test]
fn sequence_errors() {
    let input = b"MAIL FROM:<a@b>\r\nHELO a\r\nRCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nRSET\r\nRCPT TO:<a@b>\r\n";
    let run = transcript(cfg(), input, &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "503", "250", "503", "503", "250", "554", "503", "250", "503"]);
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let config = ServerConfig { starttls: true, ..cfg() };
    let run = transcript(config, b"EHLO a\r\nSTARTTLS\r\nNOOP\r\n", &accept_all);
    assert!(run.output.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{}", run.output);
    assert!(!run.output.contains("250 2.0.0 OK"));
}

#[test]
fn starttls_state_after_upgrade() {
    let config = ServerConfig { starttls: true, ..cfg() };
    let mut s = ServerSession::new(config);
    s.handle_input(b"EHLO a\r\nSTARTTLS\r\n");
    while let Some(e) = s.poll_event() {
        if s.is_pending() {
            s.accept();
        }
        if e == Event::StartTls {
            break;
        }
    }
    s.handle_input(b"NOOP\r\n"); // arrives before the handshake: dropped
    s.tls_established();
    let _ = s.poll_output();
    s.handle_input(b"MAIL FROM:<a@b>\r\nEHLO a\r\nSTARTTLS\r\n");
    while let Some(_e) = s.poll_event() {
        if s.is_pending() {
            s.accept();
        }
    }
    let out = String::from_utf8(s.poll_output().unwrap().to_vec()).unwrap();
    assert!(out.starts_with("503 5.5.1 Send HELO/EHLO first\r\n"), "{out}");
    assert!(!out.contains("STARTTLS\r\n"), "STARTTLS advertised again: {out}");
    assert!(out.ends_with("503 5.5.1 TLS already active\r\n"), "{out}");
}

#[test]
fn over_long_line_then_recovers() {
    let mut input = b"HELO a\r\nNOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1 << 20));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let run = drive(cfg(), &input.chunks(4096).collect::<Vec<_>>(), &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "250", "500", "250"]);
    assert!(run.output.contains("500 5.5.2 Line too long"));
}

#[test]
fn smuggling_bodies_are_refused_and_session_stays_in_sync() {
    for body in [&b"a\n.\nMAIL FROM:<evil@x>\n"[..], b"a\r\n.\rRSET\r\n", b"a\r.\r\nb", b"a\n.\r\nb"] {
        let mut input = b"HELO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(body);
        input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let run = transcript(cfg(), &input, &accept_all);
        assert_eq!(
            codes_of(&run.output),
            ["220", "250", "250", "250", "354", "550", "250"],
            "{:?}",
            String::from_utf8_lossy(body)
        );
        assert!(run.events.contains(&Event::DataAborted(AbortReason::BareLineEnding)));
        assert!(!run.events.contains(&Event::DataEnd));
    }
    // NUL before the dot is not a terminator; under the default policy the message is refused
    // (a next hop could split on it), and the session stays in sync.
    let input = b"HELO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n\0.\r\nNOOP\r\n.\r\nNOOP\r\n";
    let run = transcript(cfg(), input, &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "354", "550", "250"]);
    assert!(run.output.contains("550 5.6.0 Message refused: NUL"), "{}", run.output);
    assert!(run.events.contains(&Event::DataAborted(AbortReason::Nul)));
    // Under `normalize` the NUL is removed and the rest delivered as content.
    let config = ServerConfig { line_endings: LineEndingPolicy::Normalize, ..cfg() };
    let run = transcript(config, input, &accept_all);
    assert_eq!(run.body, b"x\r\n.\r\nNOOP\r\n");
}

#[test]
fn bdat_chunks_get_the_checks_of_data() {
    // A bare LF and a NUL in BDAT chunks: refused at LAST, the session in sync.
    for chunk in [&b"a\nb\r\n"[..], b"a\x00b\r\n"] {
        let mut input = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n".to_vec();
        input.extend(format!("BDAT {}\r\n", chunk.len()).as_bytes());
        input.extend(chunk);
        input.extend(b"BDAT 3 LAST\r\nx\r\nNOOP\r\n");
        let run = transcript(cfg(), &input, &accept_all);
        assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "250", "550", "250"], "{chunk:?}");
        assert!(!run.events.contains(&Event::DataEnd));
    }
    // Normalized: a CR split across chunks is judged with the next one.
    let config = ServerConfig { line_endings: LineEndingPolicy::Normalize, ..cfg() };
    let input = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 4\r\na\nb\rBDAT 4 LAST\r\n\nc\x00\r";
    let run = transcript(config, input, &accept_all);
    assert_eq!(run.body, b"a\r\nb\r\nc\r\n");
    assert!(run.events.contains(&Event::DataEnd));
}

#[test]
fn size_limits() {
    let config = ServerConfig { max_message_size: 10, ..cfg() };
    let run = transcript(
        config.clone(),
        b"EHLO a\r\nMAIL FROM:<a@b> SIZE=11\r\nMAIL FROM:<a@b> SIZE=99999999999999999999\r\n",
        &accept_all,
    );
    assert_eq!(codes_of(&run.output), ["220", "250", "552", "501"]);
    let run = transcript(
        config,
        b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n0123456789abcdef\r\n.\r\nNOOP\r\n",
        &accept_all,
    );
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "354", "552", "250"]);
    assert!(run.body.len() <= 10);
}

#[test]
fn recipient_limit() {
    let config = ServerConfig { max_recipients: 2, ..cfg() };
    let run = transcript(
        config,
        b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<3@d>\r\n",
        &accept_all,
    );
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "250", "452"]);
    // Pipelined past the limit, more times than the error limit: not errors (RFC 5321
    // 4.5.3.1.10); the transaction goes on with the recipients accepted.
    let config = ServerConfig { max_recipients: 2, max_errors: 3, ..cfg() };
    let mut input = b"EHLO a\r\nMAIL FROM:<a@b>\r\n".to_vec();
    input.extend(b"RCPT TO:<x@d>\r\n".repeat(10));
    input.extend(b"DATA\r\nhi\r\n.\r\n");
    let run = transcript(config, &input, &accept_all);
    let codes = codes_of(&run.output);
    assert_eq!(codes.iter().filter(|c| **c == "452").count(), 8, "{codes:?}");
    assert_eq!(&codes[codes.len() - 2..], ["354", "250"], "{codes:?}");
}

#[test]
fn bdat_chunks_and_refused_chunks_are_never_commands() {
    let run = transcript(
        cfg(),
        b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5\r\nab\r\nxBDAT 3 LAST\r\ny\r\nNOOP\r\n",
        &accept_all,
    );
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "250", "250", "250"]);
    assert_eq!(run.body, b"ab\r\nxy\r\n");
    // Refused (no transaction): its 14 octets hold a command that must not run.
    let run = transcript(cfg(), b"EHLO a\r\nBDAT 14\r\nQUIT\r\nQUIT\r\n\r\nNOOP\r\n", &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "250", "503", "250"]);
    let run = transcript(
        cfg(),
        b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 18446744073709551615 LAST\r\nQUIT\r\n",
        &accept_all,
    );
    assert!(run.output.ends_with("421 4.3.4 BDAT chunk too large to discard, closing\r\n"), "{}", run.output);
    assert!(run.events.contains(&Event::Close(CloseReason::ChunkTooLarge)));
}

#[test]
fn too_many_errors_closes() {
    let config = ServerConfig { max_errors: 3, ..cfg() };
    let run = transcript(config, b"X\r\nY\r\nZ\r\nNOOP\r\n", &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "500", "500", "500", "421"]);
    assert!(matches!(run.events.last(), Some(Event::Close(CloseReason::TooManyErrors))));
}

#[test]
fn auth_only_under_tls_and_both_mechanisms() {
    use smtp_proto::auth::AuthMechanism;
    let config = ServerConfig { auth_mechanisms: vec![AuthMechanism::Plain, AuthMechanism::Login], ..cfg() };
    let run = transcript(config.clone(), b"EHLO a\r\nAUTH PLAIN AHUAcA==\r\n", &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "250", "538"]);
    let mut s = ServerSession::new_tls(config);
    s.handle_input(b"EHLO a\r\nAUTH PLAIN AHUAcA==\r\n");
    let mut creds = Vec::new();
    while let Some(e) = s.poll_event() {
        if let Event::Auth { credentials, .. } = &e {
            creds.push(credentials.clone());
            s.respond(codes::auth_failed());
            continue;
        }
        s.accept();
    }
    s.handle_input(b"AUTH LOGIN\r\ndQ==\r\ncA==\r\nAUTH LOGIN\r\n*\r\n");
    while let Some(e) = s.poll_event() {
        if let Event::Auth { credentials, .. } = &e {
            creds.push(credentials.clone());
        }
        s.accept();
    }
    let out = String::from_utf8(s.poll_output().unwrap().to_vec()).unwrap();
    assert!(out.contains("250-AUTH PLAIN LOGIN\r\n"));
    assert!(out.contains("535 5.7.8"));
    assert!(out.contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0"));
    assert!(out.ends_with("503 5.5.1 Already authenticated\r\n500 5.5.1 Command unrecognized\r\n"), "{out}");
    assert_eq!(creds.len(), 2);
    assert!(creds.iter().all(|c| c.username == "u" && c.password.expose() == "p"));
}

#[test]
fn utf8_needs_smtputf8() {
    let run = transcript(
        cfg(),
        "EHLO a\r\nMAIL FROM:<用户@例子.广告>\r\nMAIL FROM:<用户@例子.广告> SMTPUTF8\r\n".as_bytes(),
        &accept_all,
    );
    assert_eq!(codes_of(&run.output), ["220", "250", "553", "250"]);
}

#[test]
fn help_vrfy_expn_noop() {
    let run = transcript(cfg(), b"HELP\r\nHELP mail\r\nHELP bogus\r\nVRFY Smith\r\nEXPN list\r\nNOOP\r\n", &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "214", "214", "504", "252", "252", "250"]);
    assert!(run.output.contains("214 2.0.0 MAIL FROM:<reverse-path>"));
}

#[test]
fn pipelined_replies_in_one_output() {
    let mut s = ServerSession::new(cfg());
    let _ = s.poll_output();
    s.handle_input(b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n");
    while let Some(_e) = s.poll_event() {
        s.accept();
    }
    let out = s.poll_output().unwrap();
    assert_eq!(codes_of(std::str::from_utf8(&out).unwrap()), ["250", "250", "250", "250", "354"]);
}

/// RFC 5321 appendix D.1, a typical SMTP transaction (one recipient refused).
#[test]
fn rfc5321_d1_typical_transaction() {
    let input = b"EHLO bar.com\r\nMAIL FROM:<Smith@bar.com>\r\nRCPT TO:<Jones@foo.com>\r\nRCPT TO:<Green@foo.com>\r\n\
RCPT TO:<Brown@foo.com>\r\nDATA\r\nBlah blah blah...\r\n...etc. etc. etc.\r\n.\r\nQUIT\r\n";
    let refuse = |e: &Event| match e {
        Event::Rcpt { to, .. } if to.to_string() == "<Green@foo.com>" => {
            Some(Reply::new(550, Some(smtp_proto::EnhancedCode::new(5, 1, 1)), "No such user here"))
        }
        _ => None,
    };
    let run = transcript(ServerConfig { hostname: "foo.com".into(), ..cfg() }, input, &refuse);
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "550", "250", "354", "250", "221"]);
    assert!(run.output.contains("250-foo.com greets bar.com\r\n"));
    assert_eq!(run.body, b"Blah blah blah...\r\n..etc. etc. etc.\r\n", "the leading dot of '...etc' is unstuffed once");
}

/// RFC 5321 appendix D.2, an aborted transaction: RSET clears it.
#[test]
fn rfc5321_d2_aborted_transaction() {
    let input = b"EHLO bar.com\r\nMAIL FROM:<Smith@bar.com>\r\nRCPT TO:<Jones@foo.com>\r\nRSET\r\nQUIT\r\n";
    let run = transcript(cfg(), input, &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "250", "221"]);
    assert!(run.events.contains(&Event::Reset));
    assert!(!run.events.contains(&Event::DataEnd));
}

/// RFC 5321 appendix D.4, verifying and sending.
#[test]
fn rfc5321_d4_verifying_and_sending() {
    let input = b"EHLO bar.com\r\nVRFY Crispin\r\nMAIL FROM:<EAK@bar.com>\r\nRCPT TO:<Admin.MRC@foo.com>\r\nDATA\r\nBlah blah\r\n.\r\nQUIT\r\n";
    let answer = |e: &Event| match e {
        Event::Verify(who) if who == "Crispin" => {
            Some(Reply::new(250, Some(smtp_proto::EnhancedCode::new(2, 1, 5)), "Mark Crispin <Admin.MRC@foo.com>"))
        }
        _ => None,
    };
    let run = transcript(cfg(), input, &answer);
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250", "250", "354", "250", "221"]);
    assert!(run.output.contains("250 2.1.5 Mark Crispin <Admin.MRC@foo.com>\r\n"));
}

#[test]
fn helo_names_with_controls_or_bidi_marks_are_refused() {
    let run = transcript(
        cfg(),
        "EHLO evil\u{202e}moc.example\r\nHELO a\u{85}b\r\nEHLO good.example\r\n".as_bytes(),
        &accept_all,
    );
    assert_eq!(codes_of(&run.output), ["220", "501", "501", "250"]);
    assert!(run.output.contains("501 5.5.2 Bad HELO/EHLO name"), "{}", run.output);
}

#[test]
fn a_421_decision_closes_the_session() {
    let mut s = ServerSession::new(cfg());
    s.handle_input(b"EHLO a\r\nMAIL FROM:<a@b>\r\nNOOP\r\n");
    let mut closed = false;
    while let Some(ev) = s.poll_event() {
        match ev {
            Event::Hello { .. } => s.accept(),
            Event::Mail { .. } => s.respond(Reply::new(421, None, "going away")),
            Event::Close(CloseReason::ServiceClosing) => closed = true,
            _ => {}
        }
    }
    assert!(closed);
    let out = String::from_utf8(s.poll_output().unwrap().to_vec()).unwrap();
    assert!(out.ends_with("421 going away\r\n") && !out.contains("NOOP"), "{out}");
}

/// While a decision is pending nothing more is parsed, and input stops being wanted once
/// `MAX_BUFFERED_INPUT` octets wait: a client pipelining without end cannot grow the buffer.
#[test]
fn a_pending_decision_holds_the_pipeline_and_bounds_the_buffer() {
    use smtp_proto::server::MAX_BUFFERED_INPUT;
    let mut s = ServerSession::new(ServerConfig { hostname: "mx.test".into(), ..Default::default() });
    assert_eq!(s.config().hostname, "mx.test");
    let _ = s.poll_output();
    s.handle_input(b"EHLO c\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Hello { .. })));
    s.accept();
    s.handle_input(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Mail { .. })));
    assert!(s.is_pending());
    assert_eq!(s.poll_event(), None, "RCPT waits for MAIL's decision");
    let held = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n".len() - b"MAIL FROM:<a@b>\r\n".len();
    let filler = vec![b'x'; MAX_BUFFERED_INPUT - held - 1];
    s.handle_input(&filler);
    assert!(s.wants_input(), "one octet under the bound");
    s.handle_input(b"x");
    assert!(!s.wants_input(), "at the bound: stop reading");
    s.accept();
    assert!(matches!(s.poll_event(), Some(Event::Rcpt { .. })), "the pipeline resumes after the decision");
    s.accept();
    while s.poll_event().is_some() {}
    assert!(s.wants_input(), "the overlong line is being discarded, not kept");
    s.handle_input(b"\r\nQUIT\r\n");
    while s.poll_event().is_some() {}
    assert!(s.is_closed());
    assert!(!s.wants_input(), "a closed session reads nothing");
}

/// What the driver reads from the session: the HELO name, TLS, AUTH, the timeout that applies,
/// MAILMAX (RFC 9422), closing.
#[test]
fn the_session_reports_its_state_to_the_driver() {
    use smtp_proto::auth::AuthMechanism;
    use smtp_proto::server::Timeout;
    let config = ServerConfig {
        auth_mechanisms: vec![AuthMechanism::Plain],
        max_transactions: Some(1),
        starttls: true,
        ..cfg()
    };
    let mut s = ServerSession::new(config.clone());
    let drain = |s: &mut ServerSession| {
        while s.poll_event().is_some() {
            s.accept();
        }
        String::from_utf8(s.poll_output().map(|b| b.to_vec()).unwrap_or_default()).unwrap()
    };
    assert!(!s.is_tls() && !s.is_authenticated() && !s.is_closed() && !s.is_pending());
    assert_eq!(s.helo(), None);
    s.handle_input(b"EHLO client.test\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Hello { .. })));
    assert!(s.is_pending());
    s.accept();
    assert!(!s.is_pending());
    assert_eq!(s.helo().map(|d| d.to_string()).as_deref(), Some("client.test"));
    s.handle_input(b"STARTTLS\r\n");
    assert!(drain(&mut s).ends_with("220 2.0.0 Ready to start TLS\r\n"));
    s.tls_established();
    assert!(s.is_tls());
    assert_eq!(s.helo(), None, "forgotten after STARTTLS (RFC 3207 4.2)");
    s.handle_input(b"EHLO client.test\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
    drain(&mut s);
    assert!(s.is_authenticated());
    assert_eq!(s.timeout(), Timeout::Command);
    s.handle_input(b"DATA\r\n");
    drain(&mut s);
    assert_eq!(s.timeout(), Timeout::Data, "RFC 5321 4.5.3.2.5/6: the data block timeout");
    s.handle_input(b"x\r\n.\r\nMAIL FROM:<a@b>\r\n");
    let out = drain(&mut s);
    assert_eq!(out, "250 2.0.0 Message accepted\r\n452 4.5.3 Too many transactions in this session\r\n");
    assert!(!s.is_closed());
    s.handle_input(b"QUIT\r\n");
    drain(&mut s);
    assert!(s.is_closed());
}

/// RFC 8689: REQUIRETLS is offered and accepted only under TLS, and only when configured.
#[test]
fn requiretls_only_over_tls() {
    let on = ServerConfig { requiretls: true, ..cfg() };
    let run = transcript(on.clone(), b"EHLO a\r\nMAIL FROM:<a@b> REQUIRETLS\r\n", &accept_all);
    assert!(!run.output.contains("250-REQUIRETLS") && !run.output.contains("250 REQUIRETLS"), "{}", run.output);
    assert!(run.output.ends_with("530 5.7.10 REQUIRETLS needs a TLS session\r\n"), "{}", run.output);
    let mut s = ServerSession::new_tls(on);
    s.handle_input(b"EHLO a\r\nMAIL FROM:<a@b> REQUIRETLS\r\n");
    let mut flagged = false;
    while let Some(e) = s.poll_event() {
        if let Event::Mail { params, .. } = &e {
            flagged = params.requiretls;
        }
        s.accept();
    }
    let out = String::from_utf8(s.poll_output().unwrap().to_vec()).unwrap();
    assert!(out.contains("250-REQUIRETLS\r\n") && out.ends_with("250 2.1.0 Sender OK\r\n") && flagged, "{out}");
    let mut s = ServerSession::new_tls(cfg());
    s.handle_input(b"EHLO a\r\nMAIL FROM:<a@b> REQUIRETLS\r\n");
    while s.poll_event().is_some() {
        s.accept();
    }
    let out = String::from_utf8(s.poll_output().unwrap().to_vec()).unwrap();
    assert!(!out.contains("250-REQUIRETLS"), "not offered unless configured: {out}");
    assert_eq!(out.lines().last(), Some("555 5.5.4 MAIL FROM/RCPT TO parameters not recognized or not implemented"));
}

/// The driver reads the envelope when the data starts, which for BDAT is while the first chunk
/// is being read.
#[test]
fn the_envelope_is_there_while_a_chunk_is_read() {
    let mut s = ServerSession::new(cfg());
    s.handle_input(b"EHLO c.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3 LAST\r\nab");
    let mut seen = None;
    while let Some(e) = s.poll_event() {
        if e == Event::DataStart {
            seen = Some((s.envelope().map(|e| e.recipients.len()), s.helo().map(|d| d.to_string())));
        }
        s.accept();
    }
    assert_eq!(seen, Some((Some(1), Some("c.test".to_string()))));
    s.handle_input(b"c");
    while let Some(e) = s.poll_event() {
        if e == Event::DataEnd {
            assert_eq!(s.envelope().map(|e| e.recipients.len()), Some(1), "and at the end of data");
        }
        s.accept();
    }
    assert_eq!(s.envelope(), None, "gone once decided");
}

/// The last line of `output` (a whole reply line).
fn last(output: &str) -> &str {
    output.lines().last().unwrap_or("")
}

/// Extensions switched off refuse their parameters with 555; RFC 788 verbs off are 502.
#[test]
fn parameters_of_extensions_that_are_off() {
    let off = ServerConfig {
        smtputf8: false,
        eight_bit_mime: false,
        dsn: false,
        rfc788_commands: false,
        auth_mechanisms: Vec::new(),
        ..cfg()
    };
    for (mail, want) in [
        ("MAIL FROM:<a@b> SMTPUTF8", "555"),
        ("MAIL FROM:<a@b> BODY=8BITMIME", "555"),
        ("MAIL FROM:<a@b> RET=FULL", "555"),
        ("MAIL FROM:<a@b> ENVID=x", "555"),
        ("MAIL FROM:<a@b> AUTH=<>", "555"),
        ("MAIL FROM:<a@b> BODY=7BIT", "250"),
        ("SEND FROM:<a@b>", "502"),
    ] {
        let run = transcript(off.clone(), format!("EHLO c\r\n{mail}\r\n").as_bytes(), &accept_all);
        assert_eq!(codes_of(&run.output).last(), Some(&want), "{mail}: {}", run.output);
    }
    let run = transcript(off, b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=NEVER\r\n", &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "555"], "DSN off");
    let run = transcript(cfg(), b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=NEVER\r\n", &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "250"], "DSN on");
    // A UTF-8 recipient needs SMTPUTF8 on the MAIL (RFC 6531 3.4).
    let run = transcript(
        cfg(),
        "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<jürgen@d.test>\r\nRSET\r\nMAIL FROM:<a@b> SMTPUTF8\r\nRCPT TO:<jürgen@d.test>\r\n"
            .as_bytes(),
        &accept_all,
    );
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "553", "250", "250", "250"]);
}

/// Limits hold at exactly their value: a line, a message, a declared SIZE and a BDAT total of
/// exactly the limit pass; one more octet does not.
#[test]
fn limits_are_exact() {
    let small = ServerConfig { max_line_len: 32, max_message_size: 10, ..cfg() };
    // "NOOP " + 25 octets + CRLF = 32.
    let fits = format!("NOOP {}\r\n", "x".repeat(25));
    let over = format!("NOOP {}\r\n", "x".repeat(26));
    let run = transcript(small.clone(), format!("EHLO c\r\n{fits}{over}").as_bytes(), &accept_all);
    assert_eq!(codes_of(&run.output), ["220", "250", "250", "500"], "{}", run.output);
    let declared = b"EHLO c\r\nMAIL FROM:<a@b> SIZE=10\r\nRSET\r\nMAIL FROM:<a@b> SIZE=11\r\n";
    assert_eq!(codes_of(&transcript(small.clone(), declared, &accept_all).output), ["220", "250", "250", "250", "552"]);
    let data = |body: &str| {
        let input = format!("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n{body}\r\n.\r\n");
        transcript(small.clone(), input.as_bytes(), &accept_all)
    };
    let run = data("12345678"); // 8 octets + CRLF = 10
    assert_eq!(last(&run.output), "250 2.0.0 Message accepted");
    assert_eq!(run.body, b"12345678\r\n");
    let run = data("123456789");
    assert!(last(&run.output).starts_with("552"), "{}", run.output);
    assert!(
        run.body.is_empty() && !run.events.iter().any(|e| matches!(e, Event::DataChunk(_))),
        "nothing past the limit"
    );
    let bdat = |sizes: &[usize]| {
        let mut input = String::from("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
        for (i, n) in sizes.iter().enumerate() {
            let last = if i + 1 == sizes.len() { " LAST" } else { "" };
            input.push_str(&format!("BDAT {n}{last}\r\n{}", "y".repeat(*n)));
        }
        transcript(small.clone(), input.as_bytes(), &accept_all).output
    };
    let out = bdat(&[4, 6]);
    assert!(out.contains("250 2.0.0 4 octets received\r\n"), "{out}");
    assert_eq!(last(&out), "250 2.0.0 Message accepted");
    assert!(last(&bdat(&[4, 7])).starts_with("552"));
}

/// An empty body and a body refused for a bare line end are never passed on as chunks.
#[test]
fn no_empty_or_refused_chunks() {
    let run = transcript(cfg(), b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\r\n", &accept_all);
    assert_eq!(last(&run.output), "250 2.0.0 Message accepted");
    assert!(!run.events.iter().any(|e| matches!(e, Event::DataChunk(_))), "{:?}", run.events);
    let run = transcript(cfg(), b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3 LAST\r\na\nb", &accept_all);
    assert!(last(&run.output).starts_with("550 5.6.0"), "{}", run.output);
    assert!(run.body.is_empty() && !run.events.iter().any(|e| matches!(e, Event::DataChunk(_))));
}

/// Refused decisions change nothing; BDAT needs CHUNKING and a recipient, and only BDAT may
/// follow a chunk.
#[test]
fn refusals_and_bdat_ordering() {
    let refuse_hello = |e: &Event| matches!(e, Event::Hello { .. }).then(|| Reply::new(550, None, "not you"));
    let run = transcript(cfg(), b"EHLO c\r\nMAIL FROM:<a@b>\r\n", &refuse_hello);
    assert_eq!(last(&run.output), "503 5.5.1 Send HELO/EHLO first", "a refused EHLO greets nobody");
    let refuse_mail = |e: &Event| matches!(e, Event::Mail { .. }).then(|| Reply::new(550, None, "not you"));
    let run = transcript(cfg(), b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", &refuse_mail);
    assert_eq!(last(&run.output), "503 5.5.1 Need MAIL before RCPT", "a refused MAIL starts nothing");
    let no_chunking = ServerConfig { chunking: false, ..cfg() };
    let run =
        transcript(no_chunking, b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1 LAST\r\nxNOOP\r\n", &accept_all);
    assert_eq!(codes_of(&run.output)[4..], ["502", "250"], "refused, its octet read, then NOOP: {}", run.output);
    let run = transcript(cfg(), b"EHLO c\r\nMAIL FROM:<a@b>\r\nBDAT 1 LAST\r\nx", &accept_all);
    assert_eq!(last(&run.output), "554 5.5.1 No valid recipients");
    let run =
        transcript(cfg(), b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nxRCPT TO:<e@f>\r\n", &accept_all);
    assert_eq!(last(&run.output), "503 5.5.1 Bad sequence of commands", "{}", run.output);
}

/// A refused BDAT chunk is read to its end (never taken as commands) up to a size worth
/// reading — the larger of twice the message limit and 1 MiB — and past that the session closes.
#[test]
fn refused_chunks_are_read_up_to_a_bound() {
    let small = ServerConfig { max_message_size: 10, ..cfg() };
    let head = "EHLO c\r\nMAIL FROM:<a@b>\r\n";
    let run = transcript(
        small.clone(),
        format!("{head}BDAT 100 LAST\r\n{}NOOP\r\n", "x".repeat(100)).as_bytes(),
        &accept_all,
    );
    assert_eq!(codes_of(&run.output)[3..], ["554", "250"], "read and refused, then NOOP: {}", run.output);
    let at = 1 << 20;
    let input = format!("{head}BDAT {at} LAST\r\n{}NOOP\r\n", "x".repeat(at));
    let run = drive(small.clone(), &[input.as_bytes()], &accept_all);
    assert_eq!(codes_of(&run.output)[3..], ["554", "250"], "exactly the bound is still read");
    let run = drive(small, &[format!("{head}BDAT {} LAST\r\n", at + 1).as_bytes()], &accept_all);
    assert!(last(&run.output).starts_with("421 4.3.4"), "{}", run.output);
    // AUTH needs EHLO, not HELO (RFC 4954 4).
    let auth = ServerConfig { auth_mechanisms: vec![smtp_proto::auth::AuthMechanism::Plain], ..cfg() };
    let mut s = ServerSession::new_tls(auth);
    s.handle_input(b"HELO c\r\nAUTH PLAIN AHUAcA==\r\n");
    while s.poll_event().is_some() {
        s.accept();
    }
    let out = String::from_utf8(s.poll_output().unwrap().to_vec()).unwrap();
    assert_eq!(last(&out), "503 5.5.1 Bad sequence of commands", "{out}");
}
