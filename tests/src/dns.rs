//! A DNS server for tests: answers A, MX, TXT and TLSA queries over UDP on loopback (TTL 0:
//! never cached) from a table the test can change while it runs, so that the relay's real
//! resolver (hickory, `--dns-server`) is what gets tested. Started with [`TestDns::signed`],
//! it is authoritative for one DNSSEC-signed zone (ECDSA P-256, RFC 6605): every answer
//! carries RRSIGs, negative answers an NSEC record for the name asked (a "black lie" proving
//! the type absent), and names marked bogus get broken signatures.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use std::path::{Path, PathBuf};

use hickory_proto::dnssec::crypto::EcdsaSigningKey;
use hickory_proto::dnssec::rdata::{DNSSECRData, DNSKEY, NSEC, RRSIG, SIG};
use hickory_proto::dnssec::{Algorithm, SigningKey, TBS};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, SOA, TLSA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// One answer in the table.
#[derive(Debug, Clone)]
pub enum Rr {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// A mail exchanger: preference and host.
    Mx(u16, String),
    /// A TXT record (one string).
    Txt(String),
    /// A TLSA record: usage, selector, matching type, data.
    Tlsa(u8, u8, u8, Vec<u8>),
    /// In a signed zone: the signatures of this name's answers are broken (bogus).
    Bogus,
    /// Answer SERVFAIL for this name, whatever is asked.
    ServFail,
    /// The time to live of this name's answers in seconds (0 without it: nothing is cached).
    Ttl(u32),
}

/// The table: lower-case names without the trailing dot.
type Zone = Arc<Mutex<HashMap<String, Vec<Rr>>>>;

/// The signing side of a signed zone.
struct Signer {
    apex: Name,
    key: EcdsaSigningKey,
    dnskey: DNSKEY,
    key_tag: u16,
}

impl Signer {
    fn new(apex: &str) -> Signer {
        let alg = Algorithm::ECDSAP256SHA256;
        let pkcs8 = EcdsaSigningKey::generate_pkcs8(alg).expect("generate zone key");
        let key = EcdsaSigningKey::from_pkcs8(&pkcs8, alg).expect("zone key");
        let dnskey = DNSKEY::from_key(&key.to_public_key().expect("public key"));
        let key_tag = dnskey.calculate_key_tag().expect("key tag");
        Signer { apex: Name::from_str(&format!("{}.", apex.trim_end_matches('.'))).unwrap(), key, dnskey, key_tag }
    }

    /// The RRSIG over `records` (one RRset).
    fn sign(&self, records: &[Record], bogus: bool) -> Option<Record> {
        let first = records.first()?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as u32;
        let (expiration, inception) = (now + 3600, now - 3600);
        let sig = SIG::new(
            first.record_type(),
            Algorithm::ECDSAP256SHA256,
            first.name().num_labels(),
            first.ttl(),
            expiration,
            inception,
            self.key_tag,
            self.apex.clone(),
            Vec::new(),
        );
        let tbs = TBS::from_sig(first.name(), DNSClass::IN, &sig, records.iter()).ok()?;
        let mut signature = self.key.sign(&tbs).ok()?;
        if bogus {
            signature[10] ^= 0xff;
        }
        let rrsig = RRSIG::new(
            sig.type_covered(),
            sig.algorithm(),
            sig.num_labels(),
            sig.original_ttl(),
            expiration,
            inception,
            sig.key_tag(),
            sig.signer_name().clone(),
            signature,
        );
        Some(Record::from_rdata(first.name().clone(), first.ttl(), RData::DNSSEC(DNSSECRData::RRSIG(rrsig))))
    }
}

