//! The receiver's state machine.

mod help;
mod session;

pub use crate::envelope::{Envelope, Recipient};
pub use session::{
    AbortReason, CloseReason, Event, ServerConfig, ServerSession, Timeout, DEFAULT_MAX_LINE, MAX_BUFFERED_INPUT,
};
