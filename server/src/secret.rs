//! Random identifiers (task numbers, token ids, generated secrets) as hex, and a comparison
//! of secrets whose time does not depend on where they differ.

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` random bytes from the OS, as hex.
///
/// # Errors
/// The OS gave no randomness.
pub(crate) fn random_hex(len: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Equality of two secrets that takes the same time wherever they differ (`subtle`).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_comparison() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(random_hex(16).unwrap().len(), 32);
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez") && !constant_time_eq(b"key", b"keys"));
    }
}
