//! Kubernetes resource quantities (`500m`, `1.5Gi`, `1e3`): checked before
//! they reach the API server, which would refuse the whole child object with
//! a message about the child rather than the TenantCluster field.

/// Why a quantity is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity like 500m, 256Mi or 10Gi")]
pub struct NotAQuantity(pub String);

const SUFFIXES: &[&str] = &[
    "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
];

/// The quantity's value as a float (enough to compare and to reject zero),
/// following the grammar of `k8s.io/apimachinery/pkg/api/resource`.
pub fn parse(text: &str) -> Result<f64, NotAQuantity> {
    let bad = || NotAQuantity(text.to_string());
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1.0, &text[1..]),
        Some(b'-') => (-1.0, &text[1..]),
        _ => (1.0, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = if let Some(exp) = suffix.strip_prefix(['e', 'E']).filter(|e| !e.is_empty()) {
        let exp: i32 = exp.parse().map_err(|_| bad())?;
        10f64.powi(exp)
    } else if SUFFIXES.contains(&suffix) {
        suffix_scale(suffix)
    } else {
        return Err(bad());
    };
    Ok(sign * value * scale)
}

fn suffix_scale(suffix: &str) -> f64 {
    match suffix {
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_quantities_parse() {
        assert_eq!(parse("500m").unwrap(), 0.5);
        assert_eq!(parse("10Gi").unwrap(), 10.0 * 1024f64.powi(3));
        assert_eq!(parse("1.5").unwrap(), 1.5);
        assert_eq!(parse("1e3").unwrap(), 1000.0);
        assert_eq!(parse("128Mi").unwrap(), 128.0 * 1024f64.powi(2));
        assert_eq!(parse("-1").unwrap(), -1.0);
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "", "banana", "lots", "10GB", "1.2.3", "Gi", ".", "1e", "10 Gi", "1ki",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
