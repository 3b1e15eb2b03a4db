//! The allowlist: shapes by fingerprint, each with its role, tenant, count, first call site
//! and first sighting; kept in memory, loaded from and saved to a JSON file.

use crate::{Error, ErrorKind, Result};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// One learned (or allowed) statement shape, as the allowlist file holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shape {
    /// The application role it ran as (`None`: no role).
    pub role: Option<String>,
    /// The tenant (only when shapes are kept per tenant).
    pub tenant: Option<String>,
    /// PostgreSQL's fingerprint of the parse tree, 16 hex digits.
    pub fingerprint: String,
    /// The statement with its literals replaced by placeholders.
    pub statement: String,
    /// How often it ran.
    pub count: u64,
    /// When it was first seen (RFC 3339, UTC).
    pub first_seen: String,
    /// Where the application first ran it (`file:line`, when known).
    pub call_site: String,
}

struct Entry {
    role: Option<Arc<str>>,
    tenant: Option<Arc<str>>,
    statement: Arc<str>,
    count: AtomicU64,
    first_seen: String,
    call_site: String,
}

#[derive(Default)]
pub(super) struct Allowlist {
    map: RwLock<HashMap<u64, Vec<Entry>>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Allowlist {
    /// Whether the shape is allowed for `role` and `tenant` (counting the hit).
    pub(super) fn hit(&self, role: Option<&str>, tenant: Option<&str>, fingerprint: u64) -> bool {
        let map = read(&self.map);
        let Some(entries) = map.get(&fingerprint) else {
            return false;
        };
        match entries
            .iter()
            .find(|e| e.role.as_deref() == role && e.tenant.as_deref() == tenant)
        {
            Some(e) => {
                e.count.fetch_add(1, Relaxed);
                true
            }
            None => false,
        }
    }

    /// Records a shape; true when it is new.
    pub(super) fn learn(
        &self,
        role: Option<&str>,
        tenant: Option<&str>,
        shape: &crate::shape::Shape,
        site: &str,
    ) -> bool {
        let mut map = write(&self.map);
        let entries = map.entry(shape.fingerprint).or_default();
        if let Some(e) = entries
            .iter()
            .find(|e| e.role.as_deref() == role && e.tenant.as_deref() == tenant)
        {
            e.count.fetch_add(1, Relaxed);
            return false;
        }
        entries.push(Entry {
            role: role.map(Arc::from),
            tenant: tenant.map(Arc::from),
            statement: shape.normalized.clone(),
            count: AtomicU64::new(1),
            first_seen: crate::observe::rfc3339(std::time::SystemTime::now()),
            call_site: site.to_owned(),
        });
        true
    }

    pub(super) fn len(&self) -> usize {
        read(&self.map).values().map(Vec::len).sum()
    }

    pub(super) fn shapes(&self, _application: &str) -> Vec<Shape> {
        let map = read(&self.map);
        let mut out: Vec<Shape> = map
            .iter()
            .flat_map(|(fp, entries)| {
                entries.iter().map(move |e| Shape {
                    role: e.role.as_deref().map(str::to_owned),
                    tenant: e.tenant.as_deref().map(str::to_owned),
                    fingerprint: format!("{fp:016x}"),
                    statement: e.statement.to_string(),
                    count: e.count.load(Relaxed),
                    first_seen: e.first_seen.clone(),
                    call_site: e.call_site.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.role, &a.tenant, &a.statement).cmp(&(&b.role, &b.tenant, &b.statement))
        });
        out
    }

    pub(super) fn save(&self, path: &Path, application: &str) -> Result<()> {
        let shapes: Vec<Value> = self
            .shapes(application)
            .into_iter()
            .map(|s| {
                json!({
                    "role": s.role,
                    "tenant": s.tenant,
                    "fingerprint": s.fingerprint,
                    "statement": s.statement,
                    "count": s.count,
                    "first_seen": s.first_seen,
                    "call_site": s.call_site,
                })
            })
            .collect();
        let doc = json!({ "version": 1, "application": application, "shapes": shapes });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!(
                        "cannot write the firewall allowlist {}: {e}",
                        path.display()
                    ),
                )
                .with_hint("check that the directory exists and is writable")
            })
    }

    pub(super) fn load(path: &Path, application: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::new(
                ErrorKind::Config,
                format!("firewall allowlist {}: {why}", path.display()),
            )
            .with_hint("fix or remove the file (learn mode writes a new one)")
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if doc["version"] != json!(1) {
            return Err(bad("unknown version (expected 1)".into()));
        }
        match doc["application"].as_str() {
            Some(a) if a == application => {}
            other => {
                return Err(bad(format!(
                    "it belongs to application {other:?}, not {application:?}"
                )));
            }
        }
        let list = Allowlist::default();
        let mut map = write(&list.map);
        for (i, s) in doc["shapes"].as_array().into_iter().flatten().enumerate() {
            let fp = s["fingerprint"]
                .as_str()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("shape {} has no valid fingerprint", i + 1)))?;
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            map.entry(fp).or_default().push(Entry {
                role: s["role"].as_str().map(Arc::from),
                tenant: s["tenant"].as_str().map(Arc::from),
                statement: Arc::from(text("statement")),
                count: AtomicU64::new(s["count"].as_u64().unwrap_or(0)),
                first_seen: text("first_seen"),
                call_site: text("call_site"),
            });
        }
        drop(map);
        Ok(list)
    }
}
