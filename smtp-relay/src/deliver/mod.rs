//! Final delivery: local Maildir and live terminals.

pub mod maildir;
pub mod terminal;
