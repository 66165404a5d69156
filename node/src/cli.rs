//! What the command-line programs (`p2pnode`, `netsim`) share: how an error
//! is told to the person who ran them.
//!
//! ```
//! let error = anyhow::anyhow!("No such file").context("reading --key");
//! assert_eq!(
//!     p2ptrain_node::cli::error_report(&error),
//!     "Error: reading --key\n\nCaused by:\n    No such file"
//! );
//! ```

/// What went wrong and why, for a person, as a program prints it before it
/// exits with a failure: each cause on a line (or lines) of its own,
/// without the stack trace `RUST_BACKTRACE` would add to an ordinary error
/// (a missing file, a bad option) — those are not bugs. A cause that the
/// line above already quotes (an error that names its source in its own
/// message, as many library errors do) is not repeated.
pub fn error_report(error: &anyhow::Error) -> String {
    let mut report = format!("Error: {error}");
    let mut above = error.to_string();
    let mut causes = Vec::new();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !above.contains(&cause) {
            causes.push(cause.clone());
        }
        above = cause;
    }
    if !causes.is_empty() {
        report.push_str("\n\nCaused by:");
        for cause in causes {
            // A cause of several lines (a parser's excerpt) is indented
            // as a whole.
            for line in cause.trim_end().lines() {
                report.push_str("\n    ");
                report.push_str(line);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::error_report;

    #[test]
    fn an_error_is_reported_with_its_causes_and_no_stack_trace() {
        assert_eq!(error_report(&anyhow::anyhow!("no key")), "Error: no key");
        let error = anyhow::anyhow!("No such file")
            .context("node.key")
            .context("reading --key");
        assert_eq!(
            error_report(&error),
            "Error: reading --key\n\nCaused by:\n    node.key\n    No such file"
        );
        // A cause of several lines stays indented under the first.
        let error = anyhow::anyhow!("line 1, column 1\n  |\n1 | peers\n").context("bad.toml");
        assert_eq!(
            error_report(&error),
            "Error: bad.toml\n\nCaused by:\n    line 1, column 1\n      |\n    1 | peers"
        );
        // A cause quoted by the error above it is said once.
        let quoted = anyhow::Error::new(Quoting(Quoted)).context("starting the node");
        assert_eq!(
            error_report(&quoted),
            "Error: starting the node\n\nCaused by:\n    training: bad device"
        );
    }

    /// An error that quotes its source in its own message.
    #[derive(Debug, thiserror::Error)]
    #[error("training: {0}")]
    struct Quoting(#[source] Quoted);

    #[derive(Debug, thiserror::Error)]
    #[error("bad device")]
    struct Quoted;
}
