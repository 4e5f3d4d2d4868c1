//! `gatewayd migrate-store`: copies an SQLite store into an empty PostgreSQL database, run while
//! the daemon is stopped.
//!
//! The source is first brought to the newest SQLite schema (by opening it as a
//! [`SqliteStore`](crate::store::sqlite::SqliteStore)), the target to the newest PostgreSQL
//! schema ([`super::migrations`]). Then, in one transaction holding the migration lock: the
//! target must be empty; every table is copied with `COPY ... FROM STDIN (FORMAT binary)`, ids
//! preserved; each identity sequence is moved past the largest id copied; and every table is
//! verified, its row count and a checksum of its rows compared between the two sides. Any
//! mismatch rolls the whole copy back and names the table.
//!
//! The checksum of a table is the SHA-256 of its rows' digests in sorted order, each row
//! rendered as text from the value written to PostgreSQL on one side and the value read back on
//! the other: it does not depend on the order either database returns rows in.

use std::path::Path;

use futures_util::{StreamExt, pin_mut};
use rusqlite::types::ValueRef;
use sha2::{Digest, Sha256};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::migrations::MIGRATION_LOCK;
use super::retention::TABLES;
use super::{col, db, describe};
use crate::store::{Store, StoreError};

/// What was copied of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    /// The table.
    pub table: String,
    /// Rows copied (and found in the target).
    pub rows: u64,
    /// The first 16 hex digits of the checksum both sides agree on.
    pub checksum: String,
}

/// One value as it is written to PostgreSQL.
#[derive(Debug, Clone)]
enum Cell {
    Int(Option<i64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

impl Cell {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int(v) => v,
            Cell::Bool(v) => v,
            Cell::Text(v) => v,
            Cell::Bytes(v) => v,
        }
    }

    /// The value as text for the checksum: the same for a value and its copy.
    fn render(&self, out: &mut Vec<u8>) {
        match self {
            Cell::Int(None) | Cell::Bool(None) | Cell::Text(None) | Cell::Bytes(None) => {
                out.extend_from_slice(b"\\N");
            }
            Cell::Int(Some(n)) => out.extend_from_slice(n.to_string().as_bytes()),
            Cell::Bool(Some(b)) => out.push(if *b { b't' } else { b'f' }),
            Cell::Text(Some(s)) => {
                for b in s.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        _ => out.push(b),
                    }
                }
            }
            Cell::Bytes(Some(bytes)) => out.extend_from_slice(hex::encode(bytes).as_bytes()),
        }
    }
}

/// A column of a target table: its name and PostgreSQL type.
struct Column {
    name: String,
    ty: Type,
}

fn row_digest(cells: &[Cell]) -> [u8; 32] {
    let mut text = Vec::with_capacity(64);
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            text.push(b'\t');
        }
        c.render(&mut text);
    }
    Sha256::digest(&text).into()
}

fn checksum(mut digests: Vec<[u8; 32]>) -> String {
    digests.sort_unstable();
    let mut hasher = Sha256::new();
    for d in &digests {
        hasher.update(d);
    }
    hex::encode(hasher.finalize())
}

/// A SQLite value as the PostgreSQL type of its column; `None` when it cannot be.
fn convert(value: ValueRef<'_>, ty: &Type) -> Option<Cell> {
    Some(match (value, ty) {
        (ValueRef::Null, &Type::INT8) => Cell::Int(None),
        (ValueRef::Null, &Type::BOOL) => Cell::Bool(None),
        (ValueRef::Null, &Type::TEXT) => Cell::Text(None),
        (ValueRef::Null, &Type::BYTEA) => Cell::Bytes(None),
        (ValueRef::Integer(n), &Type::INT8) => Cell::Int(Some(n)),
        (ValueRef::Integer(n), &Type::BOOL) => Cell::Bool(Some(n != 0)),
        (ValueRef::Integer(n), &Type::TEXT) => Cell::Text(Some(n.to_string())),
        (ValueRef::Real(f), &Type::TEXT) => Cell::Text(Some(f.to_string())),
        (ValueRef::Text(t), &Type::TEXT) => Cell::Text(Some(String::from_utf8(t.to_vec()).ok()?)),
        (ValueRef::Text(t), &Type::INT8) => {
            Cell::Int(Some(std::str::from_utf8(t).ok()?.trim().parse().ok()?))
        }
        (ValueRef::Blob(b), &Type::BYTEA) => Cell::Bytes(Some(b.to_vec())),
        (ValueRef::Blob(b), &Type::TEXT) => Cell::Text(Some(String::from_utf8(b.to_vec()).ok()?)),
        _ => return None,
    })
}

/// A value read back from PostgreSQL as a [`Cell`] of its column's type.
fn read_back(row: &tokio_postgres::Row, i: usize, ty: &Type) -> Result<Cell, StoreError> {
    Ok(match *ty {
        Type::INT8 => Cell::Int(col(row, i)?),
        Type::BOOL => Cell::Bool(col(row, i)?),
        Type::BYTEA => Cell::Bytes(col(row, i)?),
        _ => Cell::Text(col(row, i)?),
    })
}

