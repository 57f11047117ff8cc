//! The receiver's state machine.

mod help;
mod session;

pub use session::{
    AbortReason, CloseReason, Envelope, Event, Recipient, ServerConfig, ServerSession, Timeout, DEFAULT_MAX_LINE,
    MAX_BUFFERED_INPUT,
};
