use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::address::{Domain, ForwardPath, ReversePath};
use crate::auth::{encode_b64, plain_response, AuthMechanism, Secret};
use crate::command::{Body as BodyParam, Command, Text};
use crate::data::DotStuffer;
use crate::envelope::Envelope;
use crate::error::ReplyError;
use crate::extension::Capabilities;
use crate::reply::{Reply, ReplyParser, MAX_REPLY_LINE, MAX_REPLY_LINES};

/// How the sender identifies itself and bounds what it reads.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The name sent in EHLO / HELO.
    pub ehlo_domain: Domain,
    /// Longest reply line accepted.
    pub max_reply_line: usize,
    /// Most lines in one reply.
    pub max_reply_lines: usize,
    /// Speak LMTP (RFC 2033) instead of SMTP: LHLO instead of EHLO (no HELO fallback), one
    /// reply per accepted recipient after the end of data, no BDAT.
    pub lmtp: bool,
}

impl ClientConfig {
    /// Defaults with the given EHLO name.
    pub fn new(ehlo_domain: Domain) -> Self {
        ClientConfig { ehlo_domain, max_reply_line: MAX_REPLY_LINE, max_reply_lines: MAX_REPLY_LINES, lmtp: false }
    }
}

/// How the body will be sent after the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMode {
    /// DATA, pipelined with the envelope when the server offers PIPELINING (RFC 2920): the body
    /// must follow if the server answers `354`.
    Data,
    /// No DATA yet: the caller looks at the recipients' replies first, then calls
    /// [`ClientSession::start_data`] or sends BDAT chunks.
    Later,
}

/// Which command a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// The `220` greeting.
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO.
    Helo,
    /// STARTTLS.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL / SEND / SOML / SAML.
    Mail,
    /// RCPT.
    Rcpt,
    /// DATA.
    Data,
    /// End of data, or the last BDAT.
    DataEnd,
    /// A BDAT chunk that is not the last.
    Bdat,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// VRFY.
    Vrfy,
    /// EXPN.
    Expn,
    /// HELP.
    Help,
    /// QUIT.
    Quit,
}

/// The server's answers to one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeOutcome {
    /// The reply to MAIL.
    pub mail: Reply,
    /// One reply per recipient, in order; empty when MAIL failed without pipelining.
    pub recipients: Vec<Reply>,
    /// The reply to DATA, when it was sent.
    pub data: Option<Reply>,
    /// The server answered DATA with `354` though it accepted no recipient: the session ended
    /// the empty message itself (RFC 2920 3.1) and there is no body to send.
    pub ended_empty: bool,
}

impl EnvelopeOutcome {
    /// Indexes of the recipients the server accepted.
    pub fn accepted(&self) -> impl Iterator<Item = usize> + '_ {
        self.recipients.iter().enumerate().filter(|(_, r)| r.is_positive()).map(|(i, _)| i)
    }

    /// Whether the body should be sent now (DATA got `354` for accepted recipients).
    pub fn data_ready(&self) -> bool {
        self.data.as_ref().is_some_and(|r| r.code() == 354) && !self.ended_empty
    }
}

/// What the session reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ClientEvent {
    /// Greeting and EHLO (or HELO) succeeded; [`ClientSession::capabilities`] is valid.
    Ready,
    /// The server accepted STARTTLS: write all output, run the handshake, then call
    /// [`ClientSession::tls_established`].
    StartTls,
    /// The envelope's replies are all in.
    Envelope(EnvelopeOutcome),
    /// The final reply to the message (end of data, or BDAT LAST).
    Message(Reply),
    /// The reply to AUTH: `235` or a failure.
    Auth(Reply),
    /// The reply to another command (RSET, NOOP, VRFY, EXPN, HELP, QUIT).
    Reply(CommandKind, Reply),
    /// The session cannot go on: the greeting, EHLO/HELO or STARTTLS failed, or the server
    /// sent `421`. Close the connection.
    Failed(CommandKind, Reply),
}

