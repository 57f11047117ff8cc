//! Property tests: round trips for commands, replies and paths; dot stuffing for any bytes and
//! any chunking; the server session never panics and does not depend on chunking.

use proptest::prelude::*;
use smtp_proto::server::{ServerConfig, ServerSession};
use smtp_proto::{Command, DotStuffer, DotUnstuffer, EnhancedCode, LineEndingPolicy, Reply, ReplyParser};

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?",
        // U-labels (RFC 6531): letters beyond ASCII.
        "[a-z\u{e0}-\u{f6}\u{4e00}-\u{4e20}]{1,6}",
    ]
}

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(label(), 1..4).prop_map(|v| v.join(".")),
        any::<[u8; 4]>().prop_map(|a| format!("[{}.{}.{}.{}]", a[0], a[1], a[2], a[3])),
        any::<[u16; 8]>().prop_map(|a| format!("[IPv6:{}]", std::net::Ipv6Addr::from(a))),
    ]
}

fn local() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}(\\.[a-zA-Z0-9_-]{1,5}){0,2}",
        "[a-z\u{e0}-\u{f6}\u{4e00}-\u{4e20}]{1,6}",
        "[ a-z@,:<>\\\\\"]{0,8}".prop_map(|s| {
            let escaped: String =
                s.chars().flat_map(|c| if c == '\\' || c == '"' { vec!['\\', c] } else { vec![c] }).collect();
            format!("\"{escaped}\"")
        }),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(domain(), 0..3), any::<bool>(), local(), domain()).prop_map(|(route, comma, l, d)| {
        let mut s = String::from("<");
        if !route.is_empty() {
            s.push_str(&route.iter().map(|r| format!("@{r}")).collect::<Vec<_>>().join(","));
            s.push(if comma { ',' } else { ':' });
        }
        s.push_str(&format!("{l}@{d}>"));
        s
    })
}

fn command_line() -> impl Strategy<Value = String> {
    prop_oneof![
        domain().prop_map(|d| format!("EHLO {d}")),
        domain().prop_map(|d| format!("HELO {d}")),
        (prop_oneof!["MAIL", "SEND", "SOML", "SAML"], path(), proptest::option::of(0u64..u64::MAX)).prop_map(
            |(v, p, s)| match s {
                Some(n) => format!("{v} FROM:{p} SIZE={n}"),
                None => format!("{v} FROM:{p}"),
            }
        ),
        Just("MAIL FROM:<>".to_string()),
        path().prop_map(|p| format!("RCPT TO:{p} NOTIFY=SUCCESS,DELAY")),
        (any::<u64>(), any::<bool>()).prop_map(|(n, l)| format!("BDAT {n}{}", if l { " LAST" } else { "" })),
        Just("DATA".to_string()),
        Just("QUIT".to_string()),
        "[a-zA-Z]{1,10}".prop_map(|s| format!("VRFY {s}")),
    ]
}

/// Runs a [`LineChecker`] over `data` cut at `cuts`; the bytes passed on and the flags.
fn check_chunks(data: &[u8], cuts: &[usize], policy: LineEndingPolicy) -> (Vec<u8>, bool, bool) {
    let mut c = smtp_proto::data::LineChecker::new(policy);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|&x| x.min(data.len())).collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    for end in cuts {
        let chunk = &data[pos..end.max(pos)];
        match c.check(chunk) {
            Some(fixed) => out.extend(fixed),
            None => out.extend_from_slice(chunk),
        }
        pos = end.max(pos);
    }
    out.extend(c.finish().unwrap_or_default());
    (out, c.saw_bare_line_ending(), c.saw_nul())
}

