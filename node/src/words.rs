//! Counts in the messages people read: `1 round`, `2 rounds`.

/// `count` followed by `noun`, with an `s` unless the count is one.
///
/// ```text
/// counted(1, "contribution") == "1 contribution"
/// counted(3, "round")        == "3 rounds"
/// ```
pub(crate) fn counted(count: impl Into<u64>, noun: &str) -> String {
    let count = count.into();
    let s = if count == 1 { "" } else { "s" };
    format!("{count} {noun}{s}")
}

#[cfg(test)]
mod tests {
    use super::counted;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(counted(1u64, "round"), "1 round");
        assert_eq!(counted(0u64, "round"), "0 rounds");
        assert_eq!(counted(24u32, "contribution"), "24 contributions");
    }
}
