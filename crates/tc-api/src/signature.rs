//! The minisign signature a `PackageRelease` may carry (`spec.artifact.signature`).

/// Largest `spec.artifact.signature`, in bytes (a minisign signature with a trusted comment of
/// the size `minisign` itself allows is well below it).
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// Checks that `text` is a minisign signature (the text of a `.minisig` file) of bounded size.
pub fn check_signature(text: &str) -> Result<(), String> {
    if text.len() > MAX_SIGNATURE_BYTES {
        return Err(format!(
            "is {} bytes, more than the {MAX_SIGNATURE_BYTES} bytes a minisign signature needs",
            text.len()
        ));
    }
    minisign_verify::Signature::decode(text)
        .map(|_| ())
        .map_err(|error| format!("is not a minisign signature: {error}"))
}