/// A running test DNS server; stops when dropped.
pub struct TestDns {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    zone: Zone,
    signer: Option<Arc<Signer>>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl TestDns {
    /// Starts a server on 127.0.0.1 with an empty table.
    pub async fn start() -> TestDns {
        Self::launch(None).await
    }

    /// Starts a server authoritative for the DNSSEC-signed zone `apex` (every name in the
    /// table is taken to be in it).
    pub async fn signed(apex: &str) -> TestDns {
        Self::launch(Some(Arc::new(Signer::new(apex)))).await
    }

    /// The zone's key as a trust-anchor file (a DNSKEY line) in `dir`.
    pub fn trust_anchor(&self, dir: &Path) -> PathBuf {
        let s = self.signer.as_ref().expect("a signed zone");
        let path = dir.join("trust-anchor.key");
        std::fs::write(&path, format!("{} 3600 IN DNSKEY {}\n", s.apex, s.dnskey)).unwrap();
        path
    }

    async fn launch(signer: Option<Arc<Signer>>) -> TestDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind test DNS");
        let addr = socket.local_addr().unwrap();
        let zone: Zone = Arc::default();
        let (table, keys) = (zone.clone(), signer.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                if let Some(reply) = answer(&table, keys.as_deref(), &buf[..n]) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        TestDns { addr, zone, signer, _task: tokio_util::task::AbortOnDropHandle::new(task) }
    }

    /// Sets every record of `name` (replacing what was there).
    pub fn set(&self, name: &str, records: Vec<Rr>) {
        self.zone.lock().unwrap().insert(name.trim_end_matches('.').to_ascii_lowercase(), records);
    }
}

fn answer(zone: &Zone, signer: Option<&Signer>, query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries().first()?.clone();
    let qname = question.name().clone();
    let name = qname.to_ascii().trim_end_matches('.').to_ascii_lowercase();
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
    let bogus = records.as_ref().is_some_and(|r| r.iter().any(|r| matches!(r, Rr::Bogus)));
    let mut answers = Vec::new();
    match (&records, signer) {
        (Some(rrs), _) if rrs.iter().any(|r| matches!(r, Rr::ServFail)) => {
            reply.set_response_code(ResponseCode::ServFail);
            return reply.to_vec().ok();
        }
        (None, None) => {
            reply.set_response_code(ResponseCode::NXDomain);
            return reply.to_vec().ok();
        }
        _ => {}
    }
    if let Some(s) = signer.filter(|s| qname == s.apex && question.query_type() == RecordType::DNSKEY) {
        answers.push(RData::DNSSEC(DNSSECRData::DNSKEY(s.dnskey.clone())));
    }
    for rr in records.iter().flatten() {
        let data = match (rr, question.query_type()) {
            (Rr::A(ip), RecordType::A) => RData::A(A::from(*ip)),
            (Rr::Mx(pref, host), RecordType::MX) => {
                RData::MX(MX::new(*pref, Name::from_str(&format!("{host}.")).ok()?))
            }
            // One string holds at most 255 octets (RFC 1035 3.3.14); longer text is split.
            (Rr::Txt(t), RecordType::TXT) => RData::TXT(TXT::new(
                t.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect(),
            )),
            (Rr::Tlsa(u, s, m, d), RecordType::TLSA) => {
                RData::TLSA(TLSA::new((*u).into(), (*s).into(), (*m).into(), d.clone()))
            }
            _ => continue,
        };
        answers.push(data);
    }
    let ttl = records.iter().flatten().find_map(|r| if let Rr::Ttl(t) = r { Some(*t) } else { None }).unwrap_or(0);
    let answers: Vec<Record> = answers.into_iter().map(|d| Record::from_rdata(qname.clone(), ttl, d)).collect();
    match signer {
        None => {
            for r in answers {
                reply.add_answer(r);
            }
        }
        Some(s) if !answers.is_empty() => {
            let sig = s.sign(&answers, bogus)?;
            for r in answers {
                reply.add_answer(r);
            }
            reply.add_answer(sig);
        }
        Some(s) => {
            // No such data: the zone's SOA and an NSEC at the name asked, listing no type but
            // its own, both signed (RFC 4035 3.1.3.1).
            let soa =
                SOA::new(s.apex.clone(), Name::from_str(&format!("hostmaster.{}", s.apex)).ok()?, 1, 60, 60, 60, 0);
            let soa = vec![Record::from_rdata(s.apex.clone(), 0, RData::SOA(soa))];
            let next = Name::from_str(&format!("next.{qname}")).ok()?;
            let nsec = NSEC::new(next, [RecordType::RRSIG, RecordType::NSEC]);
            let nsec = vec![Record::from_rdata(qname.clone(), 0, RData::DNSSEC(DNSSECRData::NSEC(nsec)))];
            for set in [soa, nsec] {
                let sig = s.sign(&set, bogus)?;
                for r in set {
                    reply.add_name_server(r);
                }
                reply.add_name_server(sig);
            }
        }
    }
    reply.to_vec().ok()
}
