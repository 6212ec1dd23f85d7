//! `TOPOLOGY.json`: the users and nodes a policy is compiled and tested against.
//!
//! ```json
//! {"users": [{"name": "odin", "email": "odin@example.com"}],
//!  "nodes": {"web1": {"ipv4": "100.86.11.46", "ipv6": "fd7a:115c:a1e0::7f37:b2e",
//!                     "user": null, "tags": ["tag:server"],
//!                     "routable_ips": ["10.33.0.0/16"], "approved_routes": ["10.33.0.0/16"]}}}
//! ```
//! `user` is the owner's email (a user's `name` is accepted too), null for tagged nodes.
//! Every list (and `users`, `nodes`) may be `null`, as Go writes a nil slice: it reads as empty.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ipset::{IpSet, is_exit_route};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub users: Vec<User>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub nodes: BTreeMap<String, Node>,
    /// Users by email and by name, built on first lookup (not data: never compared).
    #[serde(skip)]
    pub user_index: UserIndex,
}

/// First position of each non-empty email and name in `Topology::users`.
#[derive(Clone, Debug, Default)]
pub struct UserIndex(std::sync::OnceLock<UserMaps>);

#[derive(Clone, Debug, Default)]
pub struct UserMaps {
    by_email: std::collections::HashMap<String, usize>,
    by_name: std::collections::HashMap<String, usize>,
}

impl PartialEq for UserIndex {
    fn eq(&self, _: &UserIndex) -> bool {
        true
    }
}

impl Eq for UserIndex {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub email: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Owner's email; `None` for tagged nodes.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub routable_ips: Vec<IpNet>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub approved_routes: Vec<IpNet>,
}

/// Go writes a nil slice or map as `null`: read it as empty (the field is optional anyway).
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Topology {
    /// Parse `TOPOLOGY.json` (plain JSON; HuJSON comments are tolerated).
    pub fn parse(text: &str) -> Result<Topology, String> {
        let v = crate::hujson::parse(text).map_err(|e| format!("topology: {e}"))?;
        serde_json::from_value(v).map_err(|e| format!("topology: {e}"))
    }

    /// Canonical email of the user a policy token (`alice@example.com`, or a bare `alice@`)
    /// refers to, if it is in `users` (matched by email, then by name).
    pub fn resolve_user(&self, token: &str) -> Option<&User> {
        let trimmed = token.strip_suffix('@').unwrap_or(token);
        if !token.is_empty() && !trimmed.is_empty() {
            let maps = self.user_index.0.get_or_init(|| {
                let mut m = UserMaps::default();
                for (i, u) in self.users.iter().enumerate() {
                    if !u.email.is_empty() {
                        m.by_email.entry(u.email.clone()).or_insert(i);
                    }
                    if !u.name.is_empty() {
                        m.by_name.entry(u.name.clone()).or_insert(i);
                    }
                }
                m
            });
            let first = |map: &std::collections::HashMap<String, usize>| {
                [map.get(token), map.get(trimmed)]
                    .into_iter()
                    .flatten()
                    .min()
                    .copied()
            };
            let hit = first(&maps.by_email).or_else(|| first(&maps.by_name));
            // The index is only a shortcut: the users list may have changed since it was
            // built, so a hit is checked and a miss falls back to the scan below.
            if let Some(u) = hit.and_then(|i| self.users.get(i))
                && (u.email == token || u.email == trimmed || u.name == trimmed || u.name == token)
            {
                return Some(u);
            }
        }
        self.users
            .iter()
            .find(|u| u.email == token || (!u.email.is_empty() && u.email == trimmed))
            .or_else(|| {
                self.users
                    .iter()
                    .find(|u| !u.name.is_empty() && (u.name == trimmed || u.name == token))
            })
    }
}

impl Node {
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }

    pub fn ips(&self) -> Vec<IpAddr> {
        let mut v = Vec::with_capacity(2);
        if let Some(a) = self.ipv4 {
            v.push(IpAddr::V4(a));
        }
        if let Some(a) = self.ipv6 {
            v.push(IpAddr::V6(a));
        }
        v
    }

    pub fn ip_set(&self) -> IpSet {
        let mut s = IpSet::new();
        for ip in self.ips() {
            s.add_ip(ip);
        }
        s
    }

    /// Node's own addresses as host networks (/32, /128).
    pub fn ip_nets(&self) -> Vec<IpNet> {
        self.ips().into_iter().map(IpNet::from).collect()
    }

    fn approved(&self) -> impl Iterator<Item = &IpNet> {
        self.routable_ips
            .iter()
            .filter(|r| self.approved_routes.iter().any(|a| a.trunc() == r.trunc()))
    }

    /// Advertised and approved subnet routes (exit routes excluded).
    pub fn subnet_routes(&self) -> Vec<IpNet> {
        self.approved()
            .filter(|r| !is_exit_route(r))
            .map(|r| r.trunc())
            .collect()
    }

    /// Does the node advertise an approved exit route?
    pub fn is_exit_node(&self) -> bool {
        self.approved().any(is_exit_route)
    }

    /// Does `user` (a canonical email or name) own this node?
    pub fn owned_by(&self, user: &User) -> bool {
        if self.is_tagged() {
            return false;
        }
        match &self.user {
            Some(u) => {
                (!user.email.is_empty() && *u == user.email)
                    || (!user.name.is_empty() && *u == user.name)
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_issue_example() {
        let t = Topology::parse(
            r#"{"users": [{"name": "odin", "email": "odin@example.com"}],
 "nodes": {"web1": {"ipv4": "100.86.11.46", "ipv6": "fd7a:115c:a1e0::7f37:b2e",
                    "user": null, "tags": ["tag:server"],
                    "routable_ips": ["10.33.0.0/16"], "approved_routes": ["10.33.0.0/16"]}}}"#,
        )
        .unwrap();
        let n = &t.nodes["web1"];
        assert!(n.is_tagged());
        assert_eq!(
            n.subnet_routes(),
            vec!["10.33.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert!(!n.is_exit_node());
        assert_eq!(
            t.resolve_user("odin@").map(|u| u.email.as_str()),
            Some("odin@example.com")
        );
        assert!(Topology::parse("{\"nodes\": 3}").is_err());
        let t = Topology::parse(
            r#"{"users": null, "nodes": {"a": {"ipv4": "100.64.0.1", "user": null,
                "tags": null, "routable_ips": null, "approved_routes": null}}}"#,
        )
        .unwrap();
        assert!(t.users.is_empty() && t.nodes["a"].routable_ips.is_empty());
        assert!(
            Topology::parse(r#"{"nodes": null}"#)
                .unwrap()
                .nodes
                .is_empty()
        );
    }
}
