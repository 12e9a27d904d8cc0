//! The CSV export's columns and rows, with cells a spreadsheet would run as formulas
//! neutralised.

use crate::db::entities::usage_logs;

/// The CSV header of the export.
pub const CSV_HEADER: [&str; 18] = [
    "request_id",
    "created_at",
    "model",
    "status_code",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "subscription_tokens",
    "usage_source",
    "latency_ms",
    "ttfb_ms",
    "request_count",
    "key_name",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
];

/// A cell a spreadsheet would run as a formula gets a leading `'`.
pub fn neutralise(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{cell}") } else { cell.to_owned() }
}

/// One export row; `key_name` is the name of the row's key, if it has one that still exists.
pub fn csv_record(r: &usage_logs::Model, key_name: Option<&str>) -> [String; 18] {
    [
        neutralise(&r.request_id),
        crate::clock::rfc3339(r.created_at),
        neutralise(&r.model),
        r.status_code.to_string(),
        r.stream.to_string(),
        r.prompt_tokens.to_string(),
        r.completion_tokens.to_string(),
        r.total_tokens.to_string(),
        crate::money::format_amount(r.cost),
        r.subscription_tokens.to_string(),
        neutralise(&r.usage_source),
        r.latency_ms.to_string(),
        r.ttfb_ms.map(|t| t.to_string()).unwrap_or_default(),
        r.request_count.to_string(),
        key_name.map(neutralise).unwrap_or_default(),
        r.cache_read_tokens.to_string(),
        r.cache_write_tokens.to_string(),
        r.reasoning_tokens.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(neutralise("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(neutralise("+1"), "'+1");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise("gpt-4o"), "gpt-4o");
    }
}
