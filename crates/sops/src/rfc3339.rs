//! `lastmodified` handling. SOPS parses the stored string with Go's
//! `time.Parse(time.RFC3339, …)` and uses `t.Format(time.RFC3339)` as the
//! additional data of the encrypted MAC. That normal form drops fractional
//! seconds and writes a zero offset as `Z`; other offsets stay `±hh:mm`.

/// Parse an RFC 3339 timestamp the way Go's `time.RFC3339` layout does and
/// return Go's `Format(time.RFC3339)` of it. `None` when it does not parse.
pub(crate) fn normalize(s: &str) -> Option<String> {
    let b = s.as_bytes();
    // YYYY-MM-DDTHH:MM:SS
    if b.len() < 20 {
        return None;
    }
    let digits = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        let mut v = 0u32;
        for &c in part {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    let lit = |at: usize, c: u8| b.get(at) == Some(&c);
    let year = digits(0, 4)?;
    if !(lit(4, b'-') && lit(7, b'-') && lit(10, b'T') && lit(13, b':') && lit(16, b':')) {
        return None;
    }
    let month = digits(5, 2)?;
    let day = digits(8, 2)?;
    let hour = digits(11, 2)?;
    let minute = digits(14, 2)?;
    let second = digits(17, 2)?;
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let mdays = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day < 1 || day > mdays {
        return None;
    }
    let mut i = 19;
    if lit(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let zone = match b.get(i) {
        Some(b'Z') if b.len() == i + 1 => "Z".to_string(),
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 => {
            let oh = digits(i + 1, 2)?;
            if !lit(i + 3, b':') {
                return None;
            }
            let om = digits(i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            if oh == 0 && om == 0 {
                "Z".to_string()
            } else {
                format!("{}{:02}:{:02}", sign as char, oh, om)
            }
        }
        _ => return None,
    };
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{zone}"
    ))
}

/// Seconds since the Unix epoch as RFC 3339 UTC, whole seconds (`2026-12-01T17:16:18Z`): the
/// normal form [`normalize`] returns, so a timestamp written here reads back unchanged.
pub fn from_unix_seconds(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).expect("u64 seconds / 86400 fits in i64");
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{from_unix_seconds, normalize};

    #[test]
    fn unix_seconds_round_trip_through_normalize() {
        assert_eq!(from_unix_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(from_unix_seconds(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(from_unix_seconds(1_795_885_378), "2026-11-28T17:02:58Z");
        for secs in [0, 68_169_600, 951_868_799, 4_102_444_800] {
            let s = from_unix_seconds(secs);
            assert_eq!(normalize(&s).as_deref(), Some(s.as_str()));
        }
    }

    #[test]
    fn go_rfc3339_normal_form() {
        assert_eq!(
            normalize("2022-03-15T22:11:15Z").as_deref(),
            Some("2022-03-15T22:11:15Z")
        );
        assert_eq!(
            normalize("2022-03-15T22:11:15.123456Z").as_deref(),
            Some("2022-03-15T22:11:15Z")
        );
        assert_eq!(
            normalize("2022-03-15T22:11:15+00:00").as_deref(),
            Some("2022-03-15T22:11:15Z")
        );
        assert_eq!(
            normalize("2022-03-15T22:11:15-05:30").as_deref(),
            Some("2022-03-15T22:11:15-05:30")
        );
        for bad in [
            "",
            "2022-03-15",
            "2022-02-30T00:00:00Z",
            "2022-03-15 22:11:15Z",
            "2022-03-15T22:11:15",
            "2022-03-15T24:00:00Z",
            "2022-03-15T22:11:15.Z",
            "2022-03-15T22:11:15Zx",
            "２022-03-15T22:11:15Z",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }
}