/// Errors that end a client session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server sent something that is not a reply.
    #[error("malformed reply: {0}")]
    Malformed(#[from] ReplyError),
    /// The server sent a reply nobody asked for.
    #[error("unexpected reply: {0}")]
    Unexpected(Reply),
    /// The caller asked for something the session cannot do now.
    #[error("{0}")]
    Misuse(&'static str),
    /// The message needs an extension the server did not offer (SMTPUTF8, 8BITMIME).
    #[error("the server does not offer {0}, which this message needs")]
    ExtensionMissing(&'static str),
    /// The message is larger than the server's SIZE (RFC 1870).
    #[error("message of {size} octets exceeds the server's limit of {max}")]
    TooLarge {
        /// The message size.
        size: u64,
        /// The server's limit.
        max: u64,
    },
}

/// What the sender knows about a body before sending it, for [`ClientSession::negotiate`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyFacts {
    /// Its size in octets, when known in advance (a stream's is not).
    pub size: Option<u64>,
    /// Whether it holds octets above 127.
    pub eight_bit: bool,
}

/// The replies gathered for the envelope in flight.
#[derive(Debug)]
struct Pending {
    /// The reply to MAIL (already known when only DATA was sent, after [`DataMode::Later`]).
    mail: Option<Reply>,
    /// One reply per RCPT so far.
    recipients: Vec<Reply>,
    /// How many RCPTs were sent.
    expected: usize,
    /// Whether DATA was sent behind the RCPTs.
    with_data: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AuthFinal,
    AuthLoginUser(Secret, Secret),
    AuthLoginPass(Secret),
    Mail,
    Rcpt,
    Data,
    DataEnd,
    /// The end of an empty message the session ended itself: its reply is not reported.
    EmptyEnd,
    Bdat {
        last: bool,
    },
    Other(CommandKind),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Ready,
    TlsPending,
    Closed,
}

/// The sans-io SMTP sender.
///
/// Call order: [`new`](Self::new); then loop: write [`poll_output`](Self::poll_output), read
/// and [`handle_input`](Self::handle_input), drain [`poll_event`](Self::poll_event). After
/// [`ClientEvent::Ready`], send messages with [`send_envelope`](Self::send_envelope), then the
/// body with [`send_data`](Self::send_data) + [`finish_data`](Self::finish_data) or
/// [`send_bdat`](Self::send_bdat). Commands are pipelined when the server offers PIPELINING
/// (RFC 2920), else written one at a time; every reply is checked.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    parser: ReplyParser,
    input: BytesMut,
    output: BytesMut,
    queued: VecDeque<(Vec<u8>, Expect)>,
    expect: VecDeque<Expect>,
    events: VecDeque<ClientEvent>,
    caps: Capabilities,
    extended: bool,
    tls: bool,
    pending: Option<Pending>,
    /// Whether a recipient of the current transaction was accepted.
    accepted_any: bool,
    /// How many (LMTP answers each after the end of data).
    accepted: usize,
    /// Transactions started on this connection (RFC 9422 MAILMAX).
    transactions: u32,
    bdat_failure: Option<Reply>,
    stuffer: DotStuffer,
}

impl ClientSession {
    /// A session waiting for the server's greeting.
    pub fn new(config: ClientConfig) -> Self {
        let parser = ReplyParser::new(config.max_reply_line, config.max_reply_lines);
        ClientSession {
            config,
            state: State::Connecting,
            parser,
            input: BytesMut::new(),
            output: BytesMut::new(),
            queued: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            events: VecDeque::new(),
            caps: Capabilities::default(),
            extended: false,
            tls: false,
            pending: None,
            accepted_any: false,
            accepted: 0,
            transactions: 0,
            bdat_failure: None,
            stuffer: DotStuffer::new(),
        }
    }

    /// A session on an implicit-TLS connection (RFC 8314).
    pub fn new_tls(config: ClientConfig) -> Self {
        let mut s = Self::new(config);
        s.tls = true;
        s
    }

