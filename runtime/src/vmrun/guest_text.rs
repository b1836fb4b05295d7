//! Text that comes from the guest (agent errors and warnings, console lines) before the host
//! prints it: the guest is hostile, so its text may carry terminal escape sequences (to
//! retitle, clear or rewrite the operator's terminal), fake line breaks, or be huge.

/// Longest piece of guest text shown, in characters.
pub const MAX_GUEST_TEXT: usize = 1000;

/// `text` with every control character (C0, DEL, C1: escape sequences lose their ESC and
/// cannot act) removed, line breaks and tabs turned into spaces, and at most
/// [`MAX_GUEST_TEXT`] characters kept (an ellipsis says more was cut).
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_GUEST_TEXT + 4));
    let mut kept = 0;
    for c in text.chars() {
        let c = match c {
            '\n' | '\t' | '\r' => ' ',
            c if c.is_control() => continue,
            c => c,
        };
        if kept == MAX_GUEST_TEXT {
            out.push('…');
            break;
        }
        out.push(c);
        kept += 1;
    }
    out
}

/// A response whose guest-chosen strings are [`sanitize`]d.
pub fn sanitize_response(response: palisade_protocol::Response) -> palisade_protocol::Response {
    use palisade_protocol::Response;
    match response {
        Response::Error { message } => Response::Error { message: sanitize(&message) },
        Response::Created { pid, warnings } => Response::Created { pid, warnings: warnings.iter().map(|w| sanitize(w)).collect() },
        Response::Hello { version, agent_version } => Response::Hello { version, agent_version: sanitize(&agent_version) },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_line_breaks_cannot_reach_the_terminal() {
        let hostile = "ok\x1b]0;owned\x07\x1b[2J\r\nvmrun: the command succeeded\u{9b}31m\x7f";
        let clean = sanitize(hostile);
        assert!(!clean.chars().any(char::is_control), "{clean:?}");
        assert_eq!(clean, "ok]0;owned[2J  vmrun: the command succeeded31m");
    }

    #[test]
    fn long_text_is_cut() {
        let clean = sanitize(&"x".repeat(1 << 20));
        assert_eq!(clean.chars().count(), MAX_GUEST_TEXT + 1);
        assert!(clean.ends_with('…'));
        assert_eq!(sanitize("short"), "short");
    }
}
