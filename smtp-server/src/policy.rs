//! The questions the server asks its policy service, and a default that accepts all.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use smtp_proto::auth::{AuthMechanism, Credentials};
use smtp_proto::command::{MailParams, RcptParams};
use smtp_proto::{codes, ForwardPath, MailVerb, Reply, ReversePath};

use crate::transaction::SessionInfo;

/// A question for the policy service.
#[derive(Debug, Clone)]
pub struct PolicyRequest {
    /// The session asking.
    pub session: SessionInfo,
    /// What is asked.
    pub kind: PolicyKind,
}

/// What the policy service is asked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PolicyKind {
    /// MAIL, SEND, SOML or SAML.
    Mail {
        /// The verb.
        verb: MailVerb,
        /// The reverse-path.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// RCPT.
    Rcpt {
        /// The verb that started the transaction.
        verb: MailVerb,
        /// The transaction's reverse-path.
        from: ReversePath,
        /// The forward-path.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParams,
    },
    /// VRFY: `Accept` answers `252`; answer `250` with the mailbox, or `550`/`553`.
    Verify(String),
    /// EXPN: `Accept` answers `252`; answer a multi-line `250` with the members.
    Expand(String),
    /// AUTH credentials: `Accept` answers `235`.
    Auth {
        /// The SASL mechanism.
        mechanism: AuthMechanism,
        /// What the client presented.
        credentials: Credentials,
    },
}

/// The policy service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept with the standard reply.
    Accept,
    /// Answer with this reply (a 2xx reply also accepts).
    Respond(Reply),
}

/// A policy that accepts every sender and recipient, answers VRFY/EXPN with `252`, and refuses
/// every AUTH (it knows no users). Suits a mail catcher; not an Internet-facing relay.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl tower::Service<PolicyRequest> for AcceptAll {
    type Response = Decision;
    type Error = Infallible;
    type Future = Ready<Result<Decision, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: PolicyRequest) -> Self::Future {
        ready(Ok(match req.kind {
            PolicyKind::Auth { .. } => Decision::Respond(codes::auth_failed()),
            _ => Decision::Accept,
        }))
    }
}
