//! What the agent checks in a desired package before it uses anything of it: the names that
//! become directory names, the sha256, the download URL and the hooks.

use tc_proto::{DesiredPackage, Hook};

use crate::download::is_sha256_hex;
use crate::hooks::HookKind;

/// True for a name that is safe as one directory name: letters, digits, `.`, `_`, `+`, `-`,
/// starting with a letter or digit (so never `.`, `..` or a hidden temporary name), and not
/// `current`.
pub(super) fn is_safe_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text != "current"
        && text.as_bytes()[0].is_ascii_alphanumeric()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._+-".contains(&byte))
}

/// Checks what will become file names and URLs: the agent refuses a desired package that fails
/// this (it is reported `Failed` and nothing is downloaded).
pub fn validate(package: &DesiredPackage) -> Result<(), String> {
    if !is_safe_name(&package.name) {
        return Err(format!("invalid package name `{}`", package.name));
    }
    if !is_safe_name(&package.version) {
        return Err(format!("invalid version `{}`", package.version));
    }
    if !is_sha256_hex(&package.sha256) {
        return Err(format!("invalid sha256 `{}`", package.sha256));
    }
    check_download_url(&package.url)?;
    let hooks = &package.hooks;
    if package.name == crate::selfupdate::PACKAGE
        && [
            &hooks.pre_install,
            &hooks.post_install,
            &hooks.health_check,
            &hooks.pre_remove,
        ]
        .iter()
        .any(|hook| hook.is_some())
    {
        return Err(format!(
            "a {} release runs no hooks: the new agent checking in is its health check",
            crate::selfupdate::PACKAGE
        ));
    }
    for (kind, hook) in [
        (HookKind::PreInstall, &hooks.pre_install),
        (HookKind::PostInstall, &hooks.post_install),
        (HookKind::HealthCheck, &hooks.health_check),
        (HookKind::PreRemove, &hooks.pre_remove),
    ] {
        if let Some(hook) = hook {
            check_hook(kind, hook)?;
        }
    }
    Ok(())
}

/// A hook must be one a process can be started for and that has time to run; otherwise the
/// install would get as far as the hook (or, for `preRemove`, the package could never be removed).
fn check_hook(kind: HookKind, hook: &Hook) -> Result<(), String> {
    match hook.command.first() {
        None => return Err(format!("{kind} hook has an empty command")),
        Some(program) if program.trim().is_empty() => {
            return Err(format!("{kind} hook names no program"));
        }
        Some(_) => {}
    }
    if hook.command.iter().any(|part| part.contains('\0')) {
        return Err(format!("{kind} hook command contains a NUL byte"));
    }
    if hook.timeout_seconds == 0 {
        return Err(format!("{kind} hook has a timeout of 0 seconds"));
    }
    Ok(())
}

/// The fetcher resolves a package URL against the controller's URL and can only request http(s):
/// a URL that does not resolve so (against an http or an https controller URL alike, since a
/// reference such as `http:x` means a path to one and a host to the other) is refused up front,
/// rather than failing every download attempt.
fn check_download_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("empty download URL".to_owned());
    }
    for base in ["http://controller.invalid/", "https://controller.invalid/"] {
        let base = reqwest::Url::parse(base).expect("a valid URL");
        match base.join(url) {
            Ok(resolved) if matches!(resolved.scheme(), "http" | "https") => {}
            Ok(resolved) => {
                return Err(format!(
                    "download URL `{url}` is a `{}` URL, not http(s)",
                    resolved.scheme()
                ));
            }
            Err(error) => return Err(format!("invalid download URL `{url}`: {error}")),
        }
    }
    Ok(())
}
