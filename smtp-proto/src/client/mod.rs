//! The sender's state machine.

mod session;

pub use session::{ClientConfig, ClientError, ClientEvent, ClientSession, CommandKind, DataMode, EnvelopeOutcome};
