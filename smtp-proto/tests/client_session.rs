//! The client session against scripted replies and, in memory, against the server session.

use smtp_proto::client::{ClientConfig, ClientError, ClientEvent, ClientSession, CommandKind, DataMode};
use smtp_proto::server::{Event, ServerConfig, ServerSession};
use smtp_proto::{Domain, EnhancedCode, Envelope, ForwardPath, Reply, ReplyError};

fn client() -> ClientSession {
    ClientSession::new(ClientConfig::new(Domain::parse("client.test").unwrap()))
}

fn out(c: &mut ClientSession) -> String {
    c.poll_output().map(|b| String::from_utf8(b.to_vec()).unwrap()).unwrap_or_default()
}

fn events(c: &mut ClientSession) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn env(rcpts: &[&str]) -> Envelope {
    let paths = rcpts.iter().map(|r| ForwardPath::Path(smtp_proto::Path::parse(r).unwrap()));
    paths.fold(Envelope::from_str_addr("<a@b.test>").unwrap(), |e, p| e.to_path(p, Default::default()))
}

#[test]
fn helo_fallback_for_rfc788_servers() {
    let mut c = client();
    c.handle_input(b"220 old.host Simple Mail Transfer Service Ready\r\n").unwrap();
    assert_eq!(out(&mut c), "EHLO client.test\r\n");
    c.handle_input(b"500 Syntax error, command unrecognized\r\n").unwrap();
    assert_eq!(out(&mut c), "HELO client.test\r\n");
    c.handle_input(b"250 old.host\r\n").unwrap();
    assert_eq!(events(&mut c), [ClientEvent::Ready]);
    assert!(!c.is_extended());
    // Without PIPELINING, commands go one at a time.
    c.send_envelope(&env(&["<x@y>", "<z@y>"]), DataMode::Data).unwrap();
    assert_eq!(out(&mut c), "MAIL FROM:<a@b.test>\r\n");
    c.handle_input(b"250 OK\r\n").unwrap();
    assert_eq!(out(&mut c), "RCPT TO:<x@y>\r\n");
    c.handle_input(b"550 No such user\r\n").unwrap();
    assert_eq!(out(&mut c), "RCPT TO:<z@y>\r\n");
    c.handle_input(b"250 OK\r\n").unwrap();
    assert_eq!(out(&mut c), "DATA\r\n");
    c.handle_input(b"354 go\r\n").unwrap();
    let ev = events(&mut c);
    let [ClientEvent::Envelope(o)] = &ev[..] else { panic!("{ev:?}") };
    assert_eq!(o.accepted().collect::<Vec<_>>(), [1]);
    assert!(o.data_ready());
    c.send_data(b"hi\n.\nthere");
    c.finish_data();
    assert_eq!(out(&mut c), "hi\r\n..\r\nthere\r\n.\r\n");
}