    /// What the server advertised in EHLO (empty after HELO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the server answered EHLO (not just HELO).
    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the session is ready for a new command (no reply outstanding).
    pub fn is_idle(&self) -> bool {
        self.state == State::Ready && self.expect.is_empty() && self.queued.is_empty()
    }

    /// Bytes to write to the server.
    pub fn poll_output(&mut self) -> Option<Bytes> {
        (!self.output.is_empty()).then(|| self.output.split().freeze())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Feeds bytes read from the server.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if self.state == State::TlsPending || self.state == State::Closed {
            return Ok(());
        }
        self.input.extend_from_slice(data);
        while let Some(reply) = self.parser.parse(&mut self.input)? {
            let Some(expect) = self.expect.pop_front() else {
                if reply.code() == 421 {
                    self.state = State::Closed;
                    self.events.push_back(ClientEvent::Failed(CommandKind::Greeting, reply));
                    return Ok(());
                }
                return Err(ClientError::Unexpected(reply));
            };
            self.dispatch(expect, reply);
            if self.state == State::TlsPending || self.state == State::Closed {
                // RFC 3207 4.2: nothing the server sent before the handshake is kept.
                self.input.clear();
                return Ok(());
            }
            self.flush_queue();
        }
        Ok(())
    }

    fn fail(&mut self, kind: CommandKind, reply: Reply) {
        self.state = State::Closed;
        self.queued.clear();
        self.expect.clear();
        self.events.push_back(ClientEvent::Failed(kind, reply));
    }

    fn write(&mut self, cmd: &Command, expect: Expect) {
        self.queued.push_back((cmd.to_bytes(), expect));
    }

    /// Moves queued commands to the output: with PIPELINING, MAIL, RCPT, DATA, BDAT and RSET go
    /// behind unanswered commands, but nothing goes behind DATA before its `354` or behind a
    /// command that changes the session (STARTTLS, EHLO, AUTH), RFC 2920 3.1; without
    /// PIPELINING, one command at a time.
    fn flush_queue(&mut self) {
        while let Some((_, e)) = self.queued.front() {
            let pipelinable = |e: &Expect| {
                matches!(
                    e,
                    Expect::Mail | Expect::Rcpt | Expect::Data | Expect::Bdat { .. } | Expect::Other(CommandKind::Rset)
                )
            };
            // A command that ends a group is always the last one outstanding: nothing is written
            // behind it until it is answered.
            let behind_ok = match self.expect.back() {
                None => true,
                Some(Expect::Data) => false,
                Some(last) => {
                    self.caps.pipelining
                        && pipelinable(e)
                        && (pipelinable(last) || matches!(last, Expect::DataEnd | Expect::EmptyEnd))
                }
            };
            if !behind_ok {
                return;
            }
            let (bytes, e) = self.queued.pop_front().expect("front exists");
            self.output.extend_from_slice(&bytes);
            self.expect.push_back(e);
        }
    }

    fn send_ehlo(&mut self) {
        if self.config.lmtp {
            self.output.extend_from_slice(format!("LHLO {}\r\n", self.config.ehlo_domain).as_bytes());
        } else {
            let cmd = Command::Hello { extended: true, domain: self.config.ehlo_domain.clone() };
            cmd.write_to_buf(&mut self.output);
        }
        self.expect.push_back(Expect::Ehlo);
    }

