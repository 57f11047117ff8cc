//! A DNS server for tests: answers A, MX and TXT queries over UDP on loopback (TTL 0: never cached) from a table the
//! test can change while it runs, so that the relay's real resolver (hickory, `--dns-server`)
//! is what gets tested.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// One answer in the table.
#[derive(Debug, Clone)]
pub enum Rr {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// A mail exchanger: preference and host.
    Mx(u16, String),
    /// A TXT record (one string).
    Txt(String),
    /// Answer SERVFAIL for this name, whatever is asked.
    ServFail,
}

/// The table: lower-case names without the trailing dot.
type Zone = Arc<Mutex<HashMap<String, Vec<Rr>>>>;

/// A running test DNS server; stops when dropped.
pub struct TestDns {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    zone: Zone,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl TestDns {
    /// Starts a server on 127.0.0.1 with an empty table.
    pub async fn start() -> TestDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind test DNS");
        let addr = socket.local_addr().unwrap();
        let zone: Zone = Arc::default();
        let table = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                if let Some(reply) = answer(&table, &buf[..n]) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        TestDns { addr, zone, _task: tokio_util::task::AbortOnDropHandle::new(task) }
    }

    /// Sets every record of `name` (replacing what was there).
    pub fn set(&self, name: &str, records: Vec<Rr>) {
        self.zone.lock().unwrap().insert(name.trim_end_matches('.').to_ascii_lowercase(), records);
    }
}

fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries().first()?.clone();
    let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let mut reply = Message::new();
    reply
        .set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(question.clone());
    let records = zone.lock().unwrap().get(&name).cloned();
    match records {
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Some(rrs) if rrs.iter().any(|r| matches!(r, Rr::ServFail)) => {
            reply.set_response_code(ResponseCode::ServFail);
        }
        Some(rrs) => {
            for rr in rrs {
                let data = match (&rr, question.query_type()) {
                    (Rr::A(ip), RecordType::A) => RData::A(A::from(*ip)),
                    (Rr::Mx(pref, host), RecordType::MX) => {
                        RData::MX(MX::new(*pref, Name::from_str(&format!("{host}.")).ok()?))
                    }
                    (Rr::Txt(t), RecordType::TXT) => RData::TXT(TXT::new(vec![t.clone()])),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(question.name().clone(), 0, data));
            }
        }
    }
    reply.to_vec().ok()
}
