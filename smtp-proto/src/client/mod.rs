//! The sender's state machine.

mod session;

pub use session::{
    BodyFacts, ClientConfig, ClientError, ClientEvent, ClientSession, CommandKind, DataMode, EnvelopeOutcome,
};
