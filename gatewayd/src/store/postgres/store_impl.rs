//! The [`Store`] implementation of [`PostgresStore`]: each operation handed to the submodule of
//! its area, run through the handle's tracking of a full disk or a lost database.

use super::*;

#[async_trait]
impl Store for PostgresStore {
    fn cluster_store(self: Arc<Self>) -> Option<Arc<dyn crate::store::cluster::ClusterStore>> {
        Some(self)
    }

    async fn cursor(&self, channel: ChannelKind, name: &str) -> Result<Option<i64>, StoreError> {
        self.track(cursors::get(self, channel, name)).await
    }

    async fn advance_cursor(
        &self,
        channel: ChannelKind,
        name: &str,
        value: i64,
    ) -> Result<i64, StoreError> {
        self.track(cursors::advance(self, channel, name, value))
            .await
    }

    async fn last_inbound_at(
        &self,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.track(receipts::last_inbound_at(self, channel, chat_id))
            .await
    }

    async fn outbox_platform_id(
        &self,
        id: i64,
        chunk: u32,
        channel: ChannelKind,
        platform_id: &str,
    ) -> Result<(), StoreError> {
        self.track(receipts::platform_id(self, id, chunk, channel, platform_id))
            .await
    }

    async fn record_receipt(
        &self,
        channel: ChannelKind,
        platform_id: &str,
        status: crate::store::ReceiptStatus,
        error: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        self.track(receipts::record(self, channel, platform_id, status, error))
            .await
    }