/// Copies the SQLite store at `source` into the empty PostgreSQL database of `target`, and
/// verifies every table; the per-table summary on success. See the module documentation.
pub async fn migrate_from_sqlite(
    source: &Path,
    mut target: tokio_postgres::Config,
) -> Result<Vec<TableCopy>, StoreError> {
    target.options("-c synchronous_commit=on");
    if !source.is_file() {
        return Err(StoreError::NotFound(format!(
            "{} is not a database file; name the SQLite store with --from sqlite:PATH",
            source.display()
        )));
    }
    // Brings the source to the newest schema, so its columns are the target's.
    let sqlite = crate::store::sqlite::SqliteStore::open(source)?;
    sqlite.close().await;
    let src = rusqlite::Connection::open_with_flags(
        source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", source.display())))?;
    let sqlite_error = |e: rusqlite::Error| StoreError::Database(format!("SQLite: {e}"));
    // One read transaction: a consistent snapshot of every table.
    src.execute_batch("BEGIN").map_err(sqlite_error)?;

    let where_to = describe(&target);
    let (mut client, connection) =
        target
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| match db(e) {
                StoreError::Database(m) => {
                    StoreError::Database(format!("cannot connect to {where_to}: {m}"))
                }
                other => other,
            })?;
    let connection = tokio::spawn(connection);
    super::migrations::migrate(&mut client).await?;

    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    for table in TABLES {
        let row = tx
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await
            .map_err(db)?;
        let n: i64 = col(&row, 0)?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "the target database {where_to} is not empty: table {table} has {n} rows; migrate into a new, empty database"
            )));
        }
    }
    let mut summary = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let columns: Vec<Column> = tx
            .query(
                "SELECT a.attname, a.atttypid FROM pg_attribute a
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
                &[table],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                let oid: u32 = col(r, 1)?;
                Ok(Column {
                    name: col(r, 0)?,
                    ty: Type::from_oid(oid).unwrap_or(Type::TEXT),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        // Columns only the shared store has (a session's `partition` in multi-instance mode)
        // stay NULL: the embedded store never had them.
        let source_columns: std::collections::HashSet<String> = src
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .and_then(|mut stmt| {
                stmt.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<_, _>>()
            })
            .map_err(sqlite_error)?;
        let columns: Vec<Column> = columns
            .into_iter()
            .filter(|c| source_columns.contains(&c.name))
            .collect();
        let names = columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let types: Vec<Type> = columns.iter().map(|c| c.ty.clone()).collect();

        // Copy, taking each row's digest from the value written.
        let mut source_digests = Vec::new();
        {
            let sink = tx
                .copy_in(&format!(
                    "COPY {table} ({names}) FROM STDIN (FORMAT binary)"
                ))
                .await
                .map_err(db)?;
            let writer = BinaryCopyInWriter::new(sink, &types);
            pin_mut!(writer);
            let mut stmt = src
                .prepare(&format!("SELECT {names} FROM {table}"))
                .map_err(sqlite_error)?;
            let mut rows = stmt.query([]).map_err(sqlite_error)?;
            while let Some(row) = rows.next().map_err(sqlite_error)? {
                let mut cells = Vec::with_capacity(columns.len());
                for (i, c) in columns.iter().enumerate() {
                    let value = row.get_ref(i).map_err(sqlite_error)?;
                    let cell = convert(value, &c.ty).ok_or_else(|| {
                        StoreError::Database(format!(
                            "table {table}: column {} holds a value PostgreSQL's {} cannot take",
                            c.name, c.ty
                        ))
                    })?;
                    cells.push(cell);
                }
                source_digests.push(row_digest(&cells));
                let values: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::sql).collect();
                writer
                    .as_mut()
                    .write(&values)
                    .await
                    .map_err(|e| table_error(table, e))?;
            }
            writer.finish().await.map_err(|e| table_error(table, e))?;
        }
        if columns.iter().any(|c| c.name == "id") {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                        GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1),
                        (SELECT COUNT(*) > 0 FROM {table}))"
                ),
                &[],
            )
            .await
            .map_err(|e| table_error(table, e))?;
        }

        // Verify: read everything back.
        let mut target_digests = Vec::with_capacity(source_digests.len());
        let stream = tx
            .query_raw(
                &format!("SELECT {names} FROM {table}"),
                std::iter::empty::<i64>(),
            )
            .await
            .map_err(db)?;
        pin_mut!(stream);
        while let Some(row) = stream.next().await {
            let row = row.map_err(db)?;
            let cells = columns
                .iter()
                .enumerate()
                .map(|(i, c)| read_back(&row, i, &c.ty))
                .collect::<Result<Vec<_>, _>>()?;
            target_digests.push(row_digest(&cells));
        }
        let (source_rows, target_rows) = (source_digests.len(), target_digests.len());
        if source_rows != target_rows {
            return Err(StoreError::Database(format!(
                "table {table}: {source_rows} rows in SQLite but {target_rows} in PostgreSQL; nothing was kept"
            )));
        }
        let (source_sum, target_sum) = (checksum(source_digests), checksum(target_digests));
        if source_sum != target_sum {
            return Err(StoreError::Database(format!(
                "table {table}: the rows differ after the copy (checksum {} in SQLite, {} in PostgreSQL); nothing was kept",
                &source_sum[..16],
                &target_sum[..16]
            )));
        }
        summary.push(TableCopy {
            table: (*table).to_owned(),
            rows: source_rows as u64,
            checksum: source_sum[..16].to_owned(),
        });
    }
    tx.commit().await.map_err(db)?;
    drop(client);
    let _ = connection.await;
    Ok(summary)
}

fn table_error(table: &str, e: tokio_postgres::Error) -> StoreError {
    match db(e) {
        StoreError::Database(m) => {
            StoreError::Database(format!("table {table}: {m}; nothing was kept"))
        }
        other => other,
    }
}
