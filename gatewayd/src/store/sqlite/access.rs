//! Access control in SQLite: pairing requests (`pairing_requests`) with their kept messages
//! (`pairing_kept`, inbox ids whose rows stay pending until the request is decided), approved
//! users (`access_approvals`), blocked users (`access_blocks`), and inbox rows dropped without a
//! turn (`inbox.done = 1`, with `inbox.blocked` for a blocked sender).

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::atomic;
use super::{SqliteStore, db};
use crate::message::UserId;
use crate::store::{
    Kept, PairingMessage, PairingRequest, PendingInbound, StoreError, UserFlags, parse_channel,
};

pub(super) async fn inbox_drop(
    store: &SqliteStore,
    inbox_id: i64,
    blocked: bool,
) -> Result<(), StoreError> {
    store
        .write(move |conn| {
            conn.execute(
                "UPDATE inbox SET done = 1, blocked = ?2 WHERE id = ?1 AND done = 0",
                params![inbox_id, blocked],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
}

/// Whether `table` holds `user` or a user merged into it.
fn holds(conn: &Connection, table: &str, user: UserId) -> Result<bool, StoreError> {
    conn.query_row(
        &format!(
            "SELECT 1 FROM {table} WHERE user_id = ?1
                OR user_id IN (SELECT id FROM users WHERE merged_into = ?1) LIMIT 1"
        ),
        [user],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .map_err(db)
}

pub(super) async fn access_flags(
    store: &SqliteStore,
    user: UserId,
) -> Result<UserFlags, StoreError> {
    store
        .read(move |conn| {
            Ok(UserFlags {
                approved: holds(conn, "access_approvals", user)?,
                blocked: holds(conn, "access_blocks", user)?,
                budget: super::usage::override_of(conn, user)?,
            })
        })
        .await
}

pub(super) async fn set_blocked(
    store: &SqliteStore,
    user: UserId,
    blocked: bool,
) -> Result<(), StoreError> {
    let now = crate::message::now_ms();
    store
        .write(move |conn| {
            let exists = conn
                .query_row("SELECT 1 FROM users WHERE id = ?1", [user], |_| Ok(()))
                .optional()
                .map_err(db)?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(format!("no user {user}")));
            }
            if blocked {
                conn.execute(
                    "INSERT OR IGNORE INTO access_blocks (user_id, blocked_at) VALUES (?1, ?2)",
                    params![user, now],
                )
            } else {
                conn.execute(
                    "DELETE FROM access_blocks WHERE user_id = ?1
                        OR user_id IN (SELECT id FROM users WHERE merged_into = ?1)",
                    [user],
                )
            }
            .map(|_| ())
            .map_err(db)
        })
        .await
}

pub(super) async fn pairing_expire(store: &SqliteStore, now: i64) -> Result<(), StoreError> {
    store
        .write(move |conn| atomic(conn, |conn| expire(conn, now)))
        .await
}

/// Removes every request expired at `now`, marking its kept messages done.
fn expire(conn: &Connection, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE inbox SET done = 1 WHERE done = 0 AND id IN (
            SELECT k.inbox_id FROM pairing_kept k JOIN pairing_requests p ON p.code = k.code
            WHERE p.expires_at <= ?1)",
        [now],
    )
    .map_err(db)?;
    conn.execute(
        "DELETE FROM pairing_kept WHERE code IN (SELECT code FROM pairing_requests WHERE expires_at <= ?1)",
        [now],
    )
    .map_err(db)?;
    conn.execute("DELETE FROM pairing_requests WHERE expires_at <= ?1", [now])
        .map_err(db)?;
    Ok(())
}

pub(super) async fn pairing_keep(
    store: &SqliteStore,
    msg: PairingMessage,
) -> Result<Kept, StoreError> {
    store
        .write(move |conn| {
            atomic(conn, |conn| {
                expire(conn, msg.now_ms)?;
                let done: Option<i64> = conn
                    .query_row(
                        "SELECT done FROM inbox WHERE id = ?1",
                        [msg.inbox_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db)?;
                if done != Some(0) {
                    return Ok(Kept::Settled);
                }
                let channel = msg.channel.as_str();
                let existing: Option<(String, i64)> = conn
                    .query_row(
                        "SELECT code, last_reply_at FROM pairing_requests
                         WHERE channel = ?1 AND sender_id = ?2",
                        params![channel, msg.sender_id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(db)?;
                let (code, reply, new) = match existing {
                    Some((code, last_reply)) => {
                        let reply = msg.now_ms.saturating_sub(last_reply) >= msg.reply_interval_ms;
                        if reply {
                            conn.execute(
                                "UPDATE pairing_requests SET last_reply_at = ?2 WHERE code = ?1",
                                params![code, msg.now_ms],
                            )
                            .map_err(db)?;
                        }
                        (code, reply, false)
                    }
                    None => {
                        let pending: i64 = conn
                            .query_row(
                                "SELECT COUNT(*) FROM pairing_requests WHERE channel = ?1",
                                [channel],
                                |r| r.get(0),
                            )
                            .map_err(db)?;
                        if usize::try_from(pending).unwrap_or(usize::MAX) >= msg.max_pending {
                            conn.execute(
                                "UPDATE inbox SET done = 1 WHERE id = ?1 AND done = 0",
                                [msg.inbox_id],
                            )
                            .map_err(db)?;
                            return Ok(Kept::Full);
                        }
                        conn.execute(
                            "INSERT INTO pairing_requests (code, channel, sender_id, user_id,
                                display_name, first_seen, expires_at, last_reply_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
                            params![
                                msg.new_code,
                                channel,
                                msg.sender_id,
                                msg.user_id,
                                msg.display_name,
                                msg.now_ms,
                                msg.expires_at_ms
                            ],
                        )
                        .map_err(db)?;
                        (msg.new_code.clone(), true, true)
                    }
                };
                conn.execute(
                    "INSERT OR IGNORE INTO pairing_kept (inbox_id, code) VALUES (?1, ?2)",
                    params![msg.inbox_id, code],
                )
                .map_err(db)?;
                // Older kept messages beyond the limit are marked done, unanswered.
                let keep = i64::try_from(msg.keep_max).unwrap_or(i64::MAX);
                let old: Vec<i64> = {
                    let mut stmt = conn
                        .prepare(
                            "SELECT inbox_id FROM pairing_kept WHERE code = ?1
                             ORDER BY inbox_id DESC LIMIT -1 OFFSET ?2",
                        )
                        .map_err(db)?;
                    let rows = stmt
                        .query_map(params![code, keep], |r| r.get(0))
                        .map_err(db)?;
                    rows.collect::<Result<_, _>>().map_err(db)?
                };
                for id in old {
                    conn.execute("DELETE FROM pairing_kept WHERE inbox_id = ?1", [id])
                        .map_err(db)?;
                    conn.execute("UPDATE inbox SET done = 1 WHERE id = ?1 AND done = 0", [id])
                        .map_err(db)?;
                }
                Ok(Kept::Kept { code, reply, new })
            })
        })
        .await
}

const REQUEST_COLUMNS: &str =
    "code, channel, sender_id, user_id, display_name, first_seen, expires_at";

fn request_of(conn: &Connection, row: &rusqlite::Row<'_>) -> Result<PairingRequest, StoreError> {
    let code: String = row.get(0).map_err(db)?;
    let channel: String = row.get(1).map_err(db)?;
    let mut stmt = conn
        .prepare_cached("SELECT inbox_id FROM pairing_kept WHERE code = ?1 ORDER BY inbox_id")
        .map_err(db)?;
    let kept = stmt
        .query_map([&code], |r| r.get(0))
        .map_err(db)?
        .collect::<Result<Vec<i64>, _>>()
        .map_err(db)?;
    Ok(PairingRequest {
        channel: parse_channel(&channel)?,
        sender_id: row.get(2).map_err(db)?,
        user_id: row.get(3).map_err(db)?,
        display_name: row.get(4).map_err(db)?,
        first_seen_ms: row.get(5).map_err(db)?,
        expires_at_ms: row.get(6).map_err(db)?,
        kept,
        code,
    })
}

fn requests(
    conn: &Connection,
    code: Option<&str>,
    now: i64,
) -> Result<Vec<PairingRequest>, StoreError> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM pairing_requests
         WHERE expires_at > ?1 AND (?2 IS NULL OR code = ?2) ORDER BY first_seen, code"
    );
    let mut stmt = conn.prepare(&sql).map_err(db)?;
    let mut rows = stmt.query(params![now, code]).map_err(db)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        out.push(request_of(conn, row)?);
    }
    Ok(out)
}

pub(super) async fn pairing_list(
    store: &SqliteStore,
    now: i64,
) -> Result<Vec<PairingRequest>, StoreError> {
    store.read(move |conn| requests(conn, None, now)).await
}

pub(super) async fn pairing_get(
    store: &SqliteStore,
    code: &str,
    now: i64,
) -> Result<Option<PairingRequest>, StoreError> {
    let code = code.to_owned();
    store
        .read(move |conn| Ok(requests(conn, Some(&code), now)?.into_iter().next()))
        .await
}

/// Takes the pending request `code` out of the tables.
fn take(conn: &Connection, code: &str, now: i64) -> Result<PairingRequest, StoreError> {
    let request = requests(conn, Some(code), now)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "no pending pairing request `{code}`; see `gatewayctl pairing list`"
            ))
        })?;
    conn.execute("DELETE FROM pairing_kept WHERE code = ?1", [code])
        .map_err(db)?;
    conn.execute("DELETE FROM pairing_requests WHERE code = ?1", [code])
        .map_err(db)?;
    Ok(request)
}