    async fn list_inbox(
        &self,
        f: &crate::store::InboxFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<crate::store::InboxRecord>, StoreError> {
        self.track(inspect::inbox(self, f, after, limit)).await
    }

    async fn list_outbox(
        &self,
        f: &crate::store::OutboxFilter,
        after: Option<i64>,
        limit: usize,
        with_errors: bool,
    ) -> Result<Vec<crate::store::OutboxRecord>, StoreError> {
        self.track(inspect::outbox(self, f, after, limit, with_errors))
            .await
    }

    async fn history_traced(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<crate::store::TracedEntry>, StoreError> {
        self.track(inspect::history(self, session, limit)).await
    }

    async fn inbox_commit(&self, msg: &InboundMessage) -> Result<InboxOutcome, StoreError> {
        self.track(inbox::commit(self, msg)).await
    }

    async fn inbox_pending(&self) -> Result<Vec<PendingInbound>, StoreError> {
        self.track(inbox::pending(self, None)).await
    }

    async fn commit_turn(&self, turn: TurnRecord) -> Result<Vec<OutboundMessage>, StoreError> {
        self.track(transcript::commit_turn(self, turn, None)).await
    }

    async fn history(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<TranscriptEntry>, StoreError> {
        self.track(transcript::history(self, session, limit)).await
    }

    async fn outbox_pending(&self) -> Result<Vec<OutboundMessage>, StoreError> {
        self.track(outbox::pending(self)).await
    }

    async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.track(outbox::delivered(self, id)).await
    }

    async fn outbox_progress(&self, id: i64, chunks_sent: u32) -> Result<(), StoreError> {
        self.track(outbox::progress(self, id, chunks_sent)).await
    }

    async fn outbox_attempt_failed(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        self.track(outbox::record_failure(
            self, id, attempts, class, error, false,
        ))
        .await
    }

    async fn outbox_dead(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        self.track(outbox::record_failure(
            self, id, attempts, class, error, true,
        ))
        .await
    }

    async fn dead_letters(
        &self,
        channel: Option<ChannelKind>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.track(outbox::dead_letters(self, channel, after, limit))
            .await
    }

    async fn dead_letter(&self, id: i64) -> Result<(DeadLetter, Vec<AttemptError>), StoreError> {
        self.track(outbox::dead_letter(self, id)).await
    }

    async fn retry_dead(
        &self,
        selector: &DeadSelector,
    ) -> Result<Vec<OutboundMessage>, StoreError> {
        self.track(outbox::retry_dead(self, selector)).await
    }

    async fn drop_dead(&self, selector: &DeadSelector) -> Result<u64, StoreError> {
        self.track(outbox::drop_dead(self, selector)).await
    }

    async fn resolve_address(&self, address: &Address) -> Result<UserId, StoreError> {
        self.track(identity::resolve_address(self, address)).await
    }

    async fn user(&self, id: UserId) -> Result<UserRecord, StoreError> {
        self.track(identity::user(self, id)).await
    }

    async fn link_users(&self, keep: UserId, merge: UserId) -> Result<(), StoreError> {
        self.track(identity::link_users(self, keep, merge)).await
    }

    async fn unlink_address(&self, address: &Address) -> Result<UserId, StoreError> {
        self.track(identity::unlink_address(self, address)).await
    }

    async fn put_link_code(
        &self,
        code: &str,
        user: UserId,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.track(identity::put_link_code(self, code, user, expires_at_ms))
            .await
    }

    async fn take_link_code(&self, code: &str, now_ms: i64) -> Result<Option<UserId>, StoreError> {
        self.track(identity::take_link_code(self, code, now_ms))
            .await
    }

    async fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.track(inbox::counts(self)).await
    }

    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredSession>, StoreError> {
        self.track(transcript::list_sessions(self, filter, after, limit))
            .await
    }

    async fn session(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        self.track(transcript::session(self, key)).await
    }

    async fn count_sessions(&self) -> Result<u64, StoreError> {
        self.track(transcript::count_sessions(self)).await
    }

    async fn list_users(
        &self,
        channel: Option<ChannelKind>,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        self.track(identity::list_users(self, channel, after, limit))
            .await
    }

    async fn attach_address(&self, user: UserId, address: &Address) -> Result<(), StoreError> {
        self.track(identity::attach_address(self, user, address))
            .await
    }

    async fn last_direct_chat(
        &self,
        user: UserId,
    ) -> Result<Option<(ChannelKind, String)>, StoreError> {
        self.track(identity::last_direct_chat(self, user)).await
    }

    async fn is_direct_chat_of(
        &self,
        user: UserId,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<bool, StoreError> {
        self.track(identity::is_direct_chat_of(self, user, channel, chat_id))
            .await
    }

    async fn outbox_put(&self, reply: NewReply) -> Result<OutboundMessage, StoreError> {
        self.track(outbox::put(self, reply)).await
    }

    async fn run_create(
        &self,
        workflow: &str,
        inputs: &serde_json::Value,
        origin: Option<&RunOrigin>,
    ) -> Result<i64, StoreError> {
        self.track(runs::create(self, workflow, inputs, origin))
            .await
    }

    async fn run_node(&self, run: i64, node: &NodeRecord) -> Result<(), StoreError> {
        self.track(runs::node(self, run, node)).await
    }

    async fn run_finish(
        &self,
        run: i64,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.track(runs::finish(self, run, status, error)).await
    }

    async fn run_get(&self, run: i64) -> Result<RunRecord, StoreError> {
        self.track(runs::get(self, run)).await
    }

    async fn run_list(
        &self,
        workflow: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.track(runs::list(self, workflow, before, limit)).await
    }

    async fn runs_unfinished(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.track(runs::unfinished(self)).await
    }

    async fn storage(&self) -> Result<StorageStats, StoreError> {
        let (table_rows, database_bytes, counted_at_ms) = self
            .shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        Ok(StorageStats {
            database_bytes,
            table_rows,
            counted_at_ms,
        })
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.track(async {
            let client = self.client().await?;
            client.query_one("SELECT 1", &[]).await.map_err(db)?;
            Ok(())
        })
        .await
    }

    fn disk_full(&self) -> bool {
        self.shared.full.load(Ordering::Acquire)
    }

    fn recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.recoveries.subscribe()
    }

    fn failed_turn_commits(&self) -> u64 {
        self.shared.failed_turns.load(Ordering::Acquire)
    }

    fn note_stranded(&self, inbox_id: i64) {
        if let Ok(mut stranded) = self.shared.stranded.lock() {
            stranded.insert(inbox_id);
        }
    }

    async fn take_stranded(&self) -> Result<Vec<PendingInbound>, StoreError> {
        let ids = self
            .shared
            .stranded
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.into_iter().collect();
        self.track(inbox::pending(self, Some(&ids))).await
    }

    async fn commit_turn_with_usage(
        &self,
        turn: TurnRecord,
        usage: Option<UsageRecord>,
    ) -> Result<Vec<OutboundMessage>, StoreError> {
        self.track(transcript::commit_turn(self, turn, usage)).await
    }

    async fn usage_totals(
        &self,
        user: Option<UserId>,
        since_ms: i64,
    ) -> Result<Vec<UsageTotal>, StoreError> {
        self.track(usage::totals(self, user, since_ms)).await
    }

    async fn turn_times(&self, user: UserId, since_ms: i64) -> Result<Vec<i64>, StoreError> {
        self.track(usage::turn_times(self, user, since_ms)).await
    }

    async fn budget_override(&self, user: UserId) -> Result<BudgetOverride, StoreError> {
        self.track(usage::get_override(self, user)).await
    }

    async fn set_budget_override(
        &self,
        user: UserId,
        limits: BudgetOverride,
    ) -> Result<(), StoreError> {
        self.track(usage::set_override(self, user, limits)).await
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let background = self.background.lock().ok().and_then(|mut b| b.take());
        if let Some((stop, handle)) = background {
            let _ = stop.send(true);
            let _ = handle.await;
        }
        self.pool.close();
    }

    async fn inbox_drop(&self, inbox_id: i64, blocked: bool) -> Result<(), StoreError> {
        self.track(access::inbox_drop(self, inbox_id, blocked))
            .await
    }

    async fn access_flags(&self, user: UserId) -> Result<crate::store::UserFlags, StoreError> {
        self.track(access::access_flags(self, user)).await
    }

    async fn set_blocked(&self, user: UserId, blocked: bool) -> Result<(), StoreError> {
        self.track(access::set_blocked(self, user, blocked)).await
    }

    async fn pairing_keep(
        &self,
        msg: crate::store::PairingMessage,
    ) -> Result<crate::store::Kept, StoreError> {
        self.track(access::pairing_keep(self, msg)).await
    }

    async fn pairing_list(
        &self,
        now_ms: i64,
    ) -> Result<Vec<crate::store::PairingRequest>, StoreError> {
        self.track(access::pairing_list(self, now_ms)).await
    }

    async fn pairing_get(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<Option<crate::store::PairingRequest>, StoreError> {
        self.track(access::pairing_get(self, code, now_ms)).await
    }

    async fn pairing_approve(
        &self,
        code: &str,
        user: UserId,
        now_ms: i64,
    ) -> Result<crate::store::PairingRequest, StoreError> {
        self.track(access::pairing_approve(self, code, user, now_ms))
            .await
    }

    async fn pairing_deny(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<crate::store::PairingRequest, StoreError> {
        self.track(access::pairing_deny(self, code, now_ms)).await
    }

    async fn pairing_expire(&self, now_ms: i64) -> Result<(), StoreError> {
        self.track(access::pairing_expire(self, now_ms)).await
    }

    async fn inbox_rows(&self, ids: &[i64]) -> Result<Vec<PendingInbound>, StoreError> {
        self.track(access::inbox_rows(self, ids)).await
    }
}
