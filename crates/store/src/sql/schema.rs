//! Schema versions: how both backends bring a database up to date.
//!
//! Each backend embeds its own migrations (the dialects' DDL differs) and makes the
//! migrating transaction exclusive its own way, since several processes may open one
//! fresh database at once; the steps inside are these: read the version reached, refuse
//! a database a newer sie migrated further, apply each newer migration and record it in
//! `schema_version` in the same transaction.

use super::Db;
use crate::domain::Timestamp;
use crate::error::{Result, StoreError};

/// The highest migration applied so far (0 on a fresh database).
const SCHEMA_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_version";

/// $1 version, $2 when.
const RECORD_MIGRATION: &str = "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)";

/// Applies the `migrations` (version, SQL; in order) that `tx`'s database lacks, after
/// creating `schema_version` by `version_table` (the backend's DDL) if it is missing.
pub(crate) fn migrate(
    tx: &mut impl Db,
    version_table: &str,
    migrations: &'static [(i64, &'static str)],
) -> Result<()> {
    tx.batch("migrate", version_table)?;
    let current = tx.one("migrate", SCHEMA_VERSION, &[], |r| r.int(0))?;
    for (version, migration) in pending(migrations, current)? {
        tx.batch("migrate", migration)?;
        let params: super::Params<'_> = &[version, &Timestamp::now().as_millis()];
        tx.exec("migrate", RECORD_MIGRATION, params)?;
    }
    Ok(())
}

/// The migrations a database at version `current` still needs, in order;
/// `SchemaTooNew` when a newer sie already migrated it further than `known` goes.
fn pending(
    known: &'static [(i64, &'static str)],
    current: i64,
) -> Result<&'static [(i64, &'static str)]> {
    let newest = known.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known: newest,
        });
    }
    Ok(&known[known.partition_point(|m| m.0 <= current)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_never_backwards() {
        const ALL: &[(i64, &str)] = &[(1, "a"), (2, "b")];
        assert_eq!(pending(ALL, 0).unwrap(), ALL);
        assert_eq!(pending(ALL, 1).unwrap(), &ALL[1..]);
        assert!(pending(ALL, 2).unwrap().is_empty());
        assert!(matches!(
            pending(ALL, 3),
            Err(StoreError::SchemaTooNew { found: 3, known: 2 })
        ));
    }
}
