//! Delivery status notifications (RFC 3464 format, RFC 3461 semantics).
//!
//! Notifications are sent with the null reverse-path `<>`, so a notification can never cause
//! another one (RFC 788: "no notification messages about problems with notification messages").

use std::time::SystemTime;

use smtp_proto::command::{Notify, Ret};
use smtp_proto::{ForwardPath, MailVerb, ReversePath};

use crate::queue::{QueuedMessage, RcptRecord, RcptStatus};

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
pub fn wanted(r: &RcptRecord, action: Action) -> bool {
    match (r.params.notify, action) {
        (Some(Notify::Never), _) => false,
        (Some(Notify::On { failure, .. }), Action::Failed) => failure,
        (Some(Notify::On { delay, .. }), Action::Delayed) => delay,
        (Some(Notify::On { success, .. }), Action::Delivered) => success,
        (None, Action::Delivered) => false,
        (None, _) => true,
    }
}

/// The RFC 3463 status in a failure text: its enhanced code, else one derived from the reply
/// code, else `fallback`.
pub fn status_of(text: &str, fallback: &str) -> String {
    let mut words = text.split_whitespace();
    let code = words.next().filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()));
    if let (Some(code), Some(e)) = (code, words.next()) {
        let parts: Vec<&str> = e.split('.').collect();
        if parts.len() == 3
            && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && e.starts_with(&code[..1])
        {
            return e.to_string();
        }
    }
    match code.map(|c| &c[..1]) {
        Some("5") => "5.0.0".into(),
        Some("4") => "4.0.0".into(),
        _ => fallback.to_string(),
    }
}

fn addr(p: &ForwardPath) -> String {
    match p {
        ForwardPath::Postmaster => "postmaster".into(),
        ForwardPath::Path(p) => p.mailbox.to_string(),
    }
}

fn date(t: SystemTime) -> String {
    smtp_server::transaction::rfc5322_date(t)
}

/// Builds the notification for `msg` about the recipients at `indexes`, or `None` when the
/// reverse-path is null. Returns the notification's envelope (from `<>`) and its data.
pub fn build(
    hostname: &str,
    msg: &QueuedMessage,
    body: &[u8],
    indexes: &[usize],
    action: Action,
) -> Option<(QueuedMessage, Vec<u8>)> {
    let ReversePath::Path(return_path) = &msg.from else { return None };
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
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", String::from_utf8_lossy(&envid.decode())));
    }
    let arrival = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(msg.arrival);
    status.push_str(&format!("Arrival-Date: {}\r\n", date(arrival)));
    for &i in indexes {
        let r = &msg.recipients[i];
        let reason = match &r.status {
            RcptStatus::Failed(why) => why.clone(),
            _ => r.last_error.clone().unwrap_or_default(),
        };
        let code = match action {
            Action::Failed => status_of(&reason, "5.0.0"),
            Action::Delayed => status_of(&reason, "4.0.0").replacen('5', "4", 1),
            Action::Delivered => "2.0.0".into(),
        };
        human.push_str(&format!(
            "<{}>: {}\r\n",
            addr(&r.path),
            if reason.is_empty() { action.as_str() } else { &reason }
        ));
        status.push_str("\r\n");
        if let Some(o) = &r.params.orcpt {
            status.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                o.addr_type,
                String::from_utf8_lossy(&o.addr.decode())
            ));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", addr(&r.path)));
        status.push_str(&format!("Action: {}\r\nStatus: {code}\r\n", action.as_str()));
        if let Some(m) = &r.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {m}\r\n"));
        }
        if !reason.is_empty() {
            let kind = if reason.as_bytes().first().is_some_and(u8::is_ascii_digit) { "smtp" } else { "x-local" };
            status.push_str(&format!("Diagnostic-Code: {kind}; {reason}\r\n"));
        }
        status.push_str(&format!("Last-Attempt-Date: {}\r\n", date(now)));
    }
    let header_end = memchr::memmem::find(body, b"\r\n\r\n").map(|p| p + 2).unwrap_or(body.len());
    let full = msg.params.ret == Some(Ret::Full);
    let (ctype, original) = if full { ("message/rfc822", body) } else { ("text/rfc822-headers", &body[..header_end]) };
    let mut out = format!(
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
    out.extend_from_slice(original);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut rcpt = RcptRecord::new(ForwardPath::Path(return_path.clone()), Default::default());
    rcpt.params.notify = Some(Notify::Never);
    let envelope = QueuedMessage {
        id: String::new(),
        verb: MailVerb::Mail,
        from: ReversePath::Null,
        params: Default::default(),
        arrival: QueuedMessage::now(),
        client: None,
        helo: None,
        recipients: vec![rcpt],
        delay_warned: false,
    };
    Some((envelope, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::Path;

    fn msg(from: ReversePath) -> QueuedMessage {
        let mut r = RcptRecord::new(ForwardPath::Path(Path::parse("<bad@remote.test>").unwrap()), Default::default());
        r.status = RcptStatus::Failed("550 5.1.1 <bad@remote.test>: no such user".into());
        r.remote_mta = Some("mx.remote.test".into());
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
        }
    }

    #[test]
    fn failure_report_has_the_rfc3464_fields() {
        let m = msg(ReversePath::Path(Path::parse("<alice@here.test>").unwrap()));
        let (env, data) =
            build("mx.here.test", &m, b"Subject: hi\r\nFrom: a\r\n\r\nsecret body\r\n", &[0], Action::Failed).unwrap();
        assert_eq!(env.from, ReversePath::Null);
        assert_eq!(env.recipients[0].path.to_string(), "<alice@here.test>");
        let text = String::from_utf8(data).unwrap();
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
    }

    #[test]
    fn never_about_null_sender_and_notify_honoured() {
        assert!(build("h", &msg(ReversePath::Null), b"", &[0], Action::Failed).is_none());
        let mut r = msg(ReversePath::Null).recipients.remove(0);
        assert!(wanted(&r, Action::Failed) && !wanted(&r, Action::Delivered));
        r.params.notify = Some(Notify::Never);
        assert!(!wanted(&r, Action::Failed));
        r.params.notify = Some(Notify::On { success: true, failure: false, delay: false });
        assert!(wanted(&r, Action::Delivered) && !wanted(&r, Action::Failed));
        assert_eq!(status_of("451 4.3.0 later", "4.0.0"), "4.3.0");
        assert_eq!(status_of("550 no", "x"), "5.0.0");
        assert_eq!(status_of("connection refused", "4.4.1"), "4.4.1");
    }
}
