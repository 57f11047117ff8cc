//! Delivery status notifications (RFC 3464 format, RFC 3461 semantics).
//!
//! Notifications are sent with the null reverse-path `<>`, so a notification can never cause
//! another one (RFC 788: "no notification messages about problems with notification messages").

use std::time::SystemTime;

use smtp_proto::command::{Notify, Ret};
use smtp_proto::{EnhancedCode, ForwardPath, MailVerb, Reply, ReversePath};
use tokio::io::AsyncReadExt;

use crate::queue::{Queue, QueueError, QueuedMessage, RcptRecord, RcptStatus, Stored, StoredBody};

/// Most header octets returned in a headers-only notification.
const MAX_RETURNED_HEADERS: usize = 64 * 1024;

/// What happened to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Finally failed.
    Failed,
    /// Still trying (a delay warning).
    Delayed,
    /// Delivered to a local mailbox.
    Delivered,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
        }
    }
}

/// Whether the sender asked to hear about `action` for this recipient (RFC 3461 4.1). Without
/// NOTIFY, failures and delays are reported, successes are not.
///
/// Mail from a session that was neither trusted nor authenticated gets failure notices only:
/// its reverse-path is whatever the client claimed, so success and delay notices (which RFC
/// 3461 lets any sender ask for) would let anyone send a message to a victim through this
/// host (backscatter by request). NOTIFY is still accepted and passed on; it is not acted on.
pub fn wanted(trusted: bool, r: &RcptRecord, action: Action) -> bool {
    if !trusted && matches!(action, Action::Delivered | Action::Delayed) {
        return false;
    }
    match (r.params.notify, action) {
        (Some(Notify::Never), _) => false,
        (Some(Notify::On { failure, .. }), Action::Failed) => failure,
        (Some(Notify::On { delay, .. }), Action::Delayed) => delay,
        (Some(Notify::On { success, .. }), Action::Delivered) => success,
        (None, Action::Delivered) => false,
        (None, _) => true,
    }
}

/// The RFC 3463 status for a reply: its enhanced code, else one derived from its class
/// (RFC 3463 3.1).
pub fn status_code(r: &Reply) -> EnhancedCode {
    r.enhanced().unwrap_or_else(|| EnhancedCode::new((r.code() / 100) as u8, 0, 0))
}

/// A reply on one line: `550 5.1.1 text`, the lines of a multi-line reply joined.
pub fn one_line(r: &Reply) -> String {
    match r.enhanced() {
        Some(e) => format!("{} {e} {}", r.code(), r.lines().join(" ")),
        None => format!("{} {}", r.code(), r.lines().join(" ")),
    }
}

fn addr(p: &ForwardPath) -> String {
    match p {
        ForwardPath::Postmaster => "postmaster".into(),
        ForwardPath::Path(p) => p.mailbox.to_string(),
    }
}

fn date(t: SystemTime) -> String {
    smtp_proto::date::rfc5322_date(t)
}

/// A notification ready to queue: its envelope (from `<>`), the report up to the returned
/// content, which part of the original to return, and the closing boundary.
#[derive(Debug)]
pub struct Notice {
    /// From `<>` to the original reverse-path.
    pub envelope: QueuedMessage,
    /// Everything before the returned content.
    pub head: Vec<u8>,
    /// RET=FULL: the whole message; else its header section.
    pub full: bool,
    /// The closing boundary.
    pub tail: Vec<u8>,
}

