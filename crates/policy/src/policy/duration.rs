//! Go's `time.ParseDuration` / `Duration.String`, for `checkPeriod` messages.

use super::PolicyError;

/// Nanoseconds.
pub fn parse(s: &str) -> Result<i128, PolicyError> {
    let bad = || PolicyError {
        message: format!("time: invalid duration {s:?}"),
        position: None,
    };
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int_part = rest.get(..int_end).unwrap_or("");
        rest = rest.get(int_end..).unwrap_or("");
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let fe = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            frac_part = r.get(..fe).unwrap_or("");
            rest = r.get(fe..).unwrap_or("");
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest.get(..unit_end).unwrap_or("");
        rest = rest.get(unit_end..).unwrap_or("");
        let mult: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut v = int.checked_mul(mult).ok_or_else(bad)?;
        let mut scale = mult;
        for c in frac_part.chars().take(30) {
            scale /= 10;
            v += i128::from(c.to_digit(10).unwrap_or(0) as u8) * scale;
        }
        total = total.checked_add(v).ok_or_else(bad)?;
        if total > i128::from(i64::MAX) {
            return Err(bad());
        }
    }
    Ok(if neg { -total } else { total })
}

fn frac(v: i128, digits: u32) -> String {
    // v has `digits` fractional digits; print trimmed
    let p = 10i128.pow(digits);
    let (i, f) = (v / p, v % p);
    if f == 0 {
        return i.to_string();
    }
    let fs = format!("{:0width$}", f, width = digits as usize);
    format!("{i}.{}", fs.trim_end_matches('0'))
}

/// Format like Go's `Duration.String` (`168h0m1s`, `-1m0s`, `1.5s`, `300ms`).
pub fn format(d: i128) -> String {
    if d == 0 {
        return "0s".into();
    }
    let neg = d < 0;
    let u = d.abs();
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}\u{b5}s", frac(u, 3))
    } else if u < 1_000_000_000 {
        format!("{}ms", frac(u, 6))
    } else {
        let h = u / 3_600_000_000_000;
        let rem = u % 3_600_000_000_000;
        let m = rem / 60_000_000_000;
        let s = rem % 60_000_000_000;
        let secs = format!("{}s", frac(s, 9));
        if h > 0 {
            format!("{h}h{m}m{secs}")
        } else if m > 0 {
            format!("{m}m{secs}")
        } else {
            secs
        }
    };
    if neg { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip() {
        for (s, f) in [
            ("168h", "168h0m0s"),
            ("168h0m1s", "168h0m1s"),
            ("-1m", "-1m0s"),
            ("200h", "200h0m0s"),
            ("1.5s", "1.5s"),
            ("300ms", "300ms"),
            ("30s", "30s"),
        ] {
            assert_eq!(super::format(super::parse(s).unwrap()), f);
        }
        assert_eq!(
            super::parse("abc").unwrap_err().message,
            "time: invalid duration \"abc\""
        );
        assert!(super::parse("").is_err());
        assert!(super::parse("1").is_err());
        assert!(super::parse("99999999999999999999h").is_err());
    }
}
