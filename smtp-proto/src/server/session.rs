use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

use crate::address::{Domain, ForwardPath, ReversePath};
use crate::auth::{decode_b64, parse_plain, AuthMechanism, Credentials, Secret};
use crate::command::{Body, Command, MailParams, MailVerb, RcptParams, Text};
use crate::data::{DotUnstuffer, LineChecker, LineEndingPolicy, Unstuffed};
use crate::envelope::{Envelope, Recipient};
use crate::extension::{Capabilities, Limits};
use crate::reply::{codes, EnhancedCode, Reply};

/// Default longest command line, CRLF included. RFC 5321 4.5.3.1.4 sets 512 octets as the floor
/// a server must accept and lets extensions raise it; we accept 2048 so long ESMTP parameter
/// lists (ORCPT, ENVID, AUTH=) fit.
pub const DEFAULT_MAX_LINE: usize = 2048;

/// Unprocessed input above which [`ServerSession::wants_input`] says stop reading: a client that
/// pipelines without end while a decision is pending cannot grow the buffer further.
pub const MAX_BUFFERED_INPUT: usize = 64 * 1024;

/// What the session enforces and advertises.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name in the greeting, EHLO reply and HELP.
    pub hostname: String,
    /// Longest command line, CRLF included (RFC 5321 4.5.3.1.4).
    pub max_line_len: usize,
    /// Most recipients per transaction; more get `452 4.5.3` (RFC 5321 4.5.3.1.8: at least 100).
    pub max_recipients: usize,
    /// Most transactions per session (RFC 9422 MAILMAX); `None` for no limit.
    pub max_transactions: Option<u32>,
    /// Largest message in octets (RFC 1870 SIZE).
    pub max_message_size: u64,
    /// Errors after which the session answers `421 4.7.0` and closes.
    pub max_errors: u32,
    /// Bare CR / LF handling in DATA.
    pub line_endings: LineEndingPolicy,
    /// Offer PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// Offer 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// Offer SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// Offer CHUNKING / BDAT (RFC 3030).
    pub chunking: bool,
    /// Offer DSN (RFC 3461).
    pub dsn: bool,
    /// Offer STARTTLS (the driver must have a TLS configuration).
    pub starttls: bool,
    /// AUTH mechanisms to offer (RFC 4954); empty for no AUTH.
    pub auth_mechanisms: Vec<AuthMechanism>,
    /// Offer AUTH on an unencrypted connection (off by default: credentials would be in clear).
    pub auth_without_tls: bool,
    /// Accept and advertise RFC 788's SEND, SOML and SAML.
    pub rfc788_commands: bool,
    /// Answer VRFY (through the driver) rather than `502`.
    pub vrfy: bool,
    /// Answer EXPN (through the driver) rather than `502`.
    pub expn: bool,
    /// Offer REQUIRETLS (RFC 8689) on TLS sessions; the driver must then honour the flag.
    pub requiretls: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            max_line_len: DEFAULT_MAX_LINE,
            max_recipients: 100,
            max_transactions: None,
            max_message_size: 25 * 1024 * 1024,
            max_errors: 20,
            line_endings: LineEndingPolicy::Reject,
            pipelining: true,
            eight_bit_mime: true,
            smtputf8: true,
            chunking: true,
            dsn: true,
            starttls: false,
            auth_mechanisms: Vec::new(),
            auth_without_tls: false,
            rfc788_commands: true,
            vrfy: true,
            expn: true,
            requiretls: false,
        }
    }
}

/// Why a message body was refused after it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// Larger than the size limit (`552 5.3.4` was sent).
    TooBig,
    /// A bare CR or LF under [`LineEndingPolicy::Reject`] (`550 5.6.0` was sent).
    BareLineEnding,
    /// A NUL under [`LineEndingPolicy::Reject`] (`550 5.6.0` was sent).
    Nul,
    /// A BDAT chunk was refused; the transaction was reset.
    ChunkRefused,
}

/// Why the session asks the driver to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent QUIT (`221` was sent).
    Quit,
    /// Too many errors (`421 4.7.0` was sent).
    TooManyErrors,
    /// A BDAT chunk too large even to discard (`421` was sent).
    ChunkTooLarge,
    /// The driver answered a decision with `421` (RFC 5321 3.8: the service is closing the
    /// channel), e.g. after too many failed AUTH attempts.
    ServiceClosing,
}