/// Builds the notification for `msg` about the recipients at `indexes`, or `None` when the
/// reverse-path is null.
///
/// For untrusted mail ([`QueuedMessage::trusted`]) there is no notice to an address literal
/// (the client would choose the host this relay connects to), and RET=FULL returns headers
/// only (the content is not reflected to a claimed sender).
pub fn build(hostname: &str, msg: &QueuedMessage, indexes: &[usize], action: Action) -> Option<Notice> {
    let ReversePath::Path(return_path) = &msg.from else { return None };
    if !msg.trusted && !matches!(return_path.mailbox.domain(), smtp_proto::Domain::Name(_)) {
        return None;
    }
    let now = SystemTime::now();
    let boundary = format!("{}/{hostname}", msg.id);
    let subject = match action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        Action::Delivered => "Successful Mail Delivery Report",
    };
    let mut human = format!("This is the mail system at host {hostname}.\r\n\r\n");
    human.push_str(match action {
        Action::Failed => "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.\r\n\r\n",
        Action::Delayed => "Your message could not be delivered yet; the mail system will\r\nkeep trying. You do not need to send it again.\r\n\r\n",
        Action::Delivered => "Your message was successfully delivered to the recipients below.\r\n\r\n",
    });
    let mut status = format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(envid) = &msg.params.envid {
        // RFC 3464 2.2.1: the envelope id as given, in xtext; decoding it could put a line
        // break the client chose into the report.
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", envid.as_str()));
    }
    let arrival = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(msg.arrival);
    status.push_str(&format!("Arrival-Date: {}\r\n", date(arrival)));
    for &i in indexes {
        let r = &msg.recipients[i];
        let reply = match &r.status {
            RcptStatus::Failed(why) => Some(why),
            _ => r.last_error.as_ref(),
        };
        let code = match (action, reply) {
            (Action::Failed, Some(r)) => status_code(r),
            (Action::Failed, None) => EnhancedCode::new(5, 0, 0),
            // A delay is transient whatever the last reply was (RFC 3464 2.3.4).
            (Action::Delayed, Some(r)) => {
                let c = status_code(r);
                EnhancedCode::new(4, c.subject, c.detail)
            }
            (Action::Delayed, None) => EnhancedCode::new(4, 0, 0),
            (Action::Delivered, _) => EnhancedCode::new(2, 0, 0),
        };
        let reason = reply.map(one_line).unwrap_or_default();
        human.push_str(&format!(
            "<{}>: {}\r\n",
            addr(&r.path),
            if reason.is_empty() { action.as_str() } else { &reason }
        ));
        status.push_str("\r\n");
        if let Some(o) = &r.params.orcpt {
            // RFC 3464 2.3.2: the original recipient as given (xtext), never decoded.
            status.push_str(&format!("Original-Recipient: {}; {}\r\n", o.addr_type, o.addr.as_str()));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", addr(&r.path)));
        // RFC 3464 2.3.3: success at a next hop without DSN support is "relayed"; a local
        // delivery is "delivered".
        let act = match action {
            Action::Delivered if r.remote_mta.is_some() => "relayed",
            a => a.as_str(),
        };
        status.push_str(&format!("Action: {act}\r\nStatus: {code}\r\n"));
        if let Some(m) = &r.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {m}\r\n"));
        }
        if !reason.is_empty() {
            status.push_str(&format!("Diagnostic-Code: smtp; {reason}\r\n"));
        }
        status.push_str(&format!("Last-Attempt-Date: {}\r\n", date(now)));
    }
    // RFC 8689 5: the body of a REQUIRETLS message is never returned (the notice may travel
    // where the message could not), only its header.
    let full = msg.trusted && msg.params.ret == Some(Ret::Full) && !msg.params.requiretls;
    let ctype = if full { "message/rfc822" } else { "text/rfc822-headers" };
    let head = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\nTo: <{}>\r\nSubject: {subject}\r\nDate: {}\r\n\
Message-ID: <{}.dsn@{hostname}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n\
This is a MIME-encapsulated message.\r\n\r\n--{boundary}\r\nContent-Description: Notification\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n{human}\r\n--{boundary}\r\nContent-Description: Delivery report\r\n\
Content-Type: message/delivery-status\r\n\r\n{status}\r\n--{boundary}\r\nContent-Description: Undelivered message\r\n\
Content-Type: {ctype}\r\n\r\n",
        return_path.mailbox,
        date(now),
        msg.id,
    )
    .into_bytes();
    let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
    let mut rcpt = RcptRecord::new(ForwardPath::Path(return_path.clone()), Default::default());
    rcpt.params.notify = Some(Notify::Never);
    let envelope = QueuedMessage {
        id: String::new(),
        verb: MailVerb::Mail,
        from: ReversePath::Null,
        // A notice about a REQUIRETLS message is held to the same (RFC 8689 5).
        params: smtp_proto::MailParams { requiretls: msg.params.requiretls, ..Default::default() },
        arrival: QueuedMessage::now(),
        client: None,
        helo: None,
        recipients: vec![rcpt],
        delay_warned: false,
        trusted: false,
    };
    Some(Notice { envelope, head, full, tail })
}

/// Queues a notification, streaming the returned part of the original from `body`.
pub async fn enqueue(
    queue: &dyn Queue,
    notice: Notice,
    body: &StoredBody,
    signer: Option<(&std::sync::Arc<crate::msgauth::MessageAuth>, usize)>,
) -> Result<Stored, QueueError> {
    let Notice { envelope, head, full, tail } = notice;
    let mut w = queue.create(envelope).await?;
    // Signed when a key covers the notice's From domain and the notice fits in memory (`limit`).
    let returned = if full { body.len() } else { MAX_RETURNED_HEADERS as u64 };
    match signer.filter(|(_, limit)| returned <= *limit as u64) {
        Some((auth, _)) => {
            let mut all = Vec::new();
            compose(&head, full, &tail, body, &mut Out::Memory(&mut all)).await?;
            w.write(&auth.signed(all).await).await?;
        }
        None => compose(&head, full, &tail, body, &mut Out::Queue(&mut w)).await?,
    }
    w.commit().await
}

