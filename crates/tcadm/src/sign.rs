//! `tcadm sign`: minisign signatures of package zips, made with an admin's offline key, and the
//! `.minisig` files `push` and `apply` pick up beside a zip.
//!
//! The files are minisign's own formats, so the `minisign` tool can make the keys and signatures
//! and verify what `tcadm sign` wrote.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cli::SignArgs;
use crate::error::CliError;

/// Environment variable with the password of an encrypted secret key.
pub const PASSWORD_ENV: &str = "TCADM_SIGN_PASSWORD";

/// The file a signature of `zip` is written to and looked for: `ZIP.minisig`.
pub fn signature_path(zip: &Path) -> PathBuf {
    let mut name = zip.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// The text of `ZIP.minisig` beside `zip`, if there is one; checked to be a minisign signature.
pub fn read_signature_beside(zip: &Path) -> Result<Option<String>, CliError> {
    let path = signature_path(zip);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(CliError::Usage(format!(
                "cannot read {}: {error}",
                path.display()
            )));
        }
    };
    tc_api::resources::check_signature(&text)
        .map_err(|reason| CliError::Usage(format!("{} {reason}", path.display())))?;
    Ok(Some(text))
}

/// Signs `zip` with the minisign secret key in `key_file` (unencrypted, or encrypted with
/// `password`); returns the text of the `.minisig` file.
pub fn sign_zip(key_file: &Path, password: Option<String>, zip: &Path) -> Result<String, CliError> {
    let key_text = fs::read_to_string(key_file).map_err(|error| {
        CliError::Usage(format!("cannot read key {}: {error}", key_file.display()))
    })?;
    let secret = open_secret_key(&key_text, password).map_err(|reason| {
        CliError::Usage(format!(
            "cannot use {} as a minisign secret key: {reason}",
            key_file.display()
        ))
    })?;
    let file = fs::File::open(zip)
        .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", zip.display())))?;
    let name = zip
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trusted = format!("timestamp:{}\tfile:{name}\thashed", unix_now());
    let signature = minisign::sign(
        None,
        &secret,
        io::BufReader::new(file),
        Some(&trusted),
        Some("signature from tcadm sign"),
    )
    .map_err(|error| CliError::Failed(format!("signing {} failed: {error}", zip.display())))?;
    Ok(signature.into_string())
}

/// The key algorithm bytes of an unencrypted secret key (`minisign -W`, `tcadm sign
/// --generate-key`): no key derivation, and no checksum (all zero), as `minisign` writes them.
const KDF_NONE: [u8; 2] = [0, 0];

/// Opens the secret key of a minisign key file: an unencrypted one as it is, an encrypted one
/// with `password` (never prompted for).
fn open_secret_key(text: &str, password: Option<String>) -> Result<minisign::SecretKey, String> {
    let encoded = text
        .lines()
        .nth(1)
        .ok_or("expected an `untrusted comment:` line and a base64 line")?;
    let bytes = <ct_codecs::Base64 as ct_codecs::Decoder>::decode_to_vec(encoded.trim(), None)
        .map_err(|error| format!("the key line is not base64: {error}"))?;
    if bytes.get(2..4) == Some(&KDF_NONE[..]) {
        return minisign::SecretKey::from_bytes(&bytes).map_err(|error| error.to_string());
    }
    let Some(password) = password.filter(|p| !p.is_empty()) else {
        return Err(format!(
            "the key is encrypted: give its password with --password-file FILE or {PASSWORD_ENV}"
        ));
    };
    minisign::SecretKeyBox::from_string(text)
        .and_then(|key_box| key_box.into_secret_key(Some(password)))
        .map_err(|error| error.to_string())
}

/// Writes a new unencrypted key pair: `NAME.key` (secret, mode 0600) and `NAME.pub`.
pub fn generate_key(name: &Path) -> Result<(PathBuf, PathBuf), CliError> {
    let secret_path = with_suffix(name, ".key");
    let public_path = with_suffix(name, ".pub");
    for path in [&secret_path, &public_path] {
        if path.exists() {
            return Err(CliError::Usage(format!(
                "{} exists; refusing to overwrite a key",
                path.display()
            )));
        }
    }
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|error| CliError::Failed(format!("generating a key failed: {error}")))?;
    // The crate marks its unencrypted keys as scrypt-encrypted; mark them as `minisign -W` does,
    // so that both tools read them without a password.
    let mut bytes = pair.sk.to_bytes();
    bytes[2..4].copy_from_slice(&KDF_NONE);
    let secret = minisign::SecretKey::from_bytes(&bytes)
        .and_then(|key| key.to_box(None))
        .map_err(|error| CliError::Failed(format!("encoding the key failed: {error}")))?
        .into_string();
    let public = pair
        .pk
        .to_box()
        .map_err(|error| CliError::Failed(format!("encoding the key failed: {error}")))?
        .into_string();
    write_new(&secret_path, secret.as_bytes(), 0o600)?;
    write_new(&public_path, public.as_bytes(), 0o644)?;
    Ok((secret_path, public_path))
}

/// Runs `tcadm sign`.
pub fn run(args: &SignArgs) -> Result<(), CliError> {
    if let Some(name) = &args.generate_key {
        let (secret, public) = generate_key(name)?;
        let key = fs::read_to_string(&public).map_err(CliError::Output)?;
        let base64 = key.lines().nth(1).unwrap_or_default();
        println!(
            "wrote {} (secret: keep it offline) and {}\npublic key for agents' trustedKeys: {base64}",
            secret.display(),
            public.display()
        );
        return Ok(());
    }
    let (Some(key), Some(zip)) = (&args.key, &args.zip) else {
        return Err(CliError::Usage(
            "give --key FILE and the ZIP to sign, or --generate-key NAME".into(),
        ));
    };
    let password = match &args.password_file {
        Some(path) => Some(
            fs::read_to_string(path)
                .map_err(|error| {
                    CliError::Usage(format!("cannot read {}: {error}", path.display()))
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        None => std::env::var(PASSWORD_ENV).ok(),
    };
    let signature = sign_zip(key, password, zip)?;
    let out = signature_path(zip);
    fs::write(&out, signature)
        .map_err(|error| CliError::Usage(format!("cannot write {}: {error}", out.display())))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn with_suffix(name: &Path, suffix: &str) -> PathBuf {
    let mut os = name.as_os_str().to_owned();
    os.push(suffix);
    PathBuf::from(os)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|error| CliError::Usage(format!("cannot create {}: {error}", path.display())))?;
    io::Write::write_all(&mut file, bytes)
        .map_err(|error| CliError::Usage(format!("cannot write {}: {error}", path.display())))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