/// Which RFC 5321 4.5.3.2 timeout applies while the driver waits for input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Waiting for a command (server timeout: 5 minutes).
    Command,
    /// Waiting for message data (data block: 3 minutes; server side often 10).
    Data,
}

/// What the session reports to its driver.
///
/// Events marked *decision* leave the session waiting until the driver calls
/// [`ServerSession::respond`] or [`ServerSession::accept`]; until then no further input is
/// processed (later pipelined commands stay buffered in order).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Event {
    /// *Decision*: HELO or EHLO. `accept` sends the greeting and, for EHLO, the extensions.
    Hello {
        /// EHLO rather than HELO.
        extended: bool,
        /// The name the client gave.
        domain: Domain,
    },
    /// *Decision*: MAIL, SEND, SOML or SAML passed the session's checks.
    Mail {
        /// Which verb.
        verb: MailVerb,
        /// The reverse-path.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// *Decision*: RCPT passed the session's checks.
    Rcpt {
        /// The forward-path.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParams,
    },
    /// The message body starts (after `354`, or with the first BDAT chunk).
    DataStart,
    /// Part of the message body, unstuffed.
    DataChunk(Bytes),
    /// *Decision*: the body is complete; read [`ServerSession::envelope`] and answer with the
    /// outcome (normally `250` with a queue id).
    DataEnd,
    /// The body was refused and the session already replied; drop the chunks.
    DataAborted(AbortReason),
    /// *Decision*: VRFY. `accept` sends `252`.
    Verify(String),
    /// *Decision*: EXPN. `accept` sends `252`.
    Expand(String),
    /// *Decision*: AUTH credentials to check. Answer `235` to accept; `accept` does so.
    Auth {
        /// The mechanism used.
        mechanism: AuthMechanism,
        /// What the client presented.
        credentials: Credentials,
    },
    /// RSET or a new HELO/EHLO cleared the transaction.
    Reset,
    /// Write all output, run the TLS handshake on the raw connection, then call
    /// [`ServerSession::tls_established`]. Input fed before that is discarded (CVE-2011-0411).
    StartTls,
    /// Write all output, then close the connection.
    Close(CloseReason),
}

/// The session's states; each holds what is known in it, and which command is allowed next is
/// decided by matching on (state, command) in [`ServerSession::command`]:
///
/// ```text
///  connect ──220──▶ Greeted ──HELO/EHLO──▶ Ready ──MAIL/SEND/SOML/SAML──▶ Mail ◀─┐
///                     ▲                      ▲ ▲                            │ RCPT┘
///                     │ tls_established      │ └──── RSET, HELO/EHLO ───────┤
///                  TlsPending ◀─STARTTLS─ Ready   Ending ◀─ end of data ─ Data ◀─┤ DATA (≥1 RCPT)
///                                          ▲         │      last chunk ◀─ Bdat ◀─┘ BDAT
///                                          └─decided─┘
///  QUIT, too many errors ─▶ Closed         AUTH ─▶ Auth ─▶ Ready
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for HELO/EHLO: at the start, and again after STARTTLS (RFC 3207 4.2).
    Greeted,
    /// The client said who it is; no transaction.
    Ready(Hello),
    /// MAIL accepted; accepted RCPTs join the envelope. `chunked` once a BDAT chunk was taken:
    /// then only BDAT may follow (RFC 3030 2).
    Mail { hello: Hello, envelope: Envelope, chunked: bool },
    /// DATA accepted: the body arrives, dot-stuffed.
    Data { hello: Hello, envelope: Envelope },
    /// A BDAT chunk is being read, accepted or not (its octets are never commands); `resume` is
    /// the state after it.
    Bdat { chunk: Chunk, resume: Box<State> },
    /// The body is complete; the end-of-data decision is pending.
    Ending { hello: Hello, envelope: Envelope },
    /// AUTH is waiting for the client's next response line.
    Auth { hello: Hello, step: AuthStep },
    /// STARTTLS was accepted: the driver runs the handshake.
    TlsPending,
    /// QUIT, an error limit or a 421: nothing more is read.
    Closed,
}