/// The notice's octets, in order, to `out`: its head, the returned content (the whole message
/// or its header section, ending in CRLF), its closing part.
async fn compose(head: &[u8], full: bool, tail: &[u8], body: &StoredBody, out: &mut Out<'_>) -> Result<(), QueueError> {
    out.put(head).await?;
    let mut last = [0u8; 2];
    let mut written = 0u64;
    if full {
        let mut r = body.reader().await?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.put(&buf[..n]).await?;
            written += n as u64;
            last = tail2(last, &buf[..n]);
        }
    } else {
        let head = body.head(MAX_RETURNED_HEADERS).await?;
        let end = memchr::memmem::find(&head, b"\r\n\r\n").map(|p| p + 2).unwrap_or(head.len());
        out.put(&head[..end]).await?;
        written = end as u64;
        last = tail2(last, &head[..end]);
    }
    if written > 0 && last != *b"\r\n" {
        out.put(b"\r\n").await?;
    }
    out.put(tail).await
}

/// Where a notice is composed: memory (to be signed) or the queue file.
enum Out<'a> {
    Memory(&'a mut Vec<u8>),
    Queue(&'a mut Box<dyn crate::queue::MessageWriter>),
}

impl Out<'_> {
    async fn put(&mut self, data: &[u8]) -> Result<(), QueueError> {
        match self {
            Out::Memory(v) => {
                v.extend_from_slice(data);
                Ok(())
            }
            Out::Queue(w) => w.write(data).await,
        }
    }
}

