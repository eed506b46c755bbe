//! Schema upgrades, one step per version; each step's layout is described in `migrations/`.
//!
//! v1 (`migrations/0001_initial.md`) is the first schema, so there is nothing to upgrade from yet.
//! A later version adds `fn v1_to_v2(kv)` here and a `migrations/0002_*.md` describing it.

use super::Kv;

/// Upgrades a store of schema `from` to the current version, in place.
pub fn upgrade<K: Kv>(_kv: &mut K, from: u32) -> Result<(), String> {
    Err(format!(
        "schema v{from} is older than the first schema (v1); this is not a store snapbank wrote"
    ))
}
