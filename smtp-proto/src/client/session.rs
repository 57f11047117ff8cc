use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::address::Domain;
use crate::auth::{encode_b64, plain_response, AuthMechanism, Secret};
use crate::command::{Command, Text};
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
}

impl ClientConfig {
    /// Defaults with the given EHLO name.
    pub fn new(ehlo_domain: Domain) -> Self {
        ClientConfig { ehlo_domain, max_reply_line: MAX_REPLY_LINE, max_reply_lines: MAX_REPLY_LINES }
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
}

impl EnvelopeOutcome {
    /// Indexes of the recipients the server accepted.
    pub fn accepted(&self) -> impl Iterator<Item = usize> + '_ {
        self.recipients.iter().enumerate().filter(|(_, r)| r.is_positive()).map(|(i, _)| i)
    }

    /// Whether the body should be sent now (DATA got `354`).
    pub fn data_ready(&self) -> bool {
        self.data.as_ref().is_some_and(|r| r.code() == 354)
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
    Bdat { last: bool },
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
    outcome: Option<(Option<Reply>, Vec<Reply>, usize, bool)>,
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
            outcome: None,
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
                Some(last) => self.caps.pipelining && pipelinable(e) && (pipelinable(last) || *last == Expect::DataEnd),
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
        let cmd = Command::Hello { extended: true, domain: self.config.ehlo_domain.clone() };
        cmd.write_to_buf(&mut self.output);
        self.expect.push_back(Expect::Ehlo);
    }

    fn dispatch(&mut self, expect: Expect, reply: Reply) {
        // RFC 5321 3.8: 421 to any command means the server is closing the connection.
        let closing = (reply.code() == 421).then(|| reply.clone());
        match expect {
            Expect::Greeting => {
                if reply.code() != 220 {
                    return self.fail(CommandKind::Greeting, reply);
                }
                self.send_ehlo();
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    self.caps = Capabilities::from_ehlo(&reply);
                    self.extended = true;
                    self.state = State::Ready;
                    self.events.push_back(ClientEvent::Ready);
                } else if matches!(reply.code(), 500 | 502) {
                    // RFC 5321 3.2: an RFC 788/821 server; fall back to HELO.
                    let cmd = Command::Hello { extended: false, domain: self.config.ehlo_domain.clone() };
                    cmd.write_to_buf(&mut self.output);
                    self.expect.push_back(Expect::Helo);
                } else {
                    self.fail(CommandKind::Ehlo, reply);
                }
            }
            Expect::Helo => {
                if !reply.is_positive() {
                    return self.fail(CommandKind::Helo, reply);
                }
                self.caps = Capabilities::default();
                self.extended = false;
                self.state = State::Ready;
                self.events.push_back(ClientEvent::Ready);
            }
            Expect::StartTls => {
                if reply.code() != 220 {
                    return self.fail(CommandKind::StartTls, reply);
                }
                self.state = State::TlsPending;
                self.events.push_back(ClientEvent::StartTls);
            }
            Expect::AuthLoginUser(user, pass) => {
                if reply.code() != 334 {
                    return self.events.push_back(ClientEvent::Auth(reply));
                }
                self.output.extend_from_slice(format!("{}\r\n", encode_b64(user.expose().as_bytes())).as_bytes());
                self.expect.push_back(Expect::AuthLoginPass(pass));
            }
            Expect::AuthLoginPass(pass) => {
                if reply.code() != 334 {
                    return self.events.push_back(ClientEvent::Auth(reply));
                }
                self.output.extend_from_slice(format!("{}\r\n", encode_b64(pass.expose().as_bytes())).as_bytes());
                self.expect.push_back(Expect::AuthFinal);
            }
            Expect::AuthFinal => self.events.push_back(ClientEvent::Auth(reply)),
            Expect::Mail => {
                let failed = !reply.is_positive();
                if let Some(o) = self.outcome.as_mut() {
                    o.0 = Some(reply);
                }
                if failed && !self.caps.pipelining {
                    self.queued.retain(|(_, e)| !matches!(e, Expect::Rcpt | Expect::Data));
                    self.finish_envelope();
                }
            }
            Expect::Rcpt => {
                let Some(o) = self.outcome.as_mut() else { return };
                o.1.push(reply);
                if o.1.len() == o.2 {
                    let none_ok = !o.1.iter().any(Reply::is_positive);
                    if !o.3 || (none_ok && !self.caps.pipelining) {
                        self.queued.retain(|(_, e)| !matches!(e, Expect::Data));
                        self.finish_envelope();
                    }
                }
            }
            Expect::Data => {
                let ok = reply.code() == 354;
                self.finish_envelope_with(Some(reply));
                if ok {
                    self.stuffer = DotStuffer::new();
                }
            }
            Expect::DataEnd => self.events.push_back(ClientEvent::Message(reply)),
            Expect::Bdat { last } => {
                if !reply.is_positive() && self.bdat_failure.is_none() {
                    self.bdat_failure = Some(reply.clone());
                }
                if last {
                    let r = self.bdat_failure.take().unwrap_or(reply);
                    self.events.push_back(ClientEvent::Message(r));
                }
            }
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

    fn finish_envelope(&mut self) {
        self.finish_envelope_with(None)
    }

    fn finish_envelope_with(&mut self, data: Option<Reply>) {
        if let Some((mail, recipients, _, _)) = self.outcome.take() {
            let mail = mail.unwrap_or_else(|| Reply::new(451, None, "no reply to MAIL"));
            self.events.push_back(ClientEvent::Envelope(EnvelopeOutcome { mail, recipients, data }));
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

    /// Sends MAIL and RCPTs (and DATA with [`DataMode::Data`]); the answers arrive as one
    /// [`ClientEvent::Envelope`].
    pub fn send_envelope(&mut self, env: &Envelope, mode: DataMode) -> Result<(), ClientError> {
        self.ready()?;
        if env.recipients.is_empty() {
            return Err(ClientError::Misuse("no recipients"));
        }
        if self.outcome.is_some() {
            return Err(ClientError::Misuse("an envelope is already in flight"));
        }
        self.outcome = Some((None, Vec::new(), env.recipients.len(), mode == DataMode::Data));
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
        self.outcome = Some((Some(Reply::new(250, None, "")), Vec::new(), 0, true));
        self.write(&Command::Data, Expect::Data);
        self.flush_queue();
        Ok(())
    }

    /// Writes part of the body, dot-stuffed with CRLF line ends (after DATA got `354`).
    pub fn send_data(&mut self, chunk: &[u8]) {
        self.stuffer.stuff(chunk, &mut self.output);
    }

    /// Ends the body with CRLF "." CRLF; the answer arrives as [`ClientEvent::Message`].
    pub fn finish_data(&mut self) {
        self.stuffer.finish(&mut self.output);
        self.expect.push_back(Expect::DataEnd);
    }

    /// Sends one BDAT chunk (RFC 3030) as is; with `last`, the message's final reply arrives as
    /// [`ClientEvent::Message`] (the first failed chunk's reply, if any failed).
    pub fn send_bdat(&mut self, chunk: &[u8], last: bool) -> Result<(), ClientError> {
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