/// The last two octets seen, after `data`.
fn tail2(prev: [u8; 2], data: &[u8]) -> [u8; 2] {
    match data {
        [.., a, b] => [*a, *b],
        [b] => [prev[1], *b],
        [] => prev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::Path;

    fn msg(from: ReversePath) -> QueuedMessage {
        let mut r = RcptRecord::new(ForwardPath::Path(Path::parse("<bad@remote.test>").unwrap()), Default::default());
        r.status =
            RcptStatus::Failed(Reply::new(550, Some(EnhancedCode::new(5, 1, 1)), "<bad@remote.test>: no such user"));
        r.remote_mta = Some(crate::queue::RemoteHost { name: "mx.remote.test".into() });
        QueuedMessage {
            id: "Q1".into(),
            verb: MailVerb::Mail,
            from,
            params: Default::default(),
            arrival: 1_700_000_000,
            client: None,
            helo: None,
            recipients: vec![r],
            delay_warned: false,
            trusted: true,
        }
    }

    /// Queues the notice into a real spool and reads it back.
    async fn queued_text(m: &QueuedMessage, action: Action) -> String {
        let dir = tempfile::tempdir().unwrap();
        let q = crate::FsQueue::open(dir.path()).unwrap();
        let n = build("mx.here.test", m, &[0], action).unwrap();
        assert_eq!(n.envelope.from, ReversePath::Null);
        assert_eq!(n.envelope.recipients[0].path.to_string(), "<alice@here.test>");
        let original = StoredBody::Memory("Subject: hi\r\nFrom: a\r\n\r\nsecret body\r\n".into());
        let stored = enqueue(&q, n, &original, None).await.unwrap();
        let mut out = Vec::new();
        q.body(&stored.id).await.unwrap().reader().await.unwrap().read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn envelope_ids_stay_xtext_and_cannot_add_fields() {
        use smtp_proto::command::{Orcpt, XText};
        let mut m = msg(ReversePath::Path(Path::parse("<alice@here.test>").unwrap()));
        m.params.envid = Some(XText::from_encoded("abc+0D+0ASubject:+20x").unwrap());
        let orcpt = XText::from_encoded("x+0D+0AInjected:+20y").unwrap();
        m.recipients[0].params.orcpt = Some(Orcpt { addr_type: "rfc822".into(), addr: orcpt });
        let text = queued_text(&m, Action::Failed).await;
        assert!(text.contains("Original-Envelope-Id: abc+0D+0ASubject:+20x\r\n"), "{text}");
        assert!(text.contains("Original-Recipient: rfc822; x+0D+0AInjected:+20y\r\n"), "{text}");
        assert!(!text.contains("\r\nSubject: x") && !text.contains("\r\nInjected:"), "{text}");
    }

    #[tokio::test]
    async fn failure_report_has_the_rfc3464_fields() {
        let m = msg(ReversePath::Path(Path::parse("<alice@here.test>").unwrap()));
        let text = queued_text(&m, Action::Failed).await;
        for needle in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status",
            "Reporting-MTA: dns; mx.here.test",
            "Final-Recipient: rfc822; bad@remote.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.remote.test",
            "Diagnostic-Code: smtp; 550 5.1.1",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\nFrom: a\r\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("secret body"), "RET=HDRS by default");
        let mut full = m.clone();
        full.params.ret = Some(Ret::Full);
        let text = queued_text(&full, Action::Failed).await;
        assert!(
            text.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi\r\nFrom: a\r\n\r\nsecret body\r\n\r\n--"),
            "{text}"
        );
        // Not for a sender nobody vouched for: headers only.
        full.trusted = false;
        let text = queued_text(&full, Action::Failed).await;
        assert!(text.contains("Content-Type: text/rfc822-headers") && !text.contains("secret body"), "{text}");
    }

    #[test]
    fn no_notice_to_an_address_literal_for_untrusted_mail() {
        let mut m = msg(ReversePath::Path(Path::parse("<x@[127.0.0.1]>").unwrap()));
        assert!(build("h", &m, &[0], Action::Failed).is_some(), "trusted: RFC 3461 as is");
        m.trusted = false;
        assert!(build("h", &m, &[0], Action::Failed).is_none());
        m.from = ReversePath::Path(Path::parse("<x@name.test>").unwrap());
        assert!(build("h", &m, &[0], Action::Failed).is_some());
    }

    /// One `message/delivery-status` block per recipient, each with its own status and reason;
    /// the MIME parts split on the boundary.
    #[tokio::test]
    async fn several_recipients_each_get_their_fields() {
        let mut m = msg(ReversePath::Path(Path::parse("<alice@here.test>").unwrap()));
        let mut second = m.recipients[0].clone();
        second.path = ForwardPath::Path(Path::parse("<late@remote.test>").unwrap());
        second.status = RcptStatus::Failed(Reply::new(452, Some(EnhancedCode::new(4, 2, 2)), "mailbox full"));
        m.recipients.push(second);
        let dir = tempfile::tempdir().unwrap();
        let q = crate::FsQueue::open(dir.path()).unwrap();
        let n = build("mx.here.test", &m, &[0, 1], Action::Failed).unwrap();
        let original = StoredBody::Memory("Subject: hi\r\n\r\nbody\r\n".into());
        let stored = enqueue(&q, n, &original, None).await.unwrap();
        let mut out = Vec::new();
        q.body(&stored.id).await.unwrap().reader().await.unwrap().read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let boundary = format!("--{}/mx.here.test", m.id);
        let parts: Vec<&str> = text.split(&boundary).collect();
        assert_eq!(parts.len(), 5, "preamble, three parts, the end: {text}");
        assert!(parts[4].starts_with("--"), "closing boundary");
        let status = parts[2];
        assert!(status.contains("Content-Type: message/delivery-status"), "{status}");
        let blocks: Vec<&str> = status.split("\r\n\r\n").filter(|b| b.contains("Final-Recipient")).collect();
        assert_eq!(blocks.len(), 2, "{status}");
        assert!(blocks[0].contains("rfc822; bad@remote.test") && blocks[0].contains("Status: 5.1.1"), "{}", blocks[0]);
        assert!(blocks[1].contains("rfc822; late@remote.test") && blocks[1].contains("Status: 4.2.2"), "{}", blocks[1]);
        assert!(blocks[1].contains("Diagnostic-Code: smtp; 452 4.2.2 mailbox full"), "{}", blocks[1]);
        assert!(
            parts[3].contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n") && !parts[3].contains("body")
        );
    }

    #[test]
    fn never_about_null_sender_and_notify_honoured() {
        assert!(build("h", &msg(ReversePath::Null), &[0], Action::Failed).is_none());
        let mut r = msg(ReversePath::Null).recipients.remove(0);
        assert!(wanted(true, &r, Action::Failed) && !wanted(true, &r, Action::Delivered));
        r.params.notify = Some(Notify::Never);
        assert!(!wanted(true, &r, Action::Failed));
        r.params.notify = Some(Notify::On { success: true, failure: false, delay: false });
        assert!(wanted(true, &r, Action::Delivered) && !wanted(true, &r, Action::Failed));
        r.params.notify = Some(Notify::On { success: true, failure: true, delay: true });
        assert!(!wanted(false, &r, Action::Delivered) && !wanted(false, &r, Action::Delayed), "untrusted");
        assert!(wanted(false, &r, Action::Failed));
        assert_eq!(status_code(&Reply::new(451, Some(EnhancedCode::new(4, 3, 0)), "later")).to_string(), "4.3.0");
        assert_eq!(status_code(&Reply::new(550, None, "no")).to_string(), "5.0.0");
    }
}
