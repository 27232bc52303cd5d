//! Listings of the WebDAV backend, folder by folder with `Depth: 1` (never
//! `Depth: infinity`, which many servers refuse).
//!
//! On Nextcloud a folder's ETag changes whenever anything below it changes,
//! so the members of each folder are kept with the ETag the folder had when
//! they were read: a listing asks for the top folder's ETag (`Depth: 0`)
//! and reads again only the folders whose ETag is not the one kept. An
//! unchanged tree costs one request however many files it holds.
//!
//! Invariant of the kept listings: the members kept for a folder are those
//! it had at or after the moment its ETag was the one kept with them (both
//! come from the same `Depth: 1` answer), so an equal ETag later means the
//! same members, recursively.

use super::xml::{DavEntry, Props};
use super::{CachedDir, Flavor, TMP_PREFIX, WebDavBackend};
use crate::backend::{BResult, ObjInfo, ObjKind, check_key};

impl WebDavBackend {
    pub(super) async fn list_in(&self, flavor: Flavor, prefix: &str) -> BResult<Vec<ObjInfo>> {
        let props = Self::props(flavor);
        let top = self.dir_path(prefix);
        let mut out = Vec::new();
        // Folders to read: (key, ETag seen from above, if any).
        let mut todo: Vec<(String, Option<String>)> = Vec::new();
        match flavor {
            Flavor::Nextcloud => {
                let Some(entries) = self.propfind(&top, 0, props).await? else {
                    return self.absent_top(prefix);
                };
                let etag = entries
                    .iter()
                    .find(|e| self.key_of_href(&e.href).as_deref() == Some(prefix))
                    .and_then(|e| e.etag.clone());
                todo.push((prefix.to_string(), etag));
            }
            Flavor::Plain => todo.push((prefix.to_string(), None)),
        }
        let mut seen_dirs = Vec::new();
        while let Some((dir, etag)) = todo.pop() {
            let kept = etag.as_ref().and_then(|e| {
                let cache = self.listing.lock().unwrap();
                cache
                    .get(&dir)
                    .filter(|c| &c.etag == e)
                    .map(|c| c.members.clone())
            });
            let members = match kept {
                Some(m) => m,
                None => match self.read_folder(flavor, &dir, props).await? {
                    Some((self_etag, members)) => {
                        if flavor == Flavor::Nextcloud && !self_etag.is_empty() {
                            self.listing.lock().unwrap().insert(
                                dir.clone(),
                                CachedDir {
                                    etag: self_etag,
                                    members: members.clone(),
                                },
                            );
                        }
                        members
                    }
                    // Removed while being listed.
                    None if dir == prefix => return self.absent_top(prefix),
                    None => continue,
                },
            };
            seen_dirs.push(dir);
            for m in members {
                if m.kind == ObjKind::Dir {
                    todo.push((m.key.clone(), Some(m.etag.clone())));
                }
                out.push(m);
            }
        }
        if flavor == Flavor::Nextcloud {
            // Forget folders under the prefix that are gone.
            let seen: std::collections::HashSet<String> = seen_dirs.into_iter().collect();
            let under = format!("{prefix}/");
            self.listing.lock().unwrap().retain(|k, _| {
                let inside = prefix.is_empty() || k == prefix || k.starts_with(&under);
                !inside || seen.contains(k)
            });
        }
        Ok(out)
    }

    /// The listing of a prefix that does not exist: empty, unless it is the
    /// whole folder (its loss must not read as every file deleted).
    fn absent_top(&self, prefix: &str) -> BResult<Vec<ObjInfo>> {
        if prefix.is_empty() {
            Err(self.missing_root())
        } else {
            Ok(Vec::new())
        }
    }

    /// The members of folder `dir` and its own ETag, from one `Depth: 1`
    /// PROPFIND; `None` if it is not there.
    async fn read_folder(
        &self,
        flavor: Flavor,
        dir: &str,
        props: Props,
    ) -> BResult<Option<(String, Vec<ObjInfo>)>> {
        let Some(entries) = self.propfind(&self.dir_path(dir), 1, props).await? else {
            return Ok(None);
        };
        let mut self_etag = String::new();
        let mut members = Vec::new();
        for e in &entries {
            if e.status.is_some_and(|s| s != 200) {
                continue;
            }
            let Some(key) = self.key_of_href(&e.href) else {
                continue;
            };
            if key == dir {
                if !e.collection {
                    return Ok(None);
                }
                self_etag = e.etag.clone().unwrap_or_default();
                continue;
            }
            if let Some(m) = self.member(flavor, dir, key, e) {
                members.push(m);
            }
        }
        Ok(Some((self_etag, members)))
    }

    /// A member of folder `dir` as listed, unless it is one of this
    /// backend's temporaries or a name unusable as a path.
    fn member(&self, flavor: Flavor, dir: &str, key: String, e: &DavEntry) -> Option<ObjInfo> {
        let parent = key.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        if parent != dir {
            // Not a direct member (a server answering deeper than asked).
            return None;
        }
        let name = key.rsplit('/').next().unwrap_or(&key);
        if name.starts_with(TMP_PREFIX) {
            return None;
        }
        if check_key(&key).is_err() {
            tracing::warn!(path = %key, "skipping an entry whose name is not a usable path");
            return None;
        }
        Some(self.info(flavor, key, e))
    }
}
