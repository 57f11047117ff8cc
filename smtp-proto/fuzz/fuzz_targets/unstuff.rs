#![no_main]
//! Unstuff any bytes whole and split at a fuzzer-chosen point: same output, same end; and the
//! end is always right after CRLF "." CRLF.
use libfuzzer_sys::fuzz_target;
use smtp_proto::data::Unstuffed;
use smtp_proto::{DotUnstuffer, LineEndingPolicy};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let input = &data[1..];
    let split = split.min(input.len());
    for policy in [LineEndingPolicy::Reject, LineEndingPolicy::Normalize] {
        let mut a = DotUnstuffer::new(policy);
        let mut out_a = Vec::new();
        let end_a = match a.unstuff(input, &mut out_a) {
            Unstuffed::Done { consumed } => Some(consumed),
            Unstuffed::NeedMore => None,
        };
        let mut b = DotUnstuffer::new(policy);
        let mut out_b = Vec::new();
        let end_b = match b.unstuff(&input[..split], &mut out_b) {
            Unstuffed::Done { consumed } => Some(consumed),
            Unstuffed::NeedMore => match b.unstuff(&input[split..], &mut out_b) {
                Unstuffed::Done { consumed } => Some(split + consumed),
                Unstuffed::NeedMore => None,
            },
        };
        assert_eq!(end_a, end_b);
        assert_eq!(out_a, out_b);
        if let Some(end) = end_a {
            assert!(input[..end].ends_with(b".\r\n"));
            assert!(end == 3 || input[..end].ends_with(b"\r\n.\r\n"));
        }
    }
});
