//! Random identifiers (task numbers, token ids, generated secrets) as hex, a comparison of
//! secrets whose time does not depend on where they differ, and files only their owner reads.

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

/// Makes `path` readable by its owner only (0600) if others could read or write it.
///
/// # Errors
/// The file's metadata cannot be read or its mode set.
#[cfg(unix)]
pub(crate) fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Nothing to do where files have no Unix modes.
#[cfg(not(unix))]
pub(crate) fn owner_only(_path: &std::path::Path) -> std::io::Result<()> {
    Ok(())
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
