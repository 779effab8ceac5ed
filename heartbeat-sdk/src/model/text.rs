//! Text that goes into a row: bounded, cut on a character boundary.

/// Longest `last_error` kept, in bytes; the SQL CHECK allows the same.
pub const MAX_LAST_ERROR_BYTES: usize = 2048;

/// Cuts `message` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate_message(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries_and_bound() {
        let long = "é".repeat(3000);
        let cut = truncate_message(&long, MAX_LAST_ERROR_BYTES);
        assert!(cut.len() <= MAX_LAST_ERROR_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_message("short", 10), "short");
    }
}
