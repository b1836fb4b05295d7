//! Sandbox names: what runc accepts for a container ID (letters, digits, `_`, `+`, `-`, `.`),
//! never `.` or `..`, at most 1024 bytes; so an ID is always one path component.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SandboxId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SandboxIdError {
    #[error("invalid sandbox ID {0:?}: use 1 to 1024 letters, digits, '_', '+', '-' or '.' (not '.' or '..' alone)")]
    Invalid(String),
}

/// The longest ID.
pub const MAX_ID_LEN: usize = 1024;

impl SandboxId {
    pub fn parse(id: &str) -> Result<SandboxId, SandboxIdError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_+-.".contains(c);
        if id.is_empty() || id.len() > MAX_ID_LEN || id == "." || id == ".." || !id.chars().all(allowed) {
            return Err(SandboxIdError::Invalid(id.chars().take(64).collect()));
        }
        Ok(SandboxId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_safe_path_component() {
        for good in ["a", "pod-1", "k8s_abc.def+2", "0123456789abcdef", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(SandboxId::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "tab\t", "é", "nul\0", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(SandboxId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SandboxId::parse("a/b").unwrap_err().to_string().starts_with("invalid sandbox ID \"a/b\""));
    }
}
