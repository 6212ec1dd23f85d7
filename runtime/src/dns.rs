//! A tiny authoritative DNS responder for the mesh's names (like MagicDNS).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use tsk8s_policy::runtime_config::DnsRecord;

/// Names (lower case, no trailing dot) → addresses.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    domain: String,
    names: BTreeMap<String, (Option<Ipv4Addr>, Option<Ipv6Addr>)>,
}

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;
const TTL: u32 = 60;

impl Zone {
    pub fn new(domain: &str, records: &[DnsRecord]) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut names = BTreeMap::new();
        for r in records {
            names.insert(
                r.name.trim_end_matches('.').to_ascii_lowercase(),
                (r.ipv4, r.ipv6),
            );
        }
        Zone { domain, names }
    }

    fn in_domain(&self, name: &str) -> bool {
        !self.domain.is_empty()
            && (name == self.domain
                || name
                    .strip_suffix(self.domain.as_str())
                    .is_some_and(|p| p.ends_with('.')))
    }

    /// Answer one DNS message. `None` means: not a query we answer at all (drop).
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        let flags = u16::from_be_bytes([query[2], query[3]]);
        if flags & 0x8000 != 0 {
            return None; // a response, not a query
        }
        let opcode = ((flags >> 11) & 0x0f) as u8;
        let qdcount = u16::from_be_bytes([query[4], query[5]]);
        let rd = flags & 0x0100;
        let mut resp = Vec::with_capacity(128);
        resp.extend_from_slice(&query[0..2]);
        let header = |rcode: u8, ancount: u16, qd: u16, resp: &mut Vec<u8>| {
            let f: u16 = 0x8000 | 0x0400 | rd | u16::from(rcode);
            resp.extend_from_slice(&f.to_be_bytes());
            resp.extend_from_slice(&qd.to_be_bytes());
            resp.extend_from_slice(&ancount.to_be_bytes());
            resp.extend_from_slice(&[0, 0, 0, 0]);
        };
        if opcode != 0 {
            header(RCODE_NOTIMP, 0, 0, &mut resp);
            return Some(resp);
        }
        if qdcount != 1 {
            header(RCODE_FORMERR, 0, 0, &mut resp);
            return Some(resp);
        }
        // Parse the question name (no compression allowed in questions we accept).
        let mut pos = 12usize;
        let mut labels: Vec<String> = Vec::new();
        loop {
            let len = usize::from(*query.get(pos)?);
            pos += 1;
            if len == 0 {
                break;
            }
            if len > 63 || labels.len() > 127 {
                header(RCODE_FORMERR, 0, 0, &mut resp);
                return Some(resp);
            }
            let l = query.get(pos..pos + len)?;
            labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
            pos += len;
        }
        let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
        let qclass = u16::from_be_bytes([*query.get(pos + 2)?, *query.get(pos + 3)?]);
        let qend = pos + 4;
        let question = query.get(12..qend)?;
        let name = labels.join(".");
        if !self.in_domain(&name) || qclass != CLASS_IN {
            header(RCODE_REFUSED, 0, 1, &mut resp);
            resp.extend_from_slice(question);
            return Some(resp);
        }
        let Some((v4, v6)) = self.names.get(&name) else {
            header(RCODE_NXDOMAIN, 0, 1, &mut resp);
            resp.extend_from_slice(question);
            return Some(resp);
        };
        let rdata: Option<Vec<u8>> = match qtype {
            TYPE_A => v4.map(|a| a.octets().to_vec()),
            TYPE_AAAA => v6.map(|a| a.octets().to_vec()),
            _ => None,
        };
        let an = u16::from(rdata.is_some());
        header(0, an, 1, &mut resp);
        resp.extend_from_slice(question);
        if let Some(rdata) = rdata {
            resp.extend_from_slice(&[0xc0, 12]); // pointer to the question name
            resp.extend_from_slice(&qtype.to_be_bytes());
            resp.extend_from_slice(&CLASS_IN.to_be_bytes());
            resp.extend_from_slice(&TTL.to_be_bytes());
            resp.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            resp.extend_from_slice(&rdata);
        }
        Some(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, qtype: u16) -> Vec<u8> {
        let mut v = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v
    }

    fn zone() -> Zone {
        Zone::new(
            "acme.example",
            &[DnsRecord {
                name: "grafana.acme.example".into(),
                ipv4: Some("100.64.0.5".parse().unwrap()),
                ipv6: None,
            }],
        )
    }

    #[test]
    fn a_record() {
        let r = zone().answer(&q("Grafana.acme.example", 1)).unwrap();
        assert_eq!(r[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
        assert_eq!(&r[r.len() - 4..], &[100, 64, 0, 5]);
    }

    #[test]
    fn nxdomain_nodata_refused() {
        let z = zone();
        assert_eq!(z.answer(&q("nope.acme.example", 1)).unwrap()[3] & 0x0f, 3);
        let nodata = z.answer(&q("grafana.acme.example", 28)).unwrap();
        assert_eq!(nodata[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([nodata[6], nodata[7]]), 0);
        assert_eq!(z.answer(&q("example.com", 1)).unwrap()[3] & 0x0f, 5);
    }

    #[test]
    fn garbage() {
        let z = zone();
        for n in 0..64u8 {
            let v: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = z.answer(&v);
        }
    }
}
