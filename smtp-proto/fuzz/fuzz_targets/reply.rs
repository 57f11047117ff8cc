#![no_main]
//! Parse any bytes as replies with small bounds; whatever parses must round-trip.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_proto::ReplyParser;

fuzz_target!(|data: &[u8]| {
    let mut p = ReplyParser::new(512, 16);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(r)) = p.parse(&mut buf) {
        let mut again = BytesMut::from(&r.to_bytes()[..]);
        let r2 = ReplyParser::default().parse(&mut again).unwrap().unwrap();
        assert_eq!(r.code(), r2.code());
    }
    assert!(buf.len() <= data.len());
});