pub(super) async fn pairing_approve(
    store: &SqliteStore,
    code: &str,
    user: UserId,
    now: i64,
) -> Result<PairingRequest, StoreError> {
    let code = code.to_owned();
    store
        .write(move |conn| {
            atomic(conn, |conn| {
                let request = take(conn, &code, now)?;
                conn.execute(
                    "INSERT OR IGNORE INTO access_approvals (user_id, approved_at) VALUES (?1, ?2)",
                    params![user, now],
                )
                .map_err(db)?;
                Ok(request)
            })
        })
        .await
}

pub(super) async fn pairing_deny(
    store: &SqliteStore,
    code: &str,
    now: i64,
) -> Result<PairingRequest, StoreError> {
    let code = code.to_owned();
    store
        .write(move |conn| {
            atomic(conn, |conn| {
                let request = take(conn, &code, now)?;
                for id in &request.kept {
                    conn.execute("UPDATE inbox SET done = 1 WHERE id = ?1 AND done = 0", [id])
                        .map_err(db)?;
                }
                Ok(request)
            })
        })
        .await
}

pub(super) async fn inbox_rows(
    store: &SqliteStore,
    ids: &[i64],
) -> Result<Vec<PendingInbound>, StoreError> {
    let pending = super::inbox::pending(store).await?;
    Ok(ids
        .iter()
        .filter_map(|id| pending.iter().find(|p| p.inbox_id == *id).cloned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::message::ChannelKind;
    use crate::store::{Kept, PairingMessage, Store};

    fn keep(inbox_id: i64, now_ms: i64, code: &str, max_pending: usize) -> PairingMessage {
        PairingMessage {
            inbox_id,
            channel: ChannelKind::new("http"),
            sender_id: "s1".to_owned(),
            user_id: 1,
            display_name: Some("Ada".to_owned()),
            now_ms,
            expires_at_ms: now_ms + 3_600_000,
            new_code: code.to_owned(),
            keep_max: 5,
            max_pending,
            reply_interval_ms: 600_000,
        }
    }

    async fn pending_ids(store: &super::SqliteStore) -> Vec<i64> {
        store
            .inbox_pending()
            .await
            .expect("pending")
            .iter()
            .map(|p| p.inbox_id)
            .collect()
    }

    #[tokio::test]
    async fn a_request_keeps_the_last_five_messages_and_replies_once_per_interval() {
        let (_dir, store) = open();
        let mut rows = Vec::new();
        for i in 0..7 {
            rows.push(new_inbox_row(&store, &format!("m{i}"), "s1").await);
        }
        let now = 1_000_000;
        let first = store.pairing_keep(keep(rows[0], now, "AAAAAA", 10)).await;
        assert_eq!(
            first.expect("kept"),
            Kept::Kept {
                code: "AAAAAA".into(),
                reply: true,
                new: true
            }
        );
        for (i, row) in rows.iter().enumerate().skip(1) {
            let kept = store
                .pairing_keep(keep(*row, now + i as i64, "BBBBBB", 10))
                .await
                .expect("kept");
            assert_eq!(
                kept,
                Kept::Kept {
                    code: "AAAAAA".into(),
                    reply: false,
                    new: false
                }
            );
        }
        let list = store.pairing_list(now).await.expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].kept, rows[2..].to_vec());
        assert_eq!(list[0].display_name.as_deref(), Some("Ada"));
        // The two oldest are done, unanswered; the kept five stay pending.
        assert_eq!(pending_ids(&store).await, rows[2..].to_vec());
        // After the interval the sender is told again.
        let again = new_inbox_row(&store, "m7", "s1").await;
        let kept = store
            .pairing_keep(keep(again, now + 600_000, "CCCCCC", 10))
            .await
            .expect("kept");
        assert!(
            matches!(
                kept,
                Kept::Kept {
                    reply: true,
                    new: false,
                    ..
                }
            ),
            "{kept:?}"
        );
    }

    #[tokio::test]
    async fn expiry_deny_approve_and_the_cap() {
        let (_dir, store) = open();
        let a = new_inbox_row(&store, "a", "s1").await;
        let now = 5_000_000;
        store
            .pairing_keep(keep(a, now, "AAAAAA", 1))
            .await
            .expect("kept");
        // A second sender beyond the cap: nothing stored, its row done.
        let b = new_inbox_row(&store, "b", "s2").await;
        let mut other = keep(b, now, "BBBBBB", 1);
        other.sender_id = "s2".into();
        assert_eq!(store.pairing_keep(other).await.expect("full"), Kept::Full);
        assert_eq!(store.pairing_list(now).await.expect("list").len(), 1);
        assert_eq!(pending_ids(&store).await, vec![a]);
        // Expired: the request goes, its kept message is done; replaying it does nothing.
        store.pairing_expire(now + 3_600_000).await.expect("expire");
        assert!(store.pairing_list(now).await.expect("list").is_empty());
        assert!(pending_ids(&store).await.is_empty());
        assert_eq!(
            store
                .pairing_keep(keep(a, now + 3_600_001, "CCCCCC", 1))
                .await
                .expect("settled"),
            Kept::Settled
        );
        // Denied: removed, kept messages done.
        let c = new_inbox_row(&store, "c", "s1").await;
        store
            .pairing_keep(keep(c, now, "DDDDDD", 1))
            .await
            .expect("kept");
        let denied = store.pairing_deny("DDDDDD", now).await.expect("deny");
        assert_eq!(denied.kept, vec![c]);
        assert!(pending_ids(&store).await.is_empty());
        assert!(store.pairing_deny("DDDDDD", now).await.is_err());
        // Approved: durable for the user; the kept messages are handed back, still pending.
        let d = new_inbox_row(&store, "d", "s1").await;
        store
            .pairing_keep(keep(d, now, "EEEEEE", 1))
            .await
            .expect("kept");
        let user = store
            .resolve_address(&crate::message::Address {
                channel: ChannelKind::new("http"),
                sender_id: "s1".into(),
            })
            .await
            .expect("user");
        let approved = store
            .pairing_approve("EEEEEE", user, now)
            .await
            .expect("approve");
        assert_eq!(approved.kept, vec![d]);
        assert_eq!(store.inbox_rows(&[d]).await.expect("rows").len(), 1);
        use crate::store::UserFlags;
        let flags = |approved, blocked| UserFlags {
            approved,
            blocked,
            budget: crate::store::BudgetOverride::default(),
        };
        assert_eq!(
            store.access_flags(user).await.expect("flags"),
            flags(true, false)
        );
        store.set_blocked(user, true).await.expect("block");
        assert_eq!(
            store.access_flags(user).await.expect("flags"),
            flags(true, true)
        );
        store.set_blocked(user, false).await.expect("unblock");
        let limits = crate::store::BudgetOverride {
            tokens_per_day: Some(500),
            turns_per_minute: None,
        };
        store
            .set_budget_override(user, limits)
            .await
            .expect("override");
        assert_eq!(
            store.access_flags(user).await.expect("flags"),
            UserFlags {
                approved: true,
                blocked: false,
                budget: limits,
            }
        );
        assert!(store.set_blocked(999_999, true).await.is_err());
    }
}
