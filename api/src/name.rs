//! Names of VMs, resource groups and tokens.

/// A name that breaks the rule of [`validate`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} name {name:?} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)]
pub struct NameError {
    /// "VM", "resource group", "token".
    pub kind: &'static str,
    pub name: String,
}

/// 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit (safe in paths, URLs, logs).
pub fn validate(kind: &'static str, s: &str) -> Result<(), NameError> {
    let ok = s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            kind,
            name: s.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::validate("VM", "web-01.prod").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(super::validate("VM", bad).is_err(), "{bad}");
        }
    }
}
