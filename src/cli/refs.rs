//! `locker ref`, `locker resolve` and `locker sign`: between paths in the
//! mount, `locker://` references and signed URLs.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::api::auth::Signer;
use crate::api::path::{self, ApiPath};
use crate::core::namespace::{REF_SCHEME, encode_ref_path};

/// Mount points of LOCKER file systems, from /proc/self/mountinfo.
fn locker_mounts() -> Vec<PathBuf> {
    super::mount::mounts()
        .into_iter()
        // "fuse.locker", or "fuse" with a source "locker..." (as mounted
        // without the subtype).
        .filter(|m| {
            m.fstype == "fuse.locker"
                || (m.fstype.starts_with("fuse") && m.source.starts_with("locker"))
        })
        .map(|m| m.point)
        .collect()
}

/// The folder a LOCKER mount shows (`--namespace`), as its namespace path;
/// `None` for a mount of every namespace. Its root's `user.locker.ref`
/// says (the store's root has none).
fn mount_folder(mp: &Path) -> Option<ApiPath> {
    let c = std::ffi::CString::new(mp.as_os_str().as_bytes()).ok()?;
    let name = c"user.locker.ref";
    let mut buf = vec![0u8; 8192];
    // SAFETY: both strings are NUL-terminated; buf is writable for its length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    path::parse_ref(std::str::from_utf8(&buf).ok()?).ok()
}

/// The namespace path of a file in a LOCKER mount.
fn path_in_mount(p: &Path) -> anyhow::Result<ApiPath> {
    let abs = std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?;
    let mounts = locker_mounts();
    let Some(mp) = mounts
        .iter()
        .filter(|m| abs.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
    else {
        bail!("{} is not inside a LOCKER mount", abs.display());
    };
    let rel = abs.strip_prefix(mp).expect("checked prefix");
    let rel = rel
        .to_str()
        .with_context(|| format!("{}: the path is not UTF-8", abs.display()))?;
    let text = match mount_folder(mp) {
        Some(f) if rel.is_empty() => f.joined(),
        Some(f) => format!("{}/{rel}", f.joined()),
        None => rel.to_string(),
    };
    let text = text.as_str();
    path::parse_plain(text).map_err(|e| {
        if text.is_empty() {
            anyhow::anyhow!("{} is the root of the mount, not a file", abs.display())
        } else {
            anyhow::anyhow!("{}: {e}", abs.display())
        }
    })
}

/// `locker ref PATH`.
pub fn reference(p: &Path) -> anyhow::Result<()> {
    let ap = path_in_mount(p)?;
    println!("{REF_SCHEME}{}", encode_ref_path(ap.joined().as_bytes()));
    Ok(())
}

/// `locker resolve REF`.
pub fn resolve(r: &str, mountpoint: Option<&Path>) -> anyhow::Result<()> {
    let ap = path::parse_ref(r)
        .map_err(|e| anyhow::anyhow!("{r:?} is not a locker://namespace/path reference: {e}"))?;
    // Each mount with the names the reference has below its folder.
    let below = |mp: &Path| -> Option<PathBuf> {
        let all: Vec<&str> = std::iter::once(ap.ns.as_str())
            .chain(ap.names.iter().map(String::as_str))
            .collect();
        let skip = match mount_folder(mp) {
            None => 0,
            Some(f) => {
                let folder: Vec<&str> = std::iter::once(f.ns.as_str())
                    .chain(f.names.iter().map(String::as_str))
                    .collect();
                if !all.starts_with(&folder) {
                    return None;
                }
                folder.len()
            }
        };
        let mut local = mp.to_path_buf();
        local.extend(&all[skip..]);
        Some(local)
    };
    let local = match mountpoint {
        Some(m) => below(m)
            .with_context(|| format!("{r} is not below the folder mounted at {}", m.display()))?,
        None => {
            let found: Vec<PathBuf> = locker_mounts().iter().filter_map(|m| below(m)).collect();
            match found.as_slice() {
                [one] => one.clone(),
                [] => bail!("no active LOCKER mount shows {r}; pass --mountpoint"),
                many => bail!(
                    "several LOCKER mounts show {r} ({}); pass --mountpoint",
                    many.iter()
                        .map(|m| m.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    match std::fs::symlink_metadata(&local) {
        Ok(_) => {
            println!("{}", local.display());
            Ok(())
        }
        Err(e) => bail!("{}: {e}", local.display()),
    }
}

/// Parses a lifetime: seconds, or a number with s, m, h or d.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 =
        num.parse().ok().filter(|n| *n > 0).with_context(|| {
            format!("{s:?}: expected a duration such as 3600, 90s, 15m, 1h or 7d")
        })?;
    n.checked_mul(mult).context("duration too long")
}

/// `locker sign PATH --expires D`: PATH is a file in the mount, a
/// `locker://` reference, or `namespace/path`.
pub fn sign(
    target: &str,
    expires: &str,
    config: Option<&Path>,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let Some(api) = &cfg.api else {
        bail!("the config has no [api] section, which gives the public URL and the signing key");
    };
    let ap = if target.starts_with(REF_SCHEME) {
        path::parse_ref(target).map_err(|e| anyhow::anyhow!("{target}: {e}"))?
    } else if Path::new(target).exists() {
        path_in_mount(Path::new(target))?
    } else {
        path::parse_plain(target).map_err(|e| anyhow::anyhow!("{target}: {e}"))?
    };
    let secs = parse_duration(expires)?;
    if secs > api.max_expires_in_s {
        bail!(
            "--expires {expires} is longer than api.max_expires_in_s ({} s)",
            api.max_expires_in_s
        );
    }
    let data = super::data_path(&cfg, data_dir);
    let signer = Signer::load(api, &data).map_err(|e| anyhow::anyhow!(e))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let exp = now + secs;
    let token = signer.sign(&ap.joined(), exp);
    println!(
        "{}/{}?token={token}&expires={exp}",
        api.base_url(),
        ap.url_path()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600").unwrap(), 3600);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("1w").is_err());
    }
}
