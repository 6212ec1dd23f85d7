//! Unit tests of the policy model: port lists, tag syntax and messages.

use super::*;
use crate::filter::PortRange;

fn msg(text: &str) -> String {
    match Policy::parse(text) {
        Ok(_) => "OK".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn ports() {
    assert_eq!(parse_ports("*").unwrap(), vec![PortRange::ANY]);
    assert_eq!(
        parse_ports("22,80-90").unwrap(),
        vec![
            PortRange {
                first: 22,
                last: 22
            },
            PortRange {
                first: 80,
                last: 90
            }
        ]
    );
    assert_eq!(
        parse_ports("0").unwrap_err().reason,
        "first port must be >0, or use '*' for wildcard"
    );
    assert_eq!(
        parse_ports("ssh").unwrap_err().reason,
        "invalid first integer"
    );
    assert_eq!(
        parse_ports("99999").unwrap_err().reason,
        "port number out of range"
    );
    assert_eq!(
        parse_ports("-1").unwrap_err().reason,
        "invalid port range format"
    );
    assert_eq!(
        parse_ports("90-80").unwrap_err().reason,
        "invalid port range: first port is greater than last port"
    );
    assert_eq!(parse_ports("").unwrap_err().reason, "invalid first integer");
    // Tailscale checks the first port of a range too.
    assert_eq!(
        parse_ports("0-10").unwrap_err().reason,
        "first port must be >0, or use '*' for wildcard"
    );
    // The message names the part at fault, as Tailscale's does.
    assert_eq!(
        parse_ports("80,90-80").unwrap_err().to_string(),
        "port range \"90-80\": invalid port range: first port is greater than last port"
    );
}

#[test]
fn check_tag_messages() {
    assert_eq!(check_tag("server"), Err("tags must start with 'tag:'"));
    assert_eq!(check_tag("tag:"), Err("tag names must not be empty"));
    assert_eq!(
        check_tag("tag:1a"),
        Err("tag names must start with a letter, after 'tag:'")
    );
    assert_eq!(
        check_tag("tag:a_b"),
        Err("tag names can only contain numbers, letters, or dashes")
    );
    assert_eq!(check_tag("tag:web-1"), Ok(()));
}

#[test]
fn messages() {
    assert_eq!(
        msg(r#"{"acls":[{"action":"accept","src":["tag:nonexistent"],"dst":["*:*"]}]}"#),
        r#"src=tag not found: "tag:nonexistent""#
    );
    assert_eq!(
        msg(r#"{"acls":[{"action":"deny","src":["*"],"dst":["*:*"]}]}"#),
        r#"action="deny" is not supported"#
    );
    assert_eq!(msg(r#"{"foo": 1}"#), r#"unknown field: "foo""#);
    assert_eq!(
        msg(r#"{"grants":[{"src":["*"],"dst":["0.0.0.0/0"],"ip":["*"]}]}"#),
        r#"dst "0.0.0.0/0": to allow all IP addresses, use "*" or "autogroup:internet""#
    );
}

/// The autogroup lists, composed with the roles, in the order they had when written out.
#[test]
fn autogroup_lists_keep_their_order() {
    let roles = [
        "autogroup:admin",
        "autogroup:owner",
        "autogroup:auditor",
        "autogroup:billing-admin",
        "autogroup:it-admin",
        "autogroup:network-admin",
    ];
    let cat = |a: &[&'static str], b: &[&'static str]| [a, &roles, b].concat();
    assert_eq!(
        SRC_AUTOGROUPS.to_vec(),
        cat(
            &["autogroup:member", "autogroup:tagged"],
            &["autogroup:shared", "autogroup:danger-all"]
        )
    );
    assert_eq!(
        DST_AUTOGROUPS.to_vec(),
        cat(
            &[
                "autogroup:member",
                "autogroup:tagged",
                "autogroup:self",
                "autogroup:internet"
            ],
            &[]
        )
    );
    assert_eq!(
        OWNER_AUTOGROUPS.to_vec(),
        cat(&["autogroup:member", "autogroup:tagged"], &[])
    );
}
