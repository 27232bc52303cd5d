//! API keys and signed URLs.
//!
//! - Key material comes from the environment or a file only readable by its
//!   owner, never from the config. Only the SHA-256 of each key is kept in
//!   memory; a presented key is hashed and looked up.
//! - A signed URL carries `expires` (Unix seconds) and `token`, the
//!   HMAC-SHA256 of `GET\n{path}\n{expires}` under the server secret,
//!   base64url without padding. It is checked in constant time, then for
//!   expiry.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::config::ApiConfig;

/// Shortest key or secret accepted, in bytes.
pub const SECRET_MIN: usize = 16;

/// What one key may do.
#[derive(Debug, Clone)]
pub struct Grant {
    pub name: String,
    /// `None`: every namespace.
    pub namespaces: Option<HashSet<String>>,
    pub write: bool,
}

impl Grant {
    pub fn allows(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|s| s.contains(ns))
    }
}

/// The configured keys, by the SHA-256 of their material.
#[derive(Debug, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Grant>,
}

/// Reads a secret from a file that group and others cannot read.
pub fn read_secret_file(path: &Path, what: &str) -> Result<String, String> {
    Ok(crate::config::read_private_file(path, what)?
        .trim()
        .to_string())
}

fn check_length(secret: &str, what: &str) -> Result<(), String> {
    if secret.len() < SECRET_MIN {
        return Err(format!(
            "{what} is shorter than {SECRET_MIN} characters; use a long random value"
        ));
    }
    Ok(())
}

impl Keys {
    /// Loads every configured key's material.
    pub fn load(cfg: &ApiConfig) -> Result<Keys, String> {
        let mut keys = Keys::default();
        for (name, k) in &cfg.keys {
            let secret = match &k.key_file {
                Some(p) => read_secret_file(p, &format!("api key {name}"))?,
                None => {
                    let var = k.env_name(name);
                    match std::env::var(&var) {
                        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
                        _ => {
                            return Err(format!(
                                "api key {name}: set the environment variable {var} (or key_file)"
                            ));
                        }
                    }
                }
            };
            check_length(&secret, &format!("api key {name}"))?;
            let grant = Grant {
                name: name.clone(),
                namespaces: if k.namespaces.iter().any(|n| n == "*") {
                    None
                } else {
                    Some(k.namespaces.iter().cloned().collect())
                },
                write: k.write,
            };
            if keys.by_hash.insert(hash(&secret), grant).is_some() {
                return Err(format!(
                    "api key {name}: the same key material is given to two keys"
                ));
            }
        }
        Ok(keys)
    }

    /// The grant of a presented key.
    pub fn check(&self, presented: &str) -> Option<&Grant> {
        self.by_hash.get(&hash(presented))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

fn hash(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Signs and checks URLs.
pub struct Signer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { secret: <hidden> }")
    }
}

/// Why a signed URL was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SignError {
    Malformed,
    BadSignature,
    Expired(u64),
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            secret: secret.to_vec(),
        }
    }

    /// The secret the config names: its environment variable, else its
    /// file, else `<data_dir>/signing.key`, made (random, 0600) if missing.
    pub fn load(cfg: &ApiConfig, data_dir: &Path) -> Result<Signer, String> {
        if let Ok(v) = std::env::var(&cfg.signing_key_env)
            && !v.trim().is_empty()
        {
            check_length(v.trim(), "the signing key")?;
            return Ok(Signer::new(v.trim().as_bytes()));
        }
        let path = match &cfg.signing_key_file {
            Some(p) => p.clone(),
            None => {
                let p = data_dir.join("signing.key");
                if !p.exists() {
                    make_secret_file(&p)?;
                    tracing::info!(file = %p.display(), "made a new URL-signing key");
                }
                p
            }
        };
        let s = read_secret_file(&path, "signing key")?;
        check_length(&s, "the signing key")?;
        Ok(Signer::new(s.as_bytes()))
    }

    fn mac(&self, path: &str, expires: u64) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any length");
        m.update(format!("GET\n{path}\n{expires}").as_bytes());
        m
    }

    /// The token for `path` (plain `ns/a/b`) valid until `expires`.
    pub fn sign(&self, path: &str, expires: u64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(path, expires).finalize().into_bytes())
    }

    /// Checks a token (constant-time comparison), then the expiry.
    pub fn verify(
        &self,
        path: &str,
        expires: &str,
        token: &str,
        now: u64,
    ) -> Result<(), SignError> {
        if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(SignError::Malformed);
        }
        let exp: u64 = expires.parse().map_err(|_| SignError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .map_err(|_| SignError::Malformed)?;
        self.mac(path, exp)
            .verify_slice(&tag)
            .map_err(|_| SignError::BadSignature)?;
        if now > exp {
            return Err(SignError::Expired(exp));
        }
        Ok(())
    }
}

/// Writes 32 random bytes, hex, to a new file of mode 0600.
fn make_secret_file(path: &Path) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(hex.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_must_be_the_daemons_own_regular_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&p, "k").unwrap(), "0123456789abcdef0123");
        // A symlink to a private file is refused: it is not the file named.
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        let e = read_secret_file(&l, "k").unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        // Group or other bits.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_secret_file(&p, "k").unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Not a regular file.
        assert!(read_secret_file(d.path(), "k").is_err());
        // Owned by someone else (only root can give a file away).
        if crate::config::is_root() {
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
            let e = read_secret_file(&p, "k").unwrap_err();
            assert!(e.contains("owned by uid 65534"), "{e}");
            assert!(!e.contains("0123456789"), "the secret leaked: {e}");
        }
    }

    #[test]
    fn signed_tokens_check_path_expiry_and_secret() {
        let s = Signer::new(b"0123456789abcdef0123");
        let t = s.sign("corp/a.pdf", 2000);
        assert_eq!(s.verify("corp/a.pdf", "2000", &t, 1000), Ok(()));
        assert_eq!(
            s.verify("corp/b.pdf", "2000", &t, 1000),
            Err(SignError::BadSignature)
        );
        assert_eq!(
            s.verify("corp/a.pdf", "2001", &t, 1000),
            Err(SignError::BadSignature)
        );
        assert_eq!(
            s.verify("corp/a.pdf", "2000", &t, 2001),
            Err(SignError::Expired(2000))
        );
        let mut bad = t.clone().into_bytes();
        bad[0] = if bad[0] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(
            s.verify("corp/a.pdf", "2000", &bad, 1000),
            Err(SignError::BadSignature)
        );
        assert_eq!(
            s.verify("corp/a.pdf", "20x0", &t, 1000),
            Err(SignError::Malformed)
        );
        assert_eq!(
            s.verify("corp/a.pdf", "2000", "!!", 1000),
            Err(SignError::Malformed)
        );
        let other = Signer::new(b"another secret of 20b");
        assert_eq!(
            other.verify("corp/a.pdf", "2000", &t, 1000),
            Err(SignError::BadSignature)
        );
        // An expired token with a bad signature reports the signature.
        assert_eq!(
            s.verify("corp/b.pdf", "2000", &t, 5000),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        let hex: String = m
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
