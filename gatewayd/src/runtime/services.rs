//! What the gateway lends its parts: the built-in tools, and the services workflow nodes call
//! (the LLM, the tools, the outbox), bound to the runtime's handles.

use super::*;

/// The built-in tools every session and workflow shares.
pub fn builtin_tools(
    config: &Config,
    outbox: Arc<dyn OutboxSink>,
    runner: Arc<dyn WorkflowRunner>,
) -> anyhow::Result<ToolRegistry> {
    let registry = ToolRegistry::new();
    let timeout = config.tools.timeout.get();
    let http = HttpGet::new(
        &config.tools.http_allowlist,
        config.tools.http_max_bytes,
        timeout,
    )
    .map_err(|e| anyhow!("tools.http_allowlist: {e}"))?;
    let tools: [Arc<dyn Tool>; 4] = [
        Arc::new(CurrentTime::new()),
        Arc::new(http),
        Arc::new(
            SendMessage::new(outbox, registry::names()).with_scope(config.tools.send_message.scope),
        ),
        Arc::new(RunWorkflow::new(runner)),
    ];
    for tool in tools {
        registry
            .register(tool, timeout)
            .map_err(|e| anyhow!("cannot register a built-in tool: {e}"))?;
    }
    Ok(registry)
}

/// What workflow nodes use: the agent's model, the shared tools, the outbox.
pub(super) struct WorkflowServices {
    pub(super) agent: Arc<Agent>,
    pub(super) tools: ToolRegistry,
    pub(super) outbox: Arc<Outbox>,
    pub(super) channels: std::collections::BTreeSet<crate::message::ChannelKind>,
    /// `[tools.send_message] scope`, for message nodes of a run a user started.
    pub(super) scope: SendScope,
}

#[async_trait]
impl NodeServices for WorkflowServices {
    async fn complete(&self, system: Option<&str>, prompt: &str) -> Result<String, String> {
        self.agent
            .complete(system, prompt)
            .await
            .map_err(|e| e.to_string())
    }

    async fn call_tool(
        &self,
        name: &str,
        args: serde_json::Value,
        origin: Option<&RunOrigin>,
    ) -> Result<serde_json::Value, String> {
        let ctx = ToolCallContext {
            session: None,
            origin: origin.map(|o| (o.channel, o.chat_id.clone())),
            user: origin.and_then(|o| o.user),
        };
        self.tools
            .call(name, args, &ctx)
            .await
            .map_err(|e| e.to_string())
    }

    async fn send_message(&self, target: MessageTarget, text: &str) -> Result<i64, String> {
        self.outbox.send(target, text.to_owned()).await
    }

    async fn send_message_for(
        &self,
        target: MessageTarget,
        text: &str,
        origin: Option<&RunOrigin>,
    ) -> Result<i64, String> {
        let chat = origin.map(|o| (o.channel, o.chat_id.clone()));
        let user = origin.and_then(|o| o.user);
        let target = check_scope(
            self.scope,
            self.outbox.as_ref(),
            user,
            chat.as_ref(),
            target,
        )
        .await
        .map_err(|e| e.to_string())?;
        self.outbox.send(target, text.to_owned()).await
    }

    fn tool_names(&self) -> HashSet<String> {
        self.tools.names()
    }

    fn channels(&self) -> Option<std::collections::BTreeSet<crate::message::ChannelKind>> {
        Some(self.channels.clone())
    }

    fn all_channels(&self) -> Vec<&'static str> {
        registry::names()
    }
}

/// `run_workflow`'s way to the engine, which is built after the tools it uses.
#[derive(Default)]
pub(super) struct LateRunner {
    pub(super) engine: RwLock<Option<Weak<Engine>>>,
}

#[async_trait]
impl WorkflowRunner for LateRunner {
    async fn start(
        &self,
        name: &str,
        inputs: serde_json::Value,
        ctx: &ToolCallContext,
    ) -> Result<String, String> {
        let engine = self
            .engine
            .read()
            .ok()
            .and_then(|e| e.as_ref().and_then(Weak::upgrade))
            .ok_or("workflows are not enabled on this gateway")?;
        let origin = ctx.origin.as_ref().map(|(channel, chat_id)| RunOrigin {
            channel: *channel,
            chat_id: chat_id.clone(),
            user: ctx.user,
            trigger: "agent".to_owned(),
        });
        engine
            .start(name, inputs, origin)
            .await
            .map(|id| id.to_string())
            .map_err(|e| e.to_string())
    }
}