#[test]
fn greeting_4xx_and_multiline_split_replies() {
    let mut c = client();
    c.handle_input(b"421 busy\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Failed(CommandKind::Greeting, r)] if r.code() == 421));
    let mut c = client();
    let script = b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SIZE 100\r\n";
    for b in script.chunks(3) {
        c.handle_input(b).unwrap();
    }
    assert_eq!(events(&mut c), [ClientEvent::Ready]);
    assert!(c.capabilities().pipelining && c.capabilities().starttls);
    assert_eq!(c.capabilities().size, Some(100));
}

#[test]
fn starttls_discards_and_re_ehlos() {
    let mut c = client();
    c.handle_input(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n").unwrap();
    let _ = (out(&mut c), events(&mut c));
    c.start_tls().unwrap();
    assert_eq!(out(&mut c), "STARTTLS\r\n");
    // A man in the middle appends a forged reply after the 220: it must be dropped.
    c.handle_input(b"220 go ahead\r\n250 forged\r\n").unwrap();
    assert_eq!(events(&mut c), [ClientEvent::StartTls]);
    c.tls_established();
    assert_eq!(out(&mut c), "EHLO client.test\r\n");
    c.handle_input(b"250-mx\r\n250 AUTH PLAIN\r\n").unwrap();
    assert_eq!(events(&mut c), [ClientEvent::Ready]);
    assert!(!c.capabilities().starttls);
    assert_eq!(c.capabilities().auth, ["PLAIN"]);
}

#[test]
fn unbounded_replies_are_errors() {
    let mut c = client();
    let long = vec![b'2'; 10_000];
    assert_eq!(c.handle_input(&long), Err(ClientError::Malformed(ReplyError::LineTooLong)));
    let mut c = client();
    let mut endless = b"220-a\r\n".repeat(1000);
    endless.extend_from_slice(b"220 a\r\n");
    assert_eq!(c.handle_input(&endless), Err(ClientError::Malformed(ReplyError::TooManyLines)));
}

/// Runs client and server against each other in memory, the server refusing `refused` RCPTs.
#[test]
fn in_memory_pipelined_transaction_against_server_session() {
    let mut server = ServerSession::new(ServerConfig { hostname: "mx.test".into(), ..Default::default() });
    let mut c = client();
    let mut delivered = Vec::new();
    let mut body = Vec::new();
    let mut outcome = None;
    let mut final_reply = None;
    let mut sent = false;
    for _round in 0..20 {
        if let Some(b) = server.poll_output() {
            c.handle_input(&b).unwrap();
        }
        while let Some(ev) = c.poll_event() {
            match ev {
                ClientEvent::Ready if !sent => {
                    sent = true;
                    c.send_envelope(&env(&["<a@x>", "<bad@x>", "<c@x>", "<bad2@x>", "<e@x>"]), DataMode::Data).unwrap();
                }
                ClientEvent::Envelope(o) => {
                    assert!(o.data_ready());
                    c.send_data(b"Subject: t\r\n\r\n.leading dot\r\n");
                    c.finish_data();
                    outcome = Some(o);
                }
                ClientEvent::Message(r) => final_reply = Some(r),
                other => panic!("{other:?}"),
            }
        }
        if let Some(b) = c.poll_output() {
            server.handle_input(&b);
        }
        while let Some(ev) = server.poll_event() {
            match &ev {
                Event::Rcpt { to, .. } if to.to_string().contains("bad") => {
                    server.respond(Reply::new(550, Some(EnhancedCode::new(5, 1, 1)), "no"))
                }
                Event::DataChunk(b) => body.extend_from_slice(b),
                Event::DataEnd => {
                    delivered = server.envelope().unwrap().recipients.iter().map(|r| r.path.to_string()).collect();
                    server.accept();
                }
                _ if server.is_pending() => server.accept(),
                _ => {}
            }
        }
    }
    let o = outcome.expect("envelope outcome");
    assert_eq!(o.accepted().collect::<Vec<_>>(), [0, 2, 4]);
    assert_eq!(o.recipients[1].code(), 550);
    assert_eq!(final_reply.unwrap().code(), 250);
    assert_eq!(delivered, ["<a@x>", "<c@x>", "<e@x>"]);
    assert_eq!(body, b"Subject: t\r\n\r\n.leading dot\r\n");
}

/// A client that has read the greeting and an EHLO reply advertising `extensions`.
fn ready_with(extensions: &[&str]) -> ClientSession {
    let mut c = client();
    let mut script = String::from("220 mx\r\n");
    for (i, e) in std::iter::once(&"mx").chain(extensions).enumerate() {
        let sep = if i == extensions.len() { ' ' } else { '-' };
        script.push_str(&format!("250{sep}{e}\r\n"));
    }
    c.handle_input(script.as_bytes()).unwrap();
    assert_eq!(out(&mut c), "EHLO client.test\r\n");
    assert_eq!(events(&mut c), [ClientEvent::Ready]);
    c
}

fn noop() -> smtp_proto::Command {
    smtp_proto::Command::Noop(None)
}

#[test]
fn flags_follow_the_session() {
    let mut c = client();
    assert!(!c.is_idle(), "waiting for the greeting");
    assert!(!c.is_tls() && !c.is_extended());
    assert_eq!(c.command(noop()), Ok(()), "a command may be queued before the greeting");
    assert_eq!(out(&mut c), "", "but it waits for the greeting");
    let mut c = ready_with(&["PIPELINING"]);
    assert!(c.is_idle() && c.is_extended() && !c.is_tls());
    c.send_envelope(&env(&["<x@y>"]), DataMode::Later).unwrap();
    assert!(!c.is_idle(), "replies outstanding");
    c.handle_input(b"250 ok\r\n250 ok\r\n").unwrap();
    assert!(c.is_idle());
    let c = ClientSession::new_tls(ClientConfig::new(Domain::parse("client.test").unwrap()));
    assert!(c.is_tls(), "implicit TLS (RFC 8314)");
}

#[test]
fn without_pipelining_one_command_waits_for_the_previous_reply() {
    let mut c = ready_with(&["SIZE 1000"]);
    c.command(noop()).unwrap();
    assert_eq!(out(&mut c), "NOOP\r\n");
    c.send_envelope(&env(&["<x@y>"]), DataMode::Data).unwrap();
    assert_eq!(out(&mut c), "", "MAIL waits for the NOOP's reply");
    c.handle_input(b"250 ok\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Reply(CommandKind::Noop, r)] if r.code() == 250));
    assert_eq!(out(&mut c), "MAIL FROM:<a@b.test>\r\n");
    // MAIL refused: the RCPTs and DATA are never sent (RFC 5321 3.3).
    c.handle_input(b"550 5.7.1 not you\r\n").unwrap();
    assert_eq!(out(&mut c), "");
    let ev = events(&mut c);
    let [ClientEvent::Envelope(o)] = &ev[..] else { panic!("{ev:?}") };
    assert_eq!((o.mail.code(), o.recipients.len(), o.data.is_none()), (550, 0, true));
    assert!(c.is_idle());
    // Every recipient refused: no DATA.
    c.send_envelope(&env(&["<x@y>", "<z@y>"]), DataMode::Data).unwrap();
    assert_eq!(out(&mut c), "MAIL FROM:<a@b.test>\r\n");
    c.handle_input(b"250 ok\r\n").unwrap();
    assert_eq!(out(&mut c), "RCPT TO:<x@y>\r\n");
    c.handle_input(b"550 no\r\n").unwrap();
    assert_eq!(out(&mut c), "RCPT TO:<z@y>\r\n");
    c.handle_input(b"551 no\r\n").unwrap();
    let ev = events(&mut c);
    let [ClientEvent::Envelope(o)] = &ev[..] else { panic!("{ev:?}") };
    assert_eq!(o.accepted().count(), 0);
    assert!(o.data.is_none() && !o.data_ready());
    assert_eq!(out(&mut c), "", "no DATA after every recipient was refused");
    assert!(c.is_idle());
}

fn envelope_event(c: &mut ClientSession) -> smtp_proto::client::EnvelopeOutcome {
    let ev = events(c);
    match &ev[..] {
        [ClientEvent::Envelope(o)] => o.clone(),
        _ => panic!("expected one envelope outcome: {ev:?}"),
    }
}

#[test]
fn pipelined_groups_end_at_data() {
    let mut c = ready_with(&["PIPELINING"]);
    c.send_envelope(&env(&["<x@y>", "<z@y>"]), DataMode::Data).unwrap();
    c.command(smtp_proto::Command::Rset).unwrap();
    // RFC 2920 3.1: the whole envelope in one write, DATA last in its group.
    assert_eq!(out(&mut c), "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\nDATA\r\n");
    // Every recipient refused: DATA was sent anyway and its reply is awaited.
    c.handle_input(b"250 ok\r\n550 no\r\n550 no\r\n").unwrap();
    assert_eq!((events(&mut c), out(&mut c)), (vec![], String::new()), "waiting for DATA's reply");
    c.handle_input(b"554 5.5.1 no valid recipients\r\n").unwrap();
    let o = envelope_event(&mut c);
    assert_eq!(o.data.as_ref().map(Reply::code), Some(554));
    assert!(!o.data_ready());
    assert_eq!(out(&mut c), "RSET\r\n", "the next group goes once DATA is answered");
    c.handle_input(b"250 ok\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Reply(CommandKind::Rset, r)] if r.code() == 250));
}

#[test]
fn data_later_after_looking_at_the_recipients() {
    let mut c = ready_with(&["PIPELINING"]);
    c.send_envelope(&env(&["<x@y>"]), DataMode::Later).unwrap();
    assert_eq!(out(&mut c), "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y>\r\n");
    assert_eq!(
        c.send_envelope(&env(&["<x@y>"]), DataMode::Later),
        Err(ClientError::Misuse("an envelope is already in flight"))
    );
    c.handle_input(b"250 ok\r\n250 ok\r\n").unwrap();
    let o = envelope_event(&mut c);
    assert_eq!((o.accepted().count(), o.data.is_none(), o.data_ready()), (1, true, false));
    c.start_data().unwrap();
    assert_eq!(out(&mut c), "DATA\r\n");
    c.handle_input(b"354 go\r\n").unwrap();
    assert!(envelope_event(&mut c).data_ready());
    c.send_data(b"a\r\n.b");
    c.finish_data();
    assert_eq!(out(&mut c), "a\r\n..b\r\n.\r\n");
    c.handle_input(b"250 2.0.0 queued\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Message(r)] if r.code() == 250));
    assert!(c.is_idle());
    assert_eq!(c.send_envelope(&env(&[]), DataMode::Data), Err(ClientError::Misuse("no recipients")));
}

#[test]
fn bdat_reports_the_first_failed_chunk() {
    let mut c = ready_with(&["PIPELINING"]);
    assert_eq!(c.send_bdat(b"x", true), Err(ClientError::Misuse("CHUNKING not offered")));
    let mut c = ready_with(&["PIPELINING", "CHUNKING"]);
    for (replies, want) in [(["552 5.3.4 too big", "250 ok"], 552), (["250 ok", "250 2.0.0 queued"], 250)] {
        c.send_envelope(&env(&["<x@y>"]), DataMode::Later).unwrap();
        c.handle_input(b"250 ok\r\n250 ok\r\n").unwrap();
        let _ = (out(&mut c), envelope_event(&mut c));
        c.send_bdat(b"abc", false).unwrap();
        c.send_bdat(b"de", true).unwrap();
        assert_eq!(out(&mut c), "BDAT 3\r\nabcBDAT 2 LAST\r\nde");
        c.handle_input(format!("{}\r\n", replies[0]).as_bytes()).unwrap();
        assert_eq!(events(&mut c), [], "no outcome before the last chunk's reply");
        c.handle_input(format!("{}\r\n", replies[1]).as_bytes()).unwrap();
        let want_text = replies.iter().find(|r| !r.starts_with('2')).unwrap_or(&replies[1]);
        assert!(
            matches!(&events(&mut c)[..], [ClientEvent::Message(r)] if r.code() == want && want_text.ends_with(r.text().as_str())),
            "{replies:?}: the first refusal, else the last chunk's reply"
        );
    }
}

#[test]
fn auth_plain_and_login_exchanges() {
    let secret = smtp_proto::auth::Secret::new("pw");
    let mut c = ready_with(&["AUTH PLAIN LOGIN"]);
    c.auth(smtp_proto::auth::AuthMechanism::Plain, "u", &secret).unwrap();
    assert_eq!(out(&mut c), "AUTH PLAIN AHUAcHc=\r\n");
    c.handle_input(b"235 2.7.0 ok\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Auth(r)] if r.code() == 235));
    c.auth(smtp_proto::auth::AuthMechanism::Login, "u", &secret).unwrap();
    assert_eq!(out(&mut c), "AUTH LOGIN\r\n");
    c.handle_input(b"334 VXNlcm5hbWU6\r\n").unwrap();
    assert_eq!(out(&mut c), "dQ==\r\n");
    c.handle_input(b"334 UGFzc3dvcmQ6\r\n").unwrap();
    assert_eq!(out(&mut c), "cHc=\r\n");
    c.handle_input(b"535 5.7.8 no\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Auth(r)] if r.code() == 535));
    // A refusal at either prompt ends the exchange with that reply; nothing more is sent.
    for prompts in [&b"504 5.5.4 no\r\n"[..], b"334 VXNlcm5hbWU6\r\n501 5.5.2 bad\r\n"] {
        c.auth(smtp_proto::auth::AuthMechanism::Login, "u", &secret).unwrap();
        c.handle_input(prompts).unwrap();
        let sent = out(&mut c);
        assert!(!sent.contains("cHc="), "the password is not sent after a refusal: {sent:?}");
        assert!(matches!(&events(&mut c)[..], [ClientEvent::Auth(r)] if r.code() >= 500));
        assert!(c.is_idle());
    }
    let misuse = |r| matches!(r, Err(ClientError::Misuse(_)));
    assert!(misuse(c.auth(smtp_proto::auth::AuthMechanism::Plain, "u\0v", &secret)));
    assert!(misuse(c.auth(smtp_proto::auth::AuthMechanism::Plain, "u", &smtp_proto::auth::Secret::new("p\0w"))));
    let mut c = ready_with(&["AUTH LOGIN"]);
    assert_eq!(
        c.auth(smtp_proto::auth::AuthMechanism::Plain, "u", &secret),
        Err(ClientError::Misuse("AUTH mechanism not offered"))
    );
    assert_eq!(out(&mut c), "");
}

#[test]
fn starttls_and_commands_only_when_they_make_sense() {
    let mut c = client();
    assert_eq!(c.start_tls(), Err(ClientError::Misuse("session is not ready")));
    let mut c = ready_with(&["PIPELINING"]);
    assert_eq!(c.start_tls(), Err(ClientError::Misuse("STARTTLS not offered")));
    let mut c = ClientSession::new_tls(ClientConfig::new(Domain::parse("client.test").unwrap()));
    c.handle_input(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n").unwrap();
    let _ = (out(&mut c), events(&mut c));
    assert_eq!(c.start_tls(), Err(ClientError::Misuse("STARTTLS not offered")), "TLS is already up");
    // After the server's 220 to STARTTLS, nothing more is read until the handshake is done.
    let mut c = ready_with(&["STARTTLS", "PIPELINING"]);
    c.start_tls().unwrap();
    c.command(smtp_proto::Command::Rset).unwrap();
    assert_eq!(out(&mut c), "STARTTLS\r\n", "nothing is pipelined behind STARTTLS (RFC 2920 3.1)");
    c.handle_input(b"220 go\r\n").unwrap();
    assert_eq!(events(&mut c), [ClientEvent::StartTls]);
    assert_eq!(c.handle_input(b"250 injected\r\n"), Ok(()));
    assert_eq!(events(&mut c), []);
    assert!(c.send_envelope(&env(&["<x@y>"]), DataMode::Data).is_err(), "not ready during the handshake");
}

#[test]
fn each_simple_command_gets_its_own_reply_kind() {
    use smtp_proto::command::Text;
    let mut c = ready_with(&[]);
    let text = |s: &str| Text::new(s, "test").unwrap();
    let cases = [
        (smtp_proto::Command::Rset, "RSET", CommandKind::Rset),
        (smtp_proto::Command::Noop(None), "NOOP", CommandKind::Noop),
        (smtp_proto::Command::Vrfy(text("bob")), "VRFY bob", CommandKind::Vrfy),
        (smtp_proto::Command::Expn(text("list")), "EXPN list", CommandKind::Expn),
        (smtp_proto::Command::Help(None), "HELP", CommandKind::Help),
        (smtp_proto::Command::Quit, "QUIT", CommandKind::Quit),
    ];
    for (cmd, line, kind) in cases {
        c.command(cmd).unwrap();
        assert_eq!(out(&mut c), format!("{line}\r\n"));
        c.handle_input(b"250 ok\r\n").unwrap();
        assert!(matches!(&events(&mut c)[..], [ClientEvent::Reply(k, r)] if *k == kind && r.code() == 250), "{line}");
    }
    // QUIT closed the session: further input is ignored, further commands refused.
    assert_eq!(c.handle_input(b"250 late\r\n"), Ok(()));
    assert_eq!(events(&mut c), []);
    assert_eq!(c.command(noop()), Err(ClientError::Misuse("session closed")));
    let mut c = ready_with(&[]);
    assert_eq!(
        c.command(smtp_proto::Command::Data),
        Err(ClientError::Misuse("use the dedicated method for this command"))
    );
}

#[test]
fn a_421_anywhere_closes_the_session() {
    // In answer to a command: the reply, then the failure (RFC 5321 3.8).
    let mut c = ready_with(&[]);
    c.command(noop()).unwrap();
    c.handle_input(b"421 4.3.2 shutting down\r\n").unwrap();
    let ev = events(&mut c);
    assert!(
        matches!(&ev[..], [ClientEvent::Reply(CommandKind::Noop, a), ClientEvent::Failed(_, b)] if a.code() == 421 && b.code() == 421),
        "{ev:?}"
    );
    assert_eq!(c.command(noop()), Err(ClientError::Misuse("session closed")));
    // Unsolicited, while idle: the session fails; any other unsolicited reply is an error.
    let mut c = ready_with(&[]);
    c.handle_input(b"421 4.4.2 idle too long\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Failed(CommandKind::Greeting, r)] if r.code() == 421));
    let mut c = ready_with(&[]);
    assert!(matches!(c.handle_input(b"250 what\r\n"), Err(ClientError::Unexpected(r)) if r.code() == 250));
    // A 421 answering QUIT is only the QUIT's reply.
    let mut c = ready_with(&[]);
    c.command(smtp_proto::Command::Quit).unwrap();
    c.handle_input(b"421 bye\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Reply(CommandKind::Quit, _)]));
}

#[test]
fn negotiation_fits_the_envelope_to_the_server() {
    use smtp_proto::client::BodyFacts;
    use smtp_proto::command::Body;
    let utf8 = Envelope::from_str_addr("<a@b.test>").unwrap().to_str_addr("<jürgen@b.test>").unwrap();
    let plain = env(&["<x@y>"]);
    let facts = |size, eight_bit| BodyFacts { size, eight_bit };
    let bare = ready_with(&[]);
    assert_eq!(bare.negotiate(&utf8, facts(None, false)), Err(ClientError::ExtensionMissing("SMTPUTF8")));
    assert_eq!(bare.negotiate(&plain, facts(None, true)), Err(ClientError::ExtensionMissing("8BITMIME")));
    let got = bare.negotiate(&plain, facts(Some(10), false)).unwrap();
    assert_eq!(got.params.size, None, "no SIZE offered, none declared");
    let rich = ready_with(&["SMTPUTF8", "8BITMIME", "SIZE 100", "DSN"]);
    let got = rich.negotiate(&utf8, facts(Some(10), true)).unwrap();
    assert!(got.params.smtputf8);
    assert_eq!((got.params.body, got.params.size), (Some(Body::EightBitMime), Some(10)));
    assert_eq!(rich.negotiate(&plain, facts(Some(100), false)).unwrap().params.size, Some(100), "at the limit");
    let unlimited = ready_with(&["SIZE 0"]).negotiate(&plain, facts(Some(1 << 40), false)).unwrap();
    assert_eq!(unlimited.params.size, Some(1 << 40), "SIZE 0: no fixed limit (RFC 1870 4)");
    assert_eq!(
        rich.negotiate(&plain, facts(Some(101), false)),
        Err(ClientError::TooLarge { size: 101, max: 100 }),
        "refused before anything is sent (RFC 1870)"
    );
    // DSN parameters only where DSN is offered (RFC 3461 4).
    let mut dsn = plain.clone();
    dsn.params.envid = Some(smtp_proto::command::XText::encode("id1"));
    dsn.recipients[0].params.notify = Some(smtp_proto::command::Notify::Never);
    let kept = rich.negotiate(&dsn, facts(None, false)).unwrap();
    assert_eq!((kept.params.envid.is_some(), kept.recipients[0].params.notify.is_some()), (true, true));
    let dropped = ready_with(&["SIZE 100"]).negotiate(&dsn, facts(None, false)).unwrap();
    assert_eq!((dropped.params.envid, dropped.recipients[0].params.clone()), (None, Default::default()));
    // An RFC 788 server (HELO): no parameters at all.
    let mut old = client();
    old.handle_input(b"220 old\r\n500 what\r\n250 old\r\n").unwrap();
    let _ = (out(&mut old), events(&mut old));
    assert_eq!(old.negotiate(&dsn, facts(Some(5), false)).unwrap().params, Default::default());
}

#[test]
fn rcptmax_and_mailmax_bound_transactions() {
    let mut c = ready_with(&["PIPELINING", "LIMITS RCPTMAX=2 MAILMAX=1"]);
    assert_eq!(c.recipients_per_transaction(), 2);
    assert!(c.may_start_transaction());
    c.send_envelope(&env(&["<x@y>", "<z@y>"]), DataMode::Later).unwrap();
    assert!(!c.may_start_transaction(), "replies outstanding");
    c.handle_input(b"250 ok\r\n250 ok\r\n250 ok\r\n").unwrap();
    let _ = (out(&mut c), envelope_event(&mut c));
    assert!(!c.may_start_transaction(), "MAILMAX=1 is used up");
    assert!(matches!(c.send_envelope(&env(&["<x@y>"]), DataMode::Later), Err(ClientError::Misuse(_))));
    assert_eq!(out(&mut c), "", "nothing sent past MAILMAX");
    assert_eq!(ready_with(&[]).recipients_per_transaction(), usize::MAX);
}

#[test]
fn a_354_for_no_recipient_ends_the_empty_message() {
    let mut c = ready_with(&["PIPELINING"]);
    c.send_envelope(&env(&["<x@y>"]), DataMode::Data).unwrap();
    let _ = out(&mut c);
    c.handle_input(b"250 ok\r\n550 no\r\n354 go ahead anyway\r\n").unwrap();
    let o = envelope_event(&mut c);
    assert!(o.ended_empty && !o.data_ready(), "{o:?}");
    assert_eq!(out(&mut c), ".\r\n", "the session ends the empty message itself");
    assert!(!c.is_idle());
    c.handle_input(b"554 no valid recipients\r\n").unwrap();
    assert_eq!(events(&mut c), [], "the reply to the empty message is not reported");
    assert!(c.is_idle() && c.may_start_transaction());
}

#[test]
fn requiretls_needs_tls_and_the_servers_requiretls() {
    use smtp_proto::client::BodyFacts;
    let mut env = env(&["<x@y>"]);
    env.params.requiretls = true;
    let missing = Err(ClientError::ExtensionMissing("REQUIRETLS"));
    assert_eq!(ready_with(&["REQUIRETLS"]).negotiate(&env, BodyFacts::default()), missing, "not over plaintext");
    let tls = |ext: &str| {
        let mut c = ClientSession::new_tls(ClientConfig::new(Domain::parse("client.test").unwrap()));
        c.handle_input(format!("220 mx\r\n250-mx\r\n250 {ext}\r\n").as_bytes()).unwrap();
        let _ = (out(&mut c), events(&mut c));
        c
    };
    assert_eq!(tls("SIZE 10").negotiate(&env, BodyFacts::default()), missing, "the server must pass it on");
    let got = tls("REQUIRETLS").negotiate(&env, BodyFacts::default()).unwrap();
    assert!(got.params.requiretls);
    let mut c = tls("REQUIRETLS");
    c.send_envelope(&got, DataMode::Later).unwrap();
    assert_eq!(out(&mut c), "MAIL FROM:<a@b.test> REQUIRETLS\r\n");
}

fn lmtp() -> ClientSession {
    let mut config = ClientConfig::new(Domain::parse("client.test").unwrap());
    config.lmtp = true;
    ClientSession::new(config)
}

#[test]
fn lmtp_says_lhlo_and_has_no_helo_fallback() {
    let mut c = lmtp();
    c.handle_input(b"220 store LMTP\r\n").unwrap();
    assert_eq!(out(&mut c), "LHLO client.test\r\n");
    c.handle_input(b"500 what\r\n").unwrap();
    assert_eq!(out(&mut c), "", "no HELO in LMTP (RFC 2033 4.1)");
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Failed(CommandKind::Ehlo, r)] if r.code() == 500));
}

#[test]
fn lmtp_gets_one_reply_per_accepted_recipient_after_the_data() {
    let mut c = lmtp();
    c.handle_input(b"220 store LMTP\r\n250-store\r\n250-PIPELINING\r\n250 CHUNKING\r\n").unwrap();
    let _ = out(&mut c);
    assert_eq!(events(&mut c), [ClientEvent::Ready]);
    assert!(matches!(c.send_bdat(b"x", true), Err(ClientError::Misuse(_))), "no BDAT over LMTP");
    c.send_envelope(&env(&["<a@s>", "<b@s>", "<c@s>", "<d@s>"]), DataMode::Data).unwrap();
    let _ = out(&mut c);
    c.handle_input(b"250 ok\r\n250 ok\r\n550 no such user\r\n250 ok\r\n250 ok\r\n354 go\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Envelope(o)] if o.data_ready()));
    assert_eq!(c.data_replies(), 3, "a, b and d were accepted");
    c.send_data(b"Subject: s\r\n\r\nhi\r\n");
    c.finish_data();
    assert_eq!(out(&mut c), "Subject: s\r\n\r\nhi\r\n.\r\n");
    c.handle_input(b"250 2.0.0 a delivered\r\n452 4.2.2 b over quota\r\n").unwrap();
    let ev = events(&mut c);
    assert!(
        matches!(&ev[..], [ClientEvent::Message(a), ClientEvent::Message(b)] if a.code() == 250 && b.code() == 452),
        "{ev:?}"
    );
    c.handle_input(b"550 5.1.1 d gone\r\n").unwrap();
    assert!(matches!(&events(&mut c)[..], [ClientEvent::Message(d)] if d.code() == 550));
    // The next transaction starts from zero again.
    c.send_envelope(&env(&["<a@s>"]), DataMode::Data).unwrap();
    let _ = out(&mut c);
    c.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n").unwrap();
    let _ = events(&mut c);
    assert_eq!(c.data_replies(), 1);
}

#[test]
fn smtp_gets_one_reply_for_the_message_whatever_the_recipients() {
    let mut c = client();
    c.handle_input(b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n").unwrap();
    let _ = (out(&mut c), events(&mut c));
    c.send_envelope(&env(&["<a@s>", "<b@s>"]), DataMode::Data).unwrap();
    c.handle_input(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n").unwrap();
    let _ = events(&mut c);
    assert_eq!(c.data_replies(), 1);
}
