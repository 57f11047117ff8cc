#![no_main]
//! Parse any line; whatever parses must write back to a line that parses to the same command.
use libfuzzer_sys::fuzz_target;
use smtp_proto::Command;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = Command::parse(data) {
        let bytes = cmd.to_bytes();
        let again = Command::parse(&bytes[..bytes.len() - 2]).expect("written command must parse");
        assert_eq!(cmd, again);
    }
});