/// The client's HELO or EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hello {
    extended: bool,
    domain: Domain,
}

/// The BDAT chunk being read (RFC 3030).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    remaining: u64,
    last: bool,
    /// The reply when the chunk is refused; it is still read to its end.
    refuse: Option<Reply>,
}

impl State {
    fn hello(&self) -> Option<&Hello> {
        match self {
            State::Ready(hello)
            | State::Mail { hello, .. }
            | State::Data { hello, .. }
            | State::Ending { hello, .. }
            | State::Auth { hello, .. } => Some(hello),
            State::Bdat { resume, .. } => resume.hello(),
            State::Greeted | State::TlsPending | State::Closed => None,
        }
    }

    fn envelope(&self) -> Option<&Envelope> {
        match self {
            State::Mail { envelope, .. } | State::Data { envelope, .. } | State::Ending { envelope, .. } => {
                Some(envelope)
            }
            State::Bdat { resume, .. } => resume.envelope(),
            _ => None,
        }
    }

    /// The same state with any transaction dropped.
    fn without_transaction(self) -> State {
        match self {
            State::Mail { hello, .. } | State::Data { hello, .. } | State::Ending { hello, .. } => State::Ready(hello),
            State::Bdat { resume, .. } => resume.without_transaction(),
            other => other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthStep {
    Plain,
    LoginUser,
    LoginPassword(String),
}

#[derive(Debug)]
enum Pending {
    Hello { extended: bool, domain: Domain },
    Mail(Envelope),
    Rcpt(Recipient),
    DataEnd,
    Verify,
    Auth,
}

/// The sans-io SMTP receiver.
///
/// Call order: [`new`](Self::new) (the greeting is queued); then loop: write
/// [`poll_output`](Self::poll_output), handle every [`poll_event`](Self::poll_event) (answering
/// decisions), and when no event is left read from the peer (if [`wants_input`](Self::wants_input))
/// and [`handle_input`](Self::handle_input). Write output before waiting for input: replies to a
/// pipelined group then go out in one write (RFC 2920).
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    state: State,
    input: BytesMut,
    output: BytesMut,
    events: VecDeque<Event>,
    pending: Option<Pending>,
    tls: bool,
    authenticated: bool,
    transactions: u32,
    errors: u32,
    discarding_line: bool,
    unstuffer: DotUnstuffer,
    /// The same checks for BDAT chunks.
    chunk_checker: LineChecker,
    data_size: u64,
}

impl ServerSession {
    /// A new session; the `220` greeting is queued as output.
    pub fn new(config: ServerConfig) -> Self {
        let mut s = ServerSession {
            unstuffer: DotUnstuffer::new(config.line_endings),
            chunk_checker: LineChecker::new(config.line_endings),
            config,
            state: State::Greeted,
            input: BytesMut::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            pending: None,
            tls: false,
            authenticated: false,
            transactions: 0,
            errors: 0,
            discarding_line: false,
            data_size: 0,
        };
        let greeting = Reply::new(220, None, &format!("{} ESMTP Tern", s.config.hostname));
        greeting.write_to(&mut s.output);
        s
    }

    /// A session on an implicit-TLS connection (RFC 8314): TLS is already up.
    pub fn new_tls(config: ServerConfig) -> Self {
        let mut s = Self::new(config);
        s.tls = true;
        s
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Feeds bytes read from the peer. Ignored while a TLS handshake is due or after close.
    pub fn handle_input(&mut self, data: &[u8]) {
        if !matches!(self.state, State::TlsPending | State::Closed) {
            self.input.extend_from_slice(data);
        }
    }

    /// Whether the driver should read more: false after close or while much input is buffered.
    pub fn wants_input(&self) -> bool {
        !matches!(self.state, State::Closed | State::TlsPending)
            && self.input.len() < MAX_BUFFERED_INPUT.max(self.config.max_line_len)
    }

    /// Bytes to write to the peer, if any.
    pub fn poll_output(&mut self) -> Option<Bytes> {
        (!self.output.is_empty()).then(|| self.output.split().freeze())
    }

    /// The next event, or `None` when more input is needed or a decision is pending.
    pub fn poll_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.pending.is_some() || !self.step() {
                return None;
            }
        }
    }

    /// Whether a decision event is waiting for [`respond`](Self::respond).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The timeout that applies while waiting for input now.
    pub fn timeout(&self) -> Timeout {
        match self.state {
            State::Data { .. } | State::Bdat { .. } => Timeout::Data,
            _ => Timeout::Command,
        }
    }

    /// The current transaction, if MAIL was accepted.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.state.envelope()
    }