    fn dispatch(&mut self, expect: Expect, reply: Reply) {
        // RFC 5321 3.8: 421 to any command means the server is closing the connection.
        let closing = (reply.code() == 421).then(|| reply.clone());
        match expect {
            Expect::Greeting => self.on_greeting(reply),
            Expect::Ehlo => self.on_ehlo(reply),
            Expect::Helo => self.on_helo(reply),
            Expect::StartTls => self.on_starttls(reply),
            Expect::AuthLoginUser(user, pass) => self.on_login_prompt(reply, user, Some(pass)),
            Expect::AuthLoginPass(pass) => self.on_login_prompt(reply, pass, None),
            Expect::AuthFinal => self.events.push_back(ClientEvent::Auth(reply)),
            Expect::Mail => self.on_mail(reply),
            Expect::Rcpt => self.on_rcpt(reply),
            Expect::Data => self.on_data(reply),
            Expect::DataEnd => self.events.push_back(ClientEvent::Message(reply)),
            Expect::EmptyEnd => {}
            Expect::Bdat { last } => self.on_bdat(reply, last),
            Expect::Other(kind) => {
                if kind == CommandKind::Quit {
                    self.state = State::Closed;
                }
                self.events.push_back(ClientEvent::Reply(kind, reply));
            }
        }
        if let Some(reply) = closing.filter(|_| self.state != State::Closed) {
            self.state = State::Closed;
            self.events.push_back(ClientEvent::Failed(CommandKind::Noop, reply));
        }
    }

    fn on_greeting(&mut self, reply: Reply) {
        if reply.code() != 220 {
            return self.fail(CommandKind::Greeting, reply);
        }
        self.send_ehlo();
    }

