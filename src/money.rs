//! Money as integer micro-units: parsing, rendering and pricing. Never floats.

/// Micro-units in one unit of account.
pub const MICROS: i64 = 1_000_000;

/// The largest amount accepted from a person: one trillion units.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000 * MICROS;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("`{0}` is not an amount (expected digits with at most 6 decimals, such as 12.50)")]
    Malformed(String),
    #[error("amounts cannot be negative")]
    Negative,
    #[error("amount is too large (at most 1000000000000)")]
    TooLarge,
}

/// Parses a non-negative decimal currency string (`12`, `12.5`, `0.000001`) into micro-units.
pub fn parse_amount(input: &str) -> Result<i64, AmountError> {
    let s = input.trim();
    if s.starts_with('-') {
        return Err(AmountError::Negative);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty())
        || !digits(whole)
        || !digits(frac)
        || frac.len() > 6
        || (s.contains('.') && frac.is_empty() && whole.is_empty())
    {
        return Err(AmountError::Malformed(input.to_owned()));
    }
    let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| AmountError::TooLarge)? };
    let frac_micros: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().map_err(|_| AmountError::Malformed(input.to_owned()))?
    };
    let total =
        whole.checked_mul(i128::from(MICROS)).and_then(|w| w.checked_add(frac_micros)).ok_or(AmountError::TooLarge)?;
    if total > i128::from(MAX_AMOUNT) {
        return Err(AmountError::TooLarge);
    }
    i64::try_from(total).map_err(|_| AmountError::TooLarge)
}

/// The symbol shown for a currency code when `CURRENCY_SYMBOL` is not set.
pub fn default_symbol(code: &str) -> String {
    match code {
        "USD" => "$".to_owned(),
        "CNY" | "JPY" => "¥".to_owned(),
        "EUR" => "€".to_owned(),
        "GBP" => "£".to_owned(),
        other => format!("{other} "),
    }
}

/// Renders micro-units for people: the symbol, then the amount (`$12.50`, `-$0.25`).
pub fn display(micros: i64, symbol: &str) -> String {
    let amount = format_amount(micros);
    match amount.strip_prefix('-') {
        Some(abs) => format!("-{symbol}{abs}"),
        None => format!("{symbol}{amount}"),
    }
}

/// Renders micro-units as a decimal string with at least two decimals: `12.50`, `0.000125`.
pub fn format_amount(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let whole = abs / MICROS as u64;
    let frac = format!("{:06}", abs % MICROS as u64);
    let trimmed = frac.trim_end_matches('0');
    let frac = if trimmed.len() < 2 { &frac[..2] } else { trimmed };
    format!("{sign}{whole}.{frac}")
}

/// The cost of `tokens` at `price` micro-units per 1M tokens: `ceil(tokens * price / 1M)`,
/// computed in i128. Negative inputs count as zero; a result beyond i64 saturates.
pub fn cost(tokens: i64, price_per_million: i64) -> i64 {
    let product = i128::from(tokens.max(0)) * i128::from(price_per_million.max(0));
    let micros = (product + 999_999) / 1_000_000;
    i64::try_from(micros).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_strings() {
        assert_eq!(parse_amount("12.50"), Ok(12_500_000));
        assert_eq!(parse_amount("12"), Ok(12_000_000));
        assert_eq!(parse_amount("0.000001"), Ok(1));
        assert_eq!(parse_amount(".5"), Ok(500_000));
        assert_eq!(parse_amount(" 3. "), Ok(3_000_000));
        assert_eq!(parse_amount("1000000000000"), Ok(MAX_AMOUNT));
    }

    #[test]
    fn rejects_bad_amounts() {
        assert_eq!(parse_amount("-1"), Err(AmountError::Negative));
        assert!(matches!(parse_amount("1.0000001"), Err(AmountError::Malformed(_))));
        assert!(matches!(parse_amount("1e5"), Err(AmountError::Malformed(_))));
        assert!(matches!(parse_amount(""), Err(AmountError::Malformed(_))));
        assert!(matches!(parse_amount("."), Err(AmountError::Malformed(_))));
        assert!(matches!(parse_amount("1,5"), Err(AmountError::Malformed(_))));
        assert_eq!(parse_amount("1000000000000.01"), Err(AmountError::TooLarge));
        assert_eq!(parse_amount("99999999999999999999999999999"), Err(AmountError::TooLarge));
    }

    #[test]
    fn renders_amounts() {
        assert_eq!(format_amount(12_500_000), "12.50");
        assert_eq!(format_amount(0), "0.00");
        assert_eq!(format_amount(125), "0.000125");
        assert_eq!(format_amount(1_234_567), "1.234567");
        assert_eq!(format_amount(-2_000_000), "-2.00");
        for v in [0, 1, 10, 999_999, 12_340_000, MAX_AMOUNT] {
            assert_eq!(parse_amount(&format_amount(v)), Ok(v));
        }
    }

    #[test]
    fn cost_rounds_up_and_never_overflows() {
        assert_eq!(cost(1, 1), 1);
        assert_eq!(cost(1_000_000, 2_500_000), 2_500_000);
        assert_eq!(cost(3, 333_333), 1);
        assert_eq!(cost(0, 5), 0);
        assert_eq!(cost(-5, 5), 0);
        assert_eq!(cost(i64::MAX, i64::MAX), i64::MAX);
    }
}
