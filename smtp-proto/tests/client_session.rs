//! The client session against scripted replies and, in memory, against the server session.

use smtp_proto::client::{
    ClientConfig, ClientError, ClientEvent, ClientSession, CommandKind, DataMode, MessageEnvelope,
};
use smtp_proto::server::{Event, ServerConfig, ServerSession};
use smtp_proto::{Domain, EnhancedCode, ForwardPath, MailParams, MailVerb, Reply, ReplyError, ReversePath};

fn client() -> ClientSession {
    ClientSession::new(ClientConfig::new(Domain::parse("client.test").unwrap()))
}

fn out(c: &mut ClientSession) -> String {
    c.poll_output().map(|b| String::from_utf8(b.to_vec()).unwrap()).unwrap_or_default()
}

fn events(c: &mut ClientSession) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn env(rcpts: &[&str]) -> MessageEnvelope {
    MessageEnvelope {
        verb: MailVerb::Mail,
        from: ReversePath::Path(smtp_proto::Path::parse("<a@b.test>").unwrap()),
        params: MailParams::default(),
        recipients: rcpts
            .iter()
            .map(|r| (ForwardPath::Path(smtp_proto::Path::parse(r).unwrap()), Default::default()))
            .collect(),
    }
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