    fn on_ehlo(&mut self, reply: Reply) {
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            self.extended = true;
            self.state = State::Ready;
            self.events.push_back(ClientEvent::Ready);
        } else if matches!(reply.code(), 500 | 502) && !self.config.lmtp {
            // RFC 5321 3.2: an RFC 788/821 server; fall back to HELO (LMTP has none).
            let cmd = Command::Hello { extended: false, domain: self.config.ehlo_domain.clone() };
            cmd.write_to_buf(&mut self.output);
            self.expect.push_back(Expect::Helo);
        } else {
            self.fail(CommandKind::Ehlo, reply);
        }
    }

    fn on_helo(&mut self, reply: Reply) {
        if !reply.is_positive() {
            return self.fail(CommandKind::Helo, reply);
        }
        self.caps = Capabilities::default();
        self.extended = false;
        self.state = State::Ready;
        self.events.push_back(ClientEvent::Ready);
    }

    fn on_starttls(&mut self, reply: Reply) {
        if reply.code() != 220 {
            return self.fail(CommandKind::StartTls, reply);
        }
        self.state = State::TlsPending;
        self.events.push_back(ClientEvent::StartTls);
    }

    /// AUTH LOGIN (draft-murchison-sasl-login): answers a `334` prompt with `answer`, then
    /// expects the password prompt (`next`) or the final reply.
    fn on_login_prompt(&mut self, reply: Reply, answer: Secret, next: Option<Secret>) {
        if reply.code() != 334 {
            return self.events.push_back(ClientEvent::Auth(reply));
        }
        self.output.extend_from_slice(format!("{}\r\n", encode_b64(answer.expose().as_bytes())).as_bytes());
        self.expect.push_back(next.map_or(Expect::AuthFinal, Expect::AuthLoginPass));
    }

    fn on_mail(&mut self, reply: Reply) {
        let failed = !reply.is_positive();
        if let Some(p) = self.pending.as_mut() {
            p.mail = Some(reply);
        }
        // Without pipelining the RCPTs wait for MAIL's reply: after a refusal they are not sent
        // (RFC 5321 3.3). With pipelining they are on the wire and their replies still come.
        if failed && !self.caps.pipelining {
            self.queued.retain(|(_, e)| !matches!(e, Expect::Rcpt | Expect::Data));
            self.finish_envelope();
        }
    }

    fn on_rcpt(&mut self, reply: Reply) {
        self.accepted_any |= reply.is_positive();
        self.accepted += usize::from(reply.is_positive());
        let Some(p) = self.pending.as_mut() else { return };
        p.recipients.push(reply);
        if p.recipients.len() < p.expected {
            return;
        }
        // All recipients answered. DATA not requested, or not yet sent because every recipient
        // was refused without pipelining: the envelope is complete now. A pipelined DATA is
        // already on the wire and its reply completes it.
        if !p.with_data || (!self.accepted_any && !self.caps.pipelining) {
            self.queued.retain(|(_, e)| !matches!(e, Expect::Data));
            self.finish_envelope();
        }
    }

    fn on_data(&mut self, reply: Reply) {
        let ready = reply.code() == 354;
        // RFC 2920 3.1: a server may answer 354 after refusing every pipelined recipient; the
        // client then ends the empty message at once and ignores the reply to it.
        let empty = ready && !self.accepted_any;
        if empty {
            self.output.extend_from_slice(b".\r\n");
            self.expect.push_back(Expect::EmptyEnd);
        }
        self.finish_envelope_with(Some(reply), empty);
        if ready {
            self.stuffer = DotStuffer::new();
        }
    }

    /// RFC 3030 3.3: a refused chunk does not stop the pipeline; the message's outcome is the
    /// first refusal, reported with the last chunk's reply.
    fn on_bdat(&mut self, reply: Reply, last: bool) {
        if !reply.is_positive() && self.bdat_failure.is_none() {
            self.bdat_failure = Some(reply.clone());
        }
        if last {
            let r = self.bdat_failure.take().unwrap_or(reply);
            self.events.push_back(ClientEvent::Message(r));
        }
    }

    fn finish_envelope(&mut self) {
        self.finish_envelope_with(None, false)
    }

    fn finish_envelope_with(&mut self, data: Option<Reply>, ended_empty: bool) {
        if let Some(Pending { mail, recipients, .. }) = self.pending.take() {
            let mail = mail.unwrap_or_else(|| Reply::new(451, None, "no reply to MAIL"));
            self.events.push_back(ClientEvent::Envelope(EnvelopeOutcome { mail, recipients, data, ended_empty }));
        }
    }

    fn ready(&self) -> Result<(), ClientError> {
        if self.state != State::Ready {
            return Err(ClientError::Misuse("session is not ready"));
        }
        Ok(())
    }

    /// Sends STARTTLS (RFC 3207). Fails if the server did not offer it or TLS is up.
    pub fn start_tls(&mut self) -> Result<(), ClientError> {
        self.ready()?;
        if self.tls || !self.caps.starttls {
            return Err(ClientError::Misuse("STARTTLS not offered"));
        }
        self.write(&Command::StartTls, Expect::StartTls);
        self.flush_queue();
        Ok(())
    }

    /// The TLS handshake succeeded: forget what was learned in clear and send EHLO again
    /// (RFC 3207 4.2).
    pub fn tls_established(&mut self) {
        self.input.clear();
        self.tls = true;
        self.caps = Capabilities::default();
        self.state = State::Connecting;
        self.send_ehlo();
    }

    /// Sends AUTH with `mechanism`. Refused unless the server offered it.
    pub fn auth(&mut self, mechanism: AuthMechanism, username: &str, password: &Secret) -> Result<(), ClientError> {
        self.ready()?;
        if !self.caps.auth.iter().any(|m| m == mechanism.as_str()) {
            return Err(ClientError::Misuse("AUTH mechanism not offered"));
        }
        if username.contains('\0') || password.expose().contains('\0') {
            return Err(ClientError::Misuse("credentials contain NUL"));
        }
        let text = |s: &str| Text::new(s, "AUTH argument").map_err(|_| ClientError::Misuse("bad AUTH argument"));
        match mechanism {
            AuthMechanism::Plain => {
                let initial = Some(text(&plain_response(username, password))?);
                let cmd = Command::Auth { mechanism: text(mechanism.as_str())?, initial };
                self.write(&cmd, Expect::AuthFinal);
            }
            AuthMechanism::Login => {
                let cmd = Command::Auth { mechanism: text(mechanism.as_str())?, initial: None };
                self.write(&cmd, Expect::AuthLoginUser(Secret::new(username), password.clone()));
            }
        }
        self.flush_queue();
        Ok(())
    }

    /// The envelope to send for a message to this server: its MAIL and RCPT parameters fitted
    /// to what the server offers, or why the message cannot go to it.
    ///
    /// - SMTPUTF8 (RFC 6531 3.4): UTF-8 in an address needs it; then `SMTPUTF8` is sent.
    /// - 8BITMIME (RFC 6152 3): an 8-bit body is declared `BODY=8BITMIME`, which needs it.
    /// - SIZE (RFC 1870 6): a known size is declared, and a size over the server's limit fails
    ///   here, before anything is sent.
    /// - DSN (RFC 3461 4): without it, RET, ENVID, NOTIFY and ORCPT are dropped (a relay then
    ///   reports `relayed`, RFC 3461 4.3).
    /// - A server that answered HELO, not EHLO (RFC 788, RFC 5321 3.2), gets no parameters.
    /// - REQUIRETLS (RFC 8689 4.2.1) needs TLS and the server's REQUIRETLS, else it fails.
    pub fn negotiate(&self, env: &Envelope, body: BodyFacts) -> Result<Envelope, ClientError> {
        let caps = &self.caps;
        let mut env = env.clone();
        // RFC 8689 4.2.1: a REQUIRETLS message goes only over TLS to a server that offers it
        // (and so passes the flag on); never stripped like the other parameters.
        if env.params.requiretls && !(self.tls && caps.requiretls) {
            return Err(ClientError::ExtensionMissing("REQUIRETLS"));
        }
        let utf8 = matches!(&env.from, ReversePath::Path(p) if p.is_utf8())
            || env.recipients.iter().any(|r| matches!(&r.path, ForwardPath::Path(p) if p.is_utf8()));
        if utf8 || env.params.smtputf8 {
            if !caps.smtputf8 {
                return Err(ClientError::ExtensionMissing("SMTPUTF8"));
            }
            env.params.smtputf8 = true;
        }
        if body.eight_bit && env.params.body.is_none() {
            env.params.body = Some(BodyParam::EightBitMime);
        }
        if env.params.body == Some(BodyParam::EightBitMime) && !caps.eight_bit_mime {
            return Err(ClientError::ExtensionMissing("8BITMIME"));
        }
        match (body.size, caps.size) {
            (Some(size), Some(max)) if max > 0 && size > max => return Err(ClientError::TooLarge { size, max }),
            (size, Some(_)) => env.params.size = size,
            (_, None) => env.params.size = None,
        }
        if !caps.dsn {
            env.params.ret = None;
            env.params.envid = None;
            for r in &mut env.recipients {
                r.params = Default::default();
            }
        }
        if !self.extended {
            env.params = Default::default();
        }
        Ok(env)
    }

    /// Most recipients in one transaction: the server's RCPTMAX (RFC 9422 4.2), else no limit.
    /// More recipients go in further transactions, each with its own replies.
    pub fn recipients_per_transaction(&self) -> usize {
        self.caps.limits.and_then(|l| l.rcpt_max).map_or(usize::MAX, |m| m.max(1) as usize)
    }

    /// Whether a new transaction may start now: nothing outstanding and the server's MAILMAX
    /// (RFC 9422 4.1) not reached on this connection.
    pub fn may_start_transaction(&self) -> bool {
        self.is_idle() && self.pending.is_none() && !self.mail_max_reached()
    }

    fn mail_max_reached(&self) -> bool {
        self.caps.limits.and_then(|l| l.mail_max).is_some_and(|m| self.transactions >= m)
    }

    /// Sends MAIL and RCPTs (and DATA with [`DataMode::Data`]); the answers arrive as one
    /// [`ClientEvent::Envelope`].
    pub fn send_envelope(&mut self, env: &Envelope, mode: DataMode) -> Result<(), ClientError> {
        self.ready()?;
        if env.recipients.is_empty() {
            return Err(ClientError::Misuse("no recipients"));
        }
        if self.pending.is_some() {
            return Err(ClientError::Misuse("an envelope is already in flight"));
        }
        if self.mail_max_reached() {
            return Err(ClientError::Misuse("the server's MAILMAX is reached; use a new connection"));
        }
        self.transactions += 1;
        self.accepted_any = false;
        self.accepted = 0;
        let with_data = mode == DataMode::Data;
        self.pending = Some(Pending { mail: None, recipients: Vec::new(), expected: env.recipients.len(), with_data });
        self.write(&Command::Mail { verb: env.verb, from: env.from.clone(), params: env.params.clone() }, Expect::Mail);
        for r in &env.recipients {
            self.write(&Command::Rcpt { to: r.path.clone(), params: r.params.clone() }, Expect::Rcpt);
        }
        if mode == DataMode::Data {
            self.write(&Command::Data, Expect::Data);
        }
        self.flush_queue();
        Ok(())
    }

    /// Sends DATA after an envelope sent with [`DataMode::Later`]; the answer arrives as a
    /// [`ClientEvent::Envelope`] whose `data` is set.
    pub fn start_data(&mut self) -> Result<(), ClientError> {
        self.ready()?;
        // MAIL and the RCPTs were answered with the envelope: only DATA's reply is awaited.
        let mail = Some(Reply::new(250, None, ""));
        self.pending = Some(Pending { mail, recipients: Vec::new(), expected: 0, with_data: true });
        self.write(&Command::Data, Expect::Data);
        self.flush_queue();
        Ok(())
    }

    /// Writes part of the body, dot-stuffed with CRLF line ends (after DATA got `354`).
    pub fn send_data(&mut self, chunk: &[u8]) {
        self.stuffer.stuff(chunk, &mut self.output);
    }

    /// Ends the body with CRLF "." CRLF; the answer arrives as [`ClientEvent::Message`] (with
    /// LMTP, one for each accepted recipient, in the order of the RCPTs).
    pub fn finish_data(&mut self) {
        self.stuffer.finish(&mut self.output);
        // RFC 2033 4.2: LMTP answers once for each recipient that was accepted, in order.
        for _ in 0..self.data_replies() {
            self.expect.push_back(Expect::DataEnd);
        }
    }

    /// How many replies the end of data gets: one, or with LMTP one per accepted recipient.
    pub fn data_replies(&self) -> usize {
        if self.config.lmtp {
            self.accepted.max(1)
        } else {
            1
        }
    }

    /// Sends one BDAT chunk (RFC 3030) as is; with `last`, the message's final reply arrives as
    /// [`ClientEvent::Message`] (the first failed chunk's reply, if any failed).
    pub fn send_bdat(&mut self, chunk: &[u8], last: bool) -> Result<(), ClientError> {
        if self.config.lmtp {
            return Err(ClientError::Misuse("BDAT is not used over LMTP"));
        }
        if !self.caps.chunking {
            return Err(ClientError::Misuse("CHUNKING not offered"));
        }
        Command::Bdat { size: chunk.len() as u64, last }.write_to_buf(&mut self.output);
        self.output.extend_from_slice(chunk);
        self.expect.push_back(Expect::Bdat { last });
        Ok(())
    }

    /// Sends a simple command: RSET, NOOP, VRFY, EXPN, HELP or QUIT.
    pub fn command(&mut self, cmd: Command) -> Result<(), ClientError> {
        let kind = match &cmd {
            Command::Rset => CommandKind::Rset,
            Command::Noop(_) => CommandKind::Noop,
            Command::Vrfy(_) => CommandKind::Vrfy,
            Command::Expn(_) => CommandKind::Expn,
            Command::Help(_) => CommandKind::Help,
            Command::Quit => CommandKind::Quit,
            _ => return Err(ClientError::Misuse("use the dedicated method for this command")),
        };
        if self.state == State::Closed {
            return Err(ClientError::Misuse("session closed"));
        }
        self.write(&cmd, Expect::Other(kind));
        self.flush_queue();
        Ok(())
    }
}

impl Command {
    /// Appends the command line with CRLF to a `BytesMut`.
    pub fn write_to_buf(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.to_bytes());
    }
}