    /// The HELO/EHLO name, once accepted.
    pub fn helo(&self) -> Option<&Domain> {
        self.state.hello().map(|h| &h.domain)
    }

    /// Whether the connection is under TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether AUTH succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the session is closed (after QUIT or an error limit).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The TLS handshake after [`Event::StartTls`] succeeded: the session forgets everything
    /// learned before it (RFC 3207 4.2) and waits for a new EHLO.
    pub fn tls_established(&mut self) {
        self.input.clear();
        self.tls = true;
        self.authenticated = false;
        self.state = State::Greeted;
    }

    /// Answers the pending decision with `reply`. A positive (2xx) reply accepts; a `421`
    /// closes the session after it is written (RFC 5321 3.8).
    pub fn respond(&mut self, reply: Reply) {
        let Some(pending) = self.pending.take() else { return };
        if reply.code() == 421 {
            if matches!(pending, Pending::DataEnd) {
                self.end_transaction();
            }
            return self.close(reply, CloseReason::ServiceClosing);
        }
        let ok = reply.is_positive();
        match (pending, self.take_state()) {
            (Pending::Hello { extended, domain }, _) if ok => self.state = State::Ready(Hello { extended, domain }),
            (Pending::Mail(envelope), State::Ready(hello)) if ok => {
                self.transactions += 1;
                self.state = State::Mail { hello, envelope, chunked: false };
            }
            (Pending::Rcpt(r), State::Mail { hello, mut envelope, chunked }) => {
                if ok {
                    envelope.recipients.push(r);
                }
                self.state = State::Mail { hello, envelope, chunked };
            }
            (Pending::DataEnd, state) => {
                self.state = state;
                self.end_transaction();
            }
            (Pending::Auth, state) => {
                self.authenticated = reply.code() == 235;
                self.state = state;
            }
            (_, state) => self.state = state,
        }
        self.send(reply);
    }

    /// Answers the pending decision with the standard positive reply.
    pub fn accept(&mut self) {
        let reply = match &self.pending {
            None => return,
            Some(Pending::Hello { extended, domain }) => self.hello_reply(*extended, domain),
            Some(Pending::Mail(_)) => codes::sender_ok(),
            Some(Pending::Rcpt(_)) => codes::recipient_ok(),
            Some(Pending::DataEnd) => codes::message_accepted(),
            Some(Pending::Verify) => codes::cannot_verify(),
            Some(Pending::Auth) => codes::auth_ok(),
        };
        self.respond(reply);
    }

    /// The extensions the next EHLO reply advertises.
    pub fn capabilities(&self) -> Capabilities {
        let c = &self.config;
        let auth_ok = self.tls || c.auth_without_tls;
        Capabilities {
            pipelining: c.pipelining,
            size: Some(c.max_message_size),
            eight_bit_mime: c.eight_bit_mime,
            smtputf8: c.smtputf8,
            enhanced_status_codes: true,
            chunking: c.chunking,
            dsn: c.dsn,
            starttls: c.starttls && !self.tls,
            // RFC 8689 3: only where the client's own hop is protected.
            requiretls: c.requiretls && self.tls,
            auth: if auth_ok { c.auth_mechanisms.iter().map(|m| m.as_str().to_string()).collect() } else { Vec::new() },
            limits: Some(Limits { rcpt_max: u32::try_from(c.max_recipients).ok(), mail_max: c.max_transactions }),
            send: c.rfc788_commands,
            soml: c.rfc788_commands,
            saml: c.rfc788_commands,
            vrfy: c.vrfy,
            expn: c.expn,
            help: true,
            other: Vec::new(),
        }
    }

