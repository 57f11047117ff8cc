//! smtp-relay