proptest! {
    /// Paths parse into the fields they were built from, and write back to the same text.
    #[test]
    fn path_fields_round_trip(route in prop::collection::vec(domain(), 0..3), comma in any::<bool>(), l in local(), d in domain()) {
        let mut text = String::from("<");
        if !route.is_empty() {
            text.push_str(&route.iter().map(|r| format!("@{r}")).collect::<Vec<_>>().join(","));
            text.push(if comma { ',' } else { ':' });
        }
        text.push_str(&format!("{l}@{d}>"));
        let p = smtp_proto::Path::parse(&text).unwrap();
        prop_assert_eq!(p.route.iter().map(|r| r.to_string()).collect::<Vec<_>>(), route);
        prop_assert_eq!(p.mailbox.local_wire(), l.as_str());
        prop_assert_eq!(p.mailbox.domain().to_string(), d);
        prop_assert_eq!(p.to_string(), text.clone());
        prop_assert_eq!(smtp_proto::Path::parse(&p.to_string()).unwrap(), p);
    }

    /// Any bytes (not only stuffed output), cut anywhere: the same output and the same end,
    /// and the end is only ever right after CRLF "." CRLF (or a first line ".").
    #[test]
    fn unstuff_adversarial_input_any_chunking(
        input in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), any::<u8>()], 0..300),
        cuts in prop::collection::vec(0usize..300, 0..6),
    ) {
        for policy in [LineEndingPolicy::Reject, LineEndingPolicy::Normalize] {
            let run = |cuts: &[usize]| {
                let mut u = DotUnstuffer::new(policy);
                let mut out = Vec::new();
                let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
                bounds.sort_unstable();
                bounds.push(input.len());
                let mut start = 0;
                for b in bounds {
                    let b = b.max(start);
                    if let smtp_proto::data::Unstuffed::Done { consumed } = u.unstuff(&input[start..b], &mut out) {
                        return (out, Some(start + consumed), u.saw_bare_line_ending(), u.saw_nul());
                    }
                    start = b;
                }
                (out, None, u.saw_bare_line_ending(), u.saw_nul())
            };
            let whole = run(&[]);
            prop_assert_eq!(&run(&cuts), &whole);
            if let Some(end) = whole.1 {
                prop_assert!(end == 3 && input.starts_with(b".\r\n") || input[..end].ends_with(b"\r\n.\r\n"));
            }
            if policy == LineEndingPolicy::Normalize {
                prop_assert!(!whole.0.contains(&0));
            }
        }
    }

    /// STARTTLS pipelined with more commands: after the handshake nothing of what followed it in
    /// the same write is answered, and the session needs a new EHLO (RFC 3207 4.2).
    #[test]
    fn nothing_pipelined_behind_starttls_survives(
        after in prop::collection::vec(prop_oneof![
            Just(b"MAIL FROM:<a@b>\r\n".to_vec()), Just(b"RCPT TO:<c@d>\r\n".to_vec()), Just(b"NOOP\r\n".to_vec()),
            Just(b"EHLO x\r\n".to_vec()), prop::collection::vec(any::<u8>(), 0..20)], 0..8),
    ) {
        let mut s = ServerSession::new(ServerConfig { starttls: true, ..Default::default() });
        let mut input = b"EHLO a\r\nSTARTTLS\r\n".to_vec();
        input.extend(after.concat());
        s.handle_input(&input);
        let mut started = false;
        while let Some(e) = s.poll_event() {
            if s.is_pending() { s.accept(); }
            if e == smtp_proto::server::Event::StartTls { started = true; }
        }
        prop_assert!(started);
        let before = String::from_utf8(s.poll_output().unwrap().to_vec()).unwrap();
        let replies = before.lines().filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ').count();
        prop_assert_eq!(replies, 3, "greeting, EHLO, 220 — nothing for the pipelined rest: {}", before);
        s.tls_established();
        s.handle_input(b"MAIL FROM:<a@b>\r\n");
        while let Some(_e) = s.poll_event() { if s.is_pending() { s.accept(); } }
        let after_tls = String::from_utf8(s.poll_output().unwrap().to_vec()).unwrap();
        prop_assert!(after_tls.starts_with("503"), "a new EHLO is needed: {}", after_tls);
    }

    /// BDAT checks do not depend on where chunks are cut; normalized output is clean CRLF text.
    #[test]
    fn bdat_line_checks_any_chunking(
        data in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(0u8), any::<u8>()], 0..300),
        cuts in prop::collection::vec(0usize..300, 0..6),
    ) {
        for policy in [LineEndingPolicy::Reject, LineEndingPolicy::Normalize] {
            let whole = check_chunks(&data, &[], policy);
            prop_assert_eq!(&check_chunks(&data, &cuts, policy), &whole);
            if policy == LineEndingPolicy::Reject {
                prop_assert_eq!(&whole.0, &data, "reject passes bytes through");
            } else {
                let out = &whole.0;
                prop_assert!(!out.contains(&0));
                for (i, &b) in out.iter().enumerate() {
                    if b == b'\n' { prop_assert!(i > 0 && out[i - 1] == b'\r'); }
                    if b == b'\r' { prop_assert!(out.get(i + 1) == Some(&b'\n')); }
                }
            }
        }
    }
    #[test]
    fn command_round_trip(line in command_line()) {
        let cmd = Command::parse(line.as_bytes()).unwrap();
        let written = cmd.to_bytes();
        prop_assert!(written.ends_with(b"\r\n"));
        let again = Command::parse(&written[..written.len() - 2]).unwrap();
        prop_assert_eq!(cmd, again);
    }

    #[test]
    fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Command::parse(&line);
    }

    #[test]
    fn reply_round_trip(code in 200u16..600, enh in any::<bool>(), lines in prop::collection::vec("[ -~]{0,30}", 1..5)) {
        let e = enh.then(|| EnhancedCode::new(match code / 100 { 2 | 3 => 2, 4 => 4, _ => 5 }, 1, 5));
        let e = e.filter(|e| e.class as u16 == code / 100);
        let r = Reply::multiline(code, e, &lines);
        let mut buf = bytes::BytesMut::from(&r.to_bytes()[..]);
        let parsed = ReplyParser::default().parse(&mut buf).unwrap().unwrap();
        prop_assert_eq!(parsed.code(), code);
        prop_assert_eq!(parsed.enhanced(), e);
        if e.is_some() { prop_assert_eq!(parsed.lines(), r.lines()); }
    }

    #[test]
    fn stuff_unstuff_any_bytes_any_chunking(body in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..400),
                                            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        // Stuff in pieces.
        let mut stuffed = Vec::new();
        let mut s = DotStuffer::new();
        let mut pos: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
        pos.sort();
        let mut last = 0;
        for p in pos.iter().copied().chain([body.len()]) {
            s.stuff(&body[last..p], &mut stuffed);
            last = p;
        }
        s.finish(&mut stuffed);
        prop_assert_eq!(&stuffed, &DotStuffer::stuff_all(&body));
        // Only CRLF line ends on the wire.
        for (i, &b) in stuffed.iter().enumerate() {
            if b == b'\n' { prop_assert_eq!(stuffed[i - 1], b'\r'); }
            if b == b'\r' { prop_assert_eq!(stuffed.get(i + 1), Some(&b'\n')); }
        }
        // Unstuff in other pieces: the canonical body comes back and the end is the end.
        let mut canonical = Vec::new();
        let mut i = 0;
        while i < body.len() {
            match body[i] {
                b'\r' => { canonical.extend_from_slice(b"\r\n"); if body.get(i + 1) == Some(&b'\n') { i += 1; } }
                b'\n' => canonical.extend_from_slice(b"\r\n"),
                b => canonical.push(b),
            }
            i += 1;
        }
        if !canonical.is_empty() && !canonical.ends_with(b"\r\n") { canonical.extend_from_slice(b"\r\n"); }
        let mut u = DotUnstuffer::new(LineEndingPolicy::Reject);
        let mut out = Vec::new();
        let mut done = None;
        let mut start = 0;
        for p in pos.iter().map(|&p| p * stuffed.len() / (body.len() + 1)).chain([stuffed.len()]) {
            let p = p.max(start);
            if let smtp_proto::data::Unstuffed::Done { consumed } = u.unstuff(&stuffed[start..p], &mut out) {
                done = Some(start + consumed);
                break;
            }
            start = p;
        }
        prop_assert_eq!(done, Some(stuffed.len()));
        prop_assert!(!u.saw_bare_line_ending());
        prop_assert_eq!(out, canonical);
    }

    #[test]
    fn server_session_any_input(input in prop::collection::vec(prop_oneof![
            Just(b"EHLO a\r\n".to_vec()), Just(b"MAIL FROM:<a@b>\r\n".to_vec()), Just(b"RCPT TO:<c@d>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()), Just(b"\r\n.\r\n".to_vec()), Just(b"BDAT 3\r\n".to_vec()), Just(b"STARTTLS\r\n".to_vec()),
            Just(b"RSET\r\n".to_vec()), prop::collection::vec(any::<u8>(), 0..20)], 0..30),
        split in 1usize..7) {
        let input: Vec<u8> = input.concat();
        let run = |chunk: usize| {
            let mut s = ServerSession::new(ServerConfig { starttls: true, ..Default::default() });
            let mut out = Vec::new();
            for c in input.chunks(chunk) {
                s.handle_input(c);
                while let Some(_e) = s.poll_event() { if s.is_pending() { s.accept(); } }
                if let Some(o) = s.poll_output() { out.extend_from_slice(&o); }
            }
            out
        };
        prop_assert_eq!(run(split), run(input.len().max(1)));
    }
}