    fn hello_reply(&self, extended: bool, domain: &Domain) -> Reply {
        let greet = format!("{} greets {domain}", self.config.hostname);
        if extended {
            let mut lines = vec![greet];
            lines.extend(self.capabilities().to_lines());
            Reply::multiline(250, None, lines)
        } else {
            Reply::new(250, None, &greet)
        }
    }

    fn end_transaction(&mut self) {
        self.data_size = 0;
        self.state = self.take_state().without_transaction();
    }

    /// Moves the state out to change it; the caller puts the next one back.
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Closed)
    }

    /// Writes a reply; counts errors and closes with `421` past the limit.
    fn send(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
        if reply.code() >= 400 && reply.code() != 421 {
            self.errors += 1;
            if self.errors >= self.config.max_errors {
                self.close(codes::too_many_errors(), CloseReason::TooManyErrors);
            }
        }
    }

    fn close(&mut self, reply: Reply, reason: CloseReason) {
        reply.write_to(&mut self.output);
        self.state = State::Closed;
        self.input.clear();
        self.events.push_back(Event::Close(reason));
    }

    fn decide(&mut self, pending: Pending, event: Event) {
        self.pending = Some(pending);
        self.events.push_back(event);
    }

    /// Processes buffered input; false when nothing could be done.
    fn step(&mut self) -> bool {
        match self.state {
            State::Closed | State::TlsPending => false,
            State::Data { .. } => self.step_data(),
            State::Bdat { .. } => self.step_bdat(),
            _ => self.step_line(),
        }
    }

    /// Takes one line; RFC 5321 4.5.3.1.4 line limit, then discard to the next LF and recover.
    fn step_line(&mut self) -> bool {
        let Some(nl) = memchr(b'\n', &self.input) else {
            if self.input.len() > self.config.max_line_len {
                self.discarding_line = true;
                self.input.clear();
            }
            return false;
        };
        let line = self.input.split_to(nl + 1);
        if std::mem::take(&mut self.discarding_line) || line.len() > self.config.max_line_len {
            if let State::Auth { hello, .. } = &self.state {
                self.state = State::Ready(hello.clone());
            }
            self.send(codes::line_too_long());
            return true;
        }
        let mut l = &line[..nl];
        if let [head @ .., b'\r'] = l {
            l = head;
        }
        if let State::Auth { step, .. } = &self.state {
            let step = step.clone();
            self.auth_line(step, l);
        } else {
            match Command::parse(l) {
                Ok(cmd) => self.command(cmd),
                Err(e) => self.send(e.reply()),
            }
        }
        true
    }

    fn step_data(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let mut chunk = BytesMut::with_capacity(self.input.len());
        let consumed = match self.unstuffer.unstuff(&self.input, &mut chunk) {
            Unstuffed::NeedMore => None,
            Unstuffed::Done { consumed } => Some(consumed),
        };
        self.input.advance(consumed.unwrap_or(self.input.len()));
        self.data_size = self.data_size.saturating_add(chunk.len() as u64);
        let too_big = self.data_size > self.config.max_message_size;
        let reject = self.config.line_endings == LineEndingPolicy::Reject;
        let bare = reject && self.unstuffer.saw_bare_line_ending();
        let nul = reject && self.unstuffer.saw_nul();
        if !too_big && !bare && !nul && !chunk.is_empty() {
            self.events.push_back(Event::DataChunk(chunk.freeze()));
        }
        if consumed.is_some() {
            if too_big || bare || nul {
                self.end_transaction();
                let (reply, reason) = if too_big {
                    (codes::too_big(), AbortReason::TooBig)
                } else if bare {
                    (codes::bare_line_ending(), AbortReason::BareLineEnding)
                } else {
                    (codes::nul_in_data(), AbortReason::Nul)
                };
                self.events.push_back(Event::DataAborted(reason));
                self.send(reply);
            } else {
                self.state = match self.take_state() {
                    State::Data { hello, envelope } => State::Ending { hello, envelope },
                    other => other,
                };
                self.decide(Pending::DataEnd, Event::DataEnd);
            }
        }
        true
    }

    fn step_bdat(&mut self) -> bool {
        let State::Bdat { chunk, .. } = &mut self.state else { return false };
        if chunk.remaining > 0 {
            if self.input.is_empty() {
                return false;
            }
            let take = chunk.remaining.min(self.input.len() as u64) as usize;
            chunk.remaining -= take as u64;
            let bytes = self.input.split_to(take).freeze();
            if chunk.refuse.is_none() {
                self.data_size += take as u64;
                // RFC 3030 chunks carry no dot-stuffing, but the same bytes are refused or
                // normalized as in DATA; once refused, nothing more is passed on.
                let fixed = self.chunk_checker.check(&bytes);
                let reject = self.config.line_endings == LineEndingPolicy::Reject;
                let bad = reject && (self.chunk_checker.saw_bare_line_ending() || self.chunk_checker.saw_nul());
                if !bad {
                    self.events.push_back(Event::DataChunk(fixed.map(Bytes::from).unwrap_or(bytes)));
                }
            }
            return true;
        }
        let chunk = match self.take_state() {
            State::Bdat { chunk, resume } => {
                self.state = *resume;
                chunk
            }
            other => {
                self.state = other;
                return false;
            }
        };
        if let Some(reply) = chunk.refuse {
            if self.state.envelope().is_some() {
                self.events.push_back(Event::DataAborted(AbortReason::ChunkRefused));
            }
            self.end_transaction();
            self.send(reply);
        } else if chunk.last {
            let tail = self.chunk_checker.finish();
            let reject = self.config.line_endings == LineEndingPolicy::Reject;
            let (bare, nul) = (self.chunk_checker.saw_bare_line_ending(), self.chunk_checker.saw_nul());
            if reject && (bare || nul) {
                let (reply, reason) = if bare {
                    (codes::bare_line_ending(), AbortReason::BareLineEnding)
                } else {
                    (codes::nul_in_data(), AbortReason::Nul)
                };
                self.events.push_back(Event::DataAborted(reason));
                self.end_transaction();
                self.send(reply);
            } else {
                if let Some(t) = tail {
                    self.events.push_back(Event::DataChunk(Bytes::from_static(t)));
                }
                self.state = match self.take_state() {
                    State::Mail { hello, envelope, .. } => State::Ending { hello, envelope },
                    other => other,
                };
                self.decide(Pending::DataEnd, Event::DataEnd);
            }
        } else {
            let n = self.data_size;
            self.send(Reply::new(250, Some(EnhancedCode::new(2, 0, 0)), &format!("{n} octets received")));
        }
        true
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Hello { extended, domain } => {
                // RFC 5321 4.1.4: EHLO/HELO later in the session resets like RSET.
                if self.state.envelope().is_some() {
                    self.events.push_back(Event::Reset);
                }
                self.end_transaction();
                self.decide(Pending::Hello { extended, domain: domain.clone() }, Event::Hello { extended, domain });
            }
            Command::Mail { verb, from, params } => self.mail(verb, from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => match self.take_state() {
                State::Mail { hello, envelope, chunked: false } if !envelope.recipients.is_empty() => {
                    self.state = State::Data { hello, envelope };
                    self.send(codes::start_data());
                    self.unstuffer.reset();
                    self.data_size = 0;
                    self.events.push_back(Event::DataStart);
                }
                // A transaction whose recipients were all refused (RFC 5321 3.3: 554).
                state @ State::Mail { chunked: false, .. } => {
                    self.state = state;
                    self.send(codes::no_valid_recipients());
                }
                state => {
                    self.state = state;
                    self.send(codes::bad_sequence());
                }
            },
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.end_transaction();
                self.events.push_back(Event::Reset);
                self.send(codes::ok());
            }
            Command::Vrfy(s) => {
                if !self.config.vrfy {
                    return self.send(codes::not_implemented());
                }
                self.decide(Pending::Verify, Event::Verify(s.into_string()));
            }
            Command::Expn(s) => {
                if !self.config.expn {
                    return self.send(codes::not_implemented());
                }
                self.decide(Pending::Verify, Event::Expand(s.into_string()));
            }
            Command::Help(topic) => self.send(super::help::reply(topic.as_deref())),
            Command::Noop(_) => self.send(codes::ok()),
            Command::Quit => self.close(codes::closing(), CloseReason::Quit),
            Command::StartTls => {
                if !self.config.starttls {
                    return self.send(codes::not_implemented());
                }
                if self.tls {
                    return self.send(Reply::new(503, Some(EnhancedCode::new(5, 5, 1)), "TLS already active"));
                }
                if !matches!(self.state, State::Ready(_)) {
                    return self.send(codes::bad_sequence());
                }
                self.send(codes::ready_for_tls());
                // RFC 3207 4.2 / CVE-2011-0411: nothing pipelined behind STARTTLS survives.
                self.input.clear();
                self.state = State::TlsPending;
                self.events.push_back(Event::StartTls);
            }
            Command::Auth { mechanism, initial } => self.auth(mechanism.into_string(), initial.map(Text::into_string)),
        }
    }

    fn mail(&mut self, verb: MailVerb, from: ReversePath, params: MailParams) {
        let c = &self.config;
        let extended = match &self.state {
            State::Ready(hello) => hello.extended,
            State::Greeted => {
                return self.send(Reply::new(503, Some(EnhancedCode::new(5, 5, 1)), "Send HELO/EHLO first"))
            }
            _ => return self.send(Reply::new(503, Some(EnhancedCode::new(5, 5, 1)), "Nested MAIL command")),
        };
        if verb != MailVerb::Mail && !c.rfc788_commands {
            return self.send(codes::not_implemented());
        }
        if !extended && params != MailParams::default() {
            return self.send(codes::params_unrecognized());
        }
        let unrecognized = (params.smtputf8 && !c.smtputf8)
            || (params.body == Some(Body::EightBitMime) && !c.eight_bit_mime)
            || ((params.ret.is_some() || params.envid.is_some()) && !c.dsn)
            || (params.auth.is_some() && c.auth_mechanisms.is_empty())
            || (params.requiretls && !c.requiretls);
        if unrecognized {
            return self.send(codes::params_unrecognized());
        }
        if params.requiretls && !self.tls {
            // RFC 8689 4.1: REQUIRETLS is only accepted over TLS.
            return self.send(Reply::new(530, Some(EnhancedCode::new(5, 7, 10)), "REQUIRETLS needs a TLS session"));
        }
        if params.size.is_some_and(|n| n > c.max_message_size) {
            return self.send(codes::too_big());
        }
        if let ReversePath::Path(p) = &from {
            if p.is_utf8() && !params.smtputf8 {
                return self.send(Reply::new(
                    553,
                    Some(EnhancedCode::new(5, 6, 7)),
                    "Non-ASCII address needs SMTPUTF8",
                ));
            }
        }
        if c.max_transactions.is_some_and(|m| self.transactions >= m) {
            return self.send(codes::too_many_transactions());
        }
        let env = Envelope { verb, from: from.clone(), params: params.clone(), recipients: Vec::new() };
        self.decide(Pending::Mail(env), Event::Mail { verb, from, params });
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams) {
        let env = match &self.state {
            State::Mail { envelope, chunked: false, .. } => envelope,
            State::Mail { chunked: true, .. } => return self.send(codes::bad_sequence()),
            _ => return self.send(Reply::new(503, Some(EnhancedCode::new(5, 5, 1)), "Need MAIL before RCPT")),
        };
        if env.recipients.len() >= self.config.max_recipients {
            // RFC 5321 4.5.3.1.10: "the SMTP server MUST NOT treat" the client's excess
            // recipients as an error; the 452 does not count toward the error limit, so the
            // client keeps the recipients it has and goes on to DATA.
            codes::too_many_recipients().write_to(&mut self.output);
            return;
        }
        if (params.notify.is_some() || params.orcpt.is_some()) && !self.config.dsn {
            return self.send(codes::params_unrecognized());
        }
        if let ForwardPath::Path(p) = &to {
            if p.is_utf8() && !env.params.smtputf8 {
                return self.send(Reply::new(
                    553,
                    Some(EnhancedCode::new(5, 6, 7)),
                    "Non-ASCII address needs SMTPUTF8",
                ));
            }
        }
        let r = Recipient { path: to.clone(), params: params.clone() };
        self.decide(Pending::Rcpt(r), Event::Rcpt { to, params });
    }

    /// RFC 3030: a BDAT chunk is always read, even when refused, so its octets are never taken
    /// as commands. A chunk too large to discard in reasonable time ends the session.
    fn bdat(&mut self, size: u64, last: bool) {
        let max = self.config.max_message_size;
        let refuse = match self.state.envelope() {
            _ if !self.config.chunking => Some(codes::not_implemented()),
            None => Some(codes::bad_sequence()),
            Some(e) if e.recipients.is_empty() => Some(codes::no_valid_recipients()),
            Some(_) if self.data_size.saturating_add(size) > max => Some(codes::too_big()),
            Some(_) => None,
        };
        if refuse.is_some() && size > max.saturating_mul(2).max(1 << 20) {
            let r = Reply::new(421, Some(EnhancedCode::new(4, 3, 4)), "BDAT chunk too large to discard, closing");
            return self.close(r, CloseReason::ChunkTooLarge);
        }
        let mut resume = self.take_state();
        if let (None, State::Mail { chunked, .. }) = (&refuse, &mut resume) {
            if !*chunked {
                *chunked = true;
                self.data_size = 0;
                self.chunk_checker = LineChecker::new(self.config.line_endings);
                self.events.push_back(Event::DataStart);
            }
        }
        self.state = State::Bdat { chunk: Chunk { remaining: size, last, refuse }, resume: Box::new(resume) };
    }

    fn auth(&mut self, mechanism: String, initial: Option<String>) {
        let c = &self.config;
        let hello = match &self.state {
            State::Ready(hello) if hello.extended => hello.clone(),
            _ => return self.send(codes::bad_sequence()),
        };
        if self.authenticated {
            return self.send(Reply::new(503, Some(EnhancedCode::new(5, 5, 1)), "Already authenticated"));
        }
        if c.auth_mechanisms.is_empty() {
            return self.send(codes::not_implemented());
        }
        if !self.tls && !c.auth_without_tls {
            return self.send(codes::encryption_required());
        }
        let Some(mech) = AuthMechanism::from_name(&mechanism).filter(|m| c.auth_mechanisms.contains(m)) else {
            return self.send(Reply::new(504, Some(EnhancedCode::new(5, 5, 4)), "Unrecognized authentication type"));
        };
        match (mech, initial) {
            (AuthMechanism::Plain, Some(i)) => self.auth_line(AuthStep::Plain, i.as_bytes()),
            (AuthMechanism::Plain, None) => {
                self.state = State::Auth { hello, step: AuthStep::Plain };
                self.send(Reply::new(334, None, ""));
            }
            (AuthMechanism::Login, Some(u)) => self.auth_line(AuthStep::LoginUser, u.as_bytes()),
            (AuthMechanism::Login, None) => {
                self.state = State::Auth { hello, step: AuthStep::LoginUser };
                self.send(Reply::new(334, None, "VXNlcm5hbWU6"));
            }
        }
    }

    fn auth_line(&mut self, step: AuthStep, line: &[u8]) {
        let hello = match self.take_state() {
            State::Auth { hello, .. } | State::Ready(hello) => hello,
            other => {
                self.state = other;
                return;
            }
        };
        self.state = State::Ready(hello.clone());
        if line == b"*" {
            return self.send(codes::auth_cancelled());
        }
        let Some(decoded) = decode_b64(line) else {
            return self.send(Reply::new(501, Some(EnhancedCode::new(5, 5, 2)), "Invalid base64 data"));
        };
        let (mechanism, credentials) = match step {
            AuthStep::Plain => match parse_plain(&decoded) {
                Some(c) => (AuthMechanism::Plain, c),
                None => {
                    return self.send(Reply::new(501, Some(EnhancedCode::new(5, 5, 2)), "Malformed PLAIN response"))
                }
            },
            AuthStep::LoginUser => {
                let username = String::from_utf8_lossy(&decoded).into_owned();
                self.state = State::Auth { hello, step: AuthStep::LoginPassword(username) };
                return self.send(Reply::new(334, None, "UGFzc3dvcmQ6"));
            }
            AuthStep::LoginPassword(username) => (
                AuthMechanism::Login,
                Credentials {
                    authzid: String::new(),
                    username,
                    password: Secret::new(String::from_utf8_lossy(&decoded)),
                },
            ),
        };
        self.decide(Pending::Auth, Event::Auth { mechanism, credentials });
    }
}
